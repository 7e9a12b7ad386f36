# -*- test-case-name: tests.delivery.test_client_values -*-
"""
Why an SMTP session (not one recipient) failed: one class per meaning.

Per-recipient outcomes are :class:`~hatwist.delivery.RecipientResult` values, never
exceptions. These errors are for the cases where no recipient got an answer from the
peer: the session could not be opened, or it broke. Each carries ``temporary`` (retry
later, or bounce) and ``reason`` (a sentence a person can act on); the caller adds which
MX, address and route it was.

Errors with a ``stage`` name the command that was waiting for its reply, one of
:data:`STAGES`. Only a failure in :data:`END_OF_DATA` (the final dot was written, its
reply had not come) can leave a message delivered without our knowing; before it the
peer holds nothing, so the message may go to another MX at once.
"""

from __future__ import annotations

#: The stage of the reply to the message's final dot.
END_OF_DATA = "end of data"
#: The stage from STARTTLS until the reply to the EHLO sent over TLS: the handshake's.
STARTTLS = "STARTTLS"

#: Stage names, in session order: set-up, between messages, one transaction, the end.
#: ``DATA`` is the wait for the 354 (no content sent yet).
STAGES = (
    "connect", "greeting", "EHLO", "HELO", STARTTLS,
    "idle", "closing",
    "RSET", "MAIL", "RCPT", "DATA", END_OF_DATA,
    "QUIT",
)  # fmt: skip


def may_have_delivered(error: BaseException) -> bool:
    """True when the session broke after the peer may have accepted the message (its
    final dot was sent), so sending it elsewhere now could deliver it twice."""
    return getattr(error, "stage", None) == END_OF_DATA


def starttls_failed(error: BaseException) -> bool:
    """
    True when set-up broke in STARTTLS: the handshake failed (reset, a protocol version
    or cipher the peer cannot do, plaintext where TLS was due), stalled, or the peer went
    silent or away after agreeing to it.

    The peer advertised TLS and could not do it, so a session without STARTTLS may
    well work: ``tls = ifavailable`` tries one (Postfix's ``may`` does the same). A
    ``421`` is the peer closing, not a TLS failure. Under ``required`` a certificate that
    does not verify is a :class:`TLSFailed` too; the caller decides by its ``tls`` mode.
    """
    if isinstance(error, TLSFailed):
        return True
    if isinstance(error, GreetingRejected):
        return False
    return getattr(error, "stage", None) == STARTTLS


class SessionError(Exception):
    """An SMTP session could not be opened, or broke before a message got its answers."""

    #: Default for the class; a few classes decide per instance (a 5xx greeting).
    temporary: bool = True

    def __init__(self, reason: str, *, temporary: bool | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if temporary is not None:
            self.temporary = temporary

    def __str__(self) -> str:
        return self.reason


class ConnectFailed(SessionError):
    """No TCP connection to the peer (or to the proxy in front of it) was made in time."""


class NoGreeting(SessionError):
    """
    "Proxy connected, no greeting": TCP was established but the 220 banner never came
    (EOF, or silence until the deadline).

    Through HAProxy this is how an unusable source IP or an unreachable MX shows itself
    (FIELD-NOTES section 3), so it is kept apart from every other failure.
    """


class GreetingRejected(SessionError):
    """The peer refused the session: a non-220 banner, or EHLO/HELO refused, or 421."""

    def __init__(self, code: int, text: str, *, stage: str = "greeting") -> None:
        super().__init__(
            f"{stage} refused: {code} {text}".rstrip(), temporary=not 500 <= code <= 599
        )
        self.code = code
        self.text = text
        self.stage = stage


class TLSUnavailable(SessionError):
    """TLS is required but the peer did not offer STARTTLS."""


class TLSFailed(SessionError):
    """STARTTLS was refused (when required), the handshake failed, or (when required)
    the certificate did not verify for the MX host name."""


class SessionTimeout(SessionError):
    """The peer did not answer in time; ``stage`` names the command that was waiting."""

    def __init__(self, stage: str, seconds: float) -> None:
        super().__init__(f"no reply to {stage} within {seconds:g}s")
        self.stage = stage
        self.seconds = seconds


class ConnectionLostDuringSession(SessionError):
    """The connection closed while a command was waiting for its reply (``stage``)."""

    def __init__(self, stage: str, detail: str = "") -> None:
        reason = f"connection lost during {stage}"
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.stage = stage


class UnexpectedReply(SessionError):
    """The peer answered outside SMTP: an unparseable line, a reply code that is not
    allowed for the command (``stage``), or a refused RSET. The session is closed."""

    def __init__(self, stage: str, detail: str) -> None:
        super().__init__(f"unexpected reply to {stage}: {detail}")
        self.stage = stage


class ReplyTooLarge(UnexpectedReply):
    """
    The peer's reply to ``stage`` went past what one reply may hold (too many lines, too
    many bytes, or one line too long): an MX streaming an endless ``250-`` reply would
    otherwise grow the relay's memory until the command deadline. A protocol error of
    that MX, temporary like any session the MX broke; the session is aborted.
    """

    def __init__(self, stage: str, detail: str) -> None:
        SessionError.__init__(self, f"reply to {stage} too large: {detail}")
        self.stage = stage
