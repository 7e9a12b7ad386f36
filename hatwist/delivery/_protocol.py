# -*- test-case-name: tests.delivery.test_client -*-
"""
The wire half of an outbound session: ``twisted.mail``'s ESMTP client, with its traps
fixed, driven one message at a time.

What is kept from ``twisted.mail.smtp.ESMTPClient``: the reply reader (multi-line
replies, code parsing, the ``_expected``/``_okresponse``/``_failresponse`` dispatch),
TLS-mode detection and the ``transport.startTLS`` switch. What is replaced, and why
(FIELD-NOTES section 4):

- the mail transaction (MAIL, RCPT, DATA, RSET): the library's version stuffs dots per
  16 KiB chunk (SMTP smuggling), rewrites addresses through ``email.utils.parseaddr`` and
  ``Address`` (quoted local parts mangled, our fqdn appended to bare names, ASCII only),
  never pipelines, and sends RSET after every message; here
  :class:`~hatwist.delivery._transaction.MessageDelivery` decides the commands and what
  each reply means (pipelined when offered, recipient limits, addresses as given, RSET
  before a message that follows another), and content goes through
  :class:`~hatwist.delivery._stuffing.DotStuffer`;
- "no more messages" means QUIT there; here the session parks, idle, until the owner
  hands it the next message or asks for QUIT;
- the EHLO name is a parameter (the library defaults to a blocking ``getfqdn()``), and
  the STARTTLS decision follows :class:`~hatwist.delivery._tls.TLSPolicy`;
- failures and a lost connection are reported to the owner at every stage, instead of
  relying on ``clientConnectionLost``, which endpoints never call.

Deadlines are the owner's job (:mod:`hatwist.delivery.client`): this protocol has no
timer of its own (``timeout = None``, so ``TimeoutMixin`` stays off). Size is this
protocol's job: the library keeps every line of a multi-line reply until its last line,
so an MX that streams ``250-`` forever would grow memory until the command deadline;
here one reply may hold :data:`MAX_REPLY_LINES` lines and :data:`MAX_REPLY_BYTES` bytes,
and no line may pass :data:`MAX_LINE_LENGTH` bytes (:class:`ReplyTooLarge`, the session
is aborted).
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.interfaces import IPullProducer
from twisted.logger import Logger
from twisted.mail.smtp import ESMTPClient
from twisted.python.failure import Failure
from zope.interface import implementer

from hatwist.delivery._errors import (
    STARTTLS,
    ConnectionLostDuringSession,
    GreetingRejected,
    NoGreeting,
    ReplyTooLarge,
    SessionError,
    TLSFailed,
    TLSUnavailable,
    UnexpectedReply,
)
from hatwist.delivery._stuffing import DotStuffer
from hatwist.delivery._tls import TLSPolicy
from hatwist.delivery._transaction import SERVICE_CLOSING, MessageDelivery, Step
from hatwist.delivery._values import Envelope, RecipientResult

#: Content is fed to the stuffer and written in slices of this size, one per pull.
WRITE_CHUNK = 64 * 1024

#: Bounds on one reply (greeting, EHLO, or any later one), continuation lines included.
#: Postfix keeps a few KB of a reply; real EHLO replies are 10-20 lines under 1 KiB.
#: RFC 5321 section 4.5.3.1.5 allows 512 octets per reply line; Postfix reads up to its
#: ``line_length_limit`` (2048). Past any bound the attempt fails with ReplyTooLarge.
MAX_REPLY_LINES = 100
MAX_REPLY_BYTES = 8 * 1024
MAX_LINE_LENGTH = 2048

#: Every reply code reaches the stage's handler, which decides what it means.
_ANY_CODE = range(0, 1000)

#: Stages in which the session is not waiting for any reply: ready for a message, or
#: ended by the peer (421) and waiting for the connection to close.
IDLE = "idle"
CLOSING = "closing"

_log = Logger()


class SessionOwner(Protocol):
    """What the protocol reports to (:class:`hatwist.delivery.client.OutboundSession`)."""

    def _connected(self, protocol: SessionProtocol) -> None: ...
    def _greeted(self) -> None: ...
    def _progress(self) -> None: ...
    def _session_ready(self) -> None: ...
    def _message_done(self, results: tuple[RecipientResult, ...]) -> None: ...
    def _unsolicited(self, code: int, text: str) -> None: ...
    def _failed(self, error: SessionError) -> None: ...
    def _lost(self, error: SessionError | None) -> None: ...


def _text(resp: bytes | str) -> str:
    if isinstance(resp, bytes):
        return resp.decode("utf-8", "replace")
    return resp


def _class(code: int) -> int:
    return code // 100


def parse_extensions(resp: bytes) -> dict[str, str]:
    """EHLO keywords (upper-cased) to their parameters (``""`` when none).

    The first line of the reply is the server's name and greeting, not a keyword.
    """
    extensions: dict[str, str] = {}
    for line in resp.splitlines()[1:]:
        keyword, _, params = _text(line).strip().partition(" ")
        if keyword:
            extensions[keyword.upper()] = params.strip()
    return extensions


class SessionProtocol(ESMTPClient):
    """One SMTP connection; the owner decides what to send and when to give up."""

    #: No conversation log: nothing reads it, and it costs on every line.
    debug = False
    #: No per-line idle timer: the owner puts a deadline on every wait (one place for it).
    timeout = None
    #: LineReceiver calls lineLengthExceeded past this (the library's 16 KiB is too much).
    MAX_LENGTH = MAX_LINE_LENGTH

    def __init__(self, owner: SessionOwner, ehlo_hostname: bytes, policy: TLSPolicy) -> None:
        ESMTPClient.__init__(self, None, policy.creator, ehlo_hostname)
        self._owner = owner
        self._policy = policy
        #: The command waiting for its reply ("greeting", "EHLO", "MAIL", ...) or "idle".
        self.stage = "connect"
        self.greeting = b""
        self.extensions: dict[str, str] = {}
        self.tls_verified = False
        #: Why the peer offered STARTTLS and it was not used (it refused it), for the log.
        self.tls_skipped: str | None = None
        self._tls_pending = False
        self._transactions = 0
        self._done = False
        self._message: MessageDelivery | None = None
        self._content = b""
        #: Lines and bytes of the reply being read so far (reset at its last line).
        self._reply_lines = 0
        self._reply_bytes = 0

    @property
    def tls_active(self) -> bool:
        """True once STARTTLS completed (a reply arrived over TLS)."""
        return self._tlsMode and not self._tls_pending

    # -- plumbing --------------------------------------------------------------------------

    def _expect(self, stage: str, handler) -> None:
        self.stage = stage
        self._expected = _ANY_CODE
        self._okresponse = handler
        self._failresponse = handler

    def _command(self, stage: str, line: bytes, handler) -> None:
        self._expect(stage, handler)
        self.sendLine(line)

    def lineReceived(self, line: bytes):
        if self._done:
            return None
        # Counted before the library keeps the line: informational ``0xx`` lines too,
        # which it drops but which would otherwise keep the reader busy forever.
        self._reply_lines += 1
        self._reply_bytes += len(line)
        if self._reply_lines > MAX_REPLY_LINES:
            self._too_large(f"more than {MAX_REPLY_LINES} lines")
            return None
        if self._reply_bytes > MAX_REPLY_BYTES:
            self._too_large(f"more than {MAX_REPLY_BYTES} bytes")
            return None
        if line[3:4] != b"-" and line[0:1] != b"0":
            self._reply_lines = self._reply_bytes = 0  # its last line: the next reply's own
        return super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        """A line (or a run of bytes without LF) longer than :data:`MAX_LINE_LENGTH`."""
        if not self._done:
            self._too_large(f"a line longer than {MAX_LINE_LENGTH} bytes")

    def _too_large(self, detail: str) -> None:
        _log.warn(
            "MX {hostname} sent a reply to {stage} with {detail}: session aborted",
            hostname=self._policy.hostname,
            stage=self.stage,
            detail=detail,
        )
        # Whatever else arrived in the same read is not looked at.
        self.clearLineBuffer()
        self.fail(ReplyTooLarge(self.stage, detail))

    def sendError(self, exc: Exception) -> None:
        """The library's reply reader found a line that is not an SMTP reply."""
        detail = getattr(exc, "resp", None) or str(exc)
        self.fail(UnexpectedReply(self.stage, _text(detail)))

    def fail(self, error: SessionError, *, polite: bool = False) -> None:
        """Report ``error`` once and close: with a QUIT when the peer is still sane."""
        if self._done:
            return
        self._done = True
        self._report_partial(error)
        self._owner._failed(error)
        if polite:
            self.sendLine(b"QUIT")
            self.transport.loseConnection()
        else:
            self.transport.abortConnection()

    def _unexpected(self, code: int, resp: bytes) -> None:
        self.fail(UnexpectedReply(self.stage, f"{code} {_text(resp)}"))

    def abort(self) -> None:
        self._done = True
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure) -> None:
        ESMTPClient.connectionLost(self, reason)
        if self._done:
            self._owner._lost(None)
            return
        self._done = True
        why = reason.getErrorMessage()
        error: SessionError | None
        if self.stage == "greeting":
            error = NoGreeting(f"connection closed before the 220 banner ({why})")
        elif self._tls_pending:
            error = TLSFailed(f"TLS handshake failed: {why}")
        elif self.stage in (IDLE, "QUIT"):
            error = None
        else:
            error = ConnectionLostDuringSession(self.stage, why)
            self._report_partial(error)
        self._owner._lost(error)

    # -- set-up: greeting, EHLO, STARTTLS ---------------------------------------------------

    def connectionMade(self) -> None:
        ESMTPClient.connectionMade(self)
        self._expect("greeting", self._greeting_reply)
        self._owner._connected(self)

    def _greeting_reply(self, code: int, resp: bytes) -> None:
        if code == 220:
            self.greeting = resp
            self._owner._greeted()
            self._ehlo()
        elif _class(code) in (4, 5):
            self.fail(GreetingRejected(code, _text(resp)), polite=True)
        else:
            self._unexpected(code, resp)

    def _ehlo(self) -> None:
        self._command("EHLO", b"EHLO " + self.identity, self._ehlo_reply)

    def _ehlo_reply(self, code: int, resp: bytes) -> None:
        if self._tls_pending:
            self._tls_established()
        if _class(code) == 2:
            self.esmtpState_serverConfig(code, resp)
        elif code == SERVICE_CLOSING or self._tlsMode:
            self.fail(GreetingRejected(code, _text(resp), stage="EHLO"), polite=True)
        elif _class(code) in (4, 5) and self._policy.required:
            self.fail(
                TLSUnavailable(f"EHLO refused ({code} {_text(resp)}), so no STARTTLS"),
                polite=True,
            )
        elif _class(code) in (4, 5):
            # A server without ESMTP: plain HELO, no extensions.
            self._command("HELO", b"HELO " + self.identity, self._helo_reply)
        else:
            self._unexpected(code, resp)

    def _helo_reply(self, code: int, resp: bytes) -> None:
        if _class(code) == 2:
            self.extensions = {}
            self._ready()
        elif _class(code) in (4, 5):
            self.fail(GreetingRejected(code, _text(resp), stage="HELO"), polite=True)
        else:
            self._unexpected(code, resp)

    def esmtpState_serverConfig(self, code: int, resp: bytes) -> None:
        self.extensions = parse_extensions(resp)
        self.tryTLS(code, resp, self.extensions)

    def tryTLS(self, code: int, resp: bytes, items: dict[str, str]) -> None:
        if self._tlsMode or not self._policy.wanted:
            self._ready()
        elif "STARTTLS" in items:
            self._command(STARTTLS, b"STARTTLS", self._starttls_reply)
        elif self._policy.required:
            self.fail(TLSUnavailable("STARTTLS not offered in the EHLO reply"), polite=True)
        else:
            _log.info(
                "STARTTLS not offered by {hostname}: plaintext", hostname=self._policy.hostname
            )
            self._ready()

    def _starttls_reply(self, code: int, resp: bytes) -> None:
        if code == 220:
            self._tls_pending = True
            if self.clearLineBuffer():
                # Bytes that came with the 220 were sent before TLS, by the server or by
                # someone in the path, and would be read as if protected (STARTTLS
                # response injection, CVE-2011-0411's client-side twin).
                self.fail(TLSFailed("plaintext data arrived with STARTTLS's 220 reply"))
                return
            try:
                self.transport.startTLS(self.context)
            except Exception as e:
                self.fail(TLSFailed(f"could not start TLS: {e}"))
                return
            self._tlsMode = True
            # EHLO again (RFC 3207): it is written once the handshake is done, and its
            # reply is the first proof the handshake worked. Until then a deadline or a
            # lost connection is the handshake's.
            self._ehlo()
            self.stage = STARTTLS
        elif code == SERVICE_CLOSING:
            self.fail(GreetingRejected(code, _text(resp), stage=STARTTLS), polite=True)
        elif _class(code) in (4, 5) and self._policy.required:
            self.fail(TLSFailed(f"STARTTLS refused: {code} {_text(resp)}"), polite=True)
        elif _class(code) in (4, 5):
            # RFC 3207 lets the session go on in plaintext, and Postfix's ``may`` does.
            self.tls_skipped = f"STARTTLS refused: {code} {_text(resp)}".rstrip()
            _log.info(
                "STARTTLS refused by {hostname} ({code}): plaintext",
                hostname=self._policy.hostname,
                code=code,
            )
            self._ready()
        else:
            self._unexpected(code, resp)

    def _tls_established(self) -> None:
        self._tls_pending = False
        self.tls_verified = self._policy.verified()
        _log.info(
            "STARTTLS with {hostname}: certificate verified={verified} ({problem})",
            hostname=self._policy.hostname,
            verified=self.tls_verified,
            problem=self._policy.problem() or "ok",
        )

    # -- between messages -------------------------------------------------------------------

    def _ready(self) -> None:
        self._expect(IDLE, self._unsolicited)
        self._owner._session_ready()

    def _unsolicited(self, code: int, resp: bytes) -> None:
        """A reply while idle: typically "421 idle timeout" before the server closes."""
        self._owner._unsolicited(code, _text(resp))
        self._close_after_peer()

    def _close_after_peer(self) -> None:
        """The peer ended the session (421): no more messages here; let the connection go."""
        self.stage = CLOSING
        self._done = True
        self.transport.loseConnection()

    def quit(self) -> None:
        """Say QUIT and close when answered (or when the owner's deadline aborts)."""
        self._command("QUIT", b"QUIT", self._quit_reply)

    def _quit_reply(self, code: int, resp: bytes) -> None:
        self.transport.loseConnection()

    # -- one message: its transactions (the logic is MessageDelivery's) -------------------

    def send(self, envelope: Envelope, content: bytes) -> None:
        """Start one message; the owner hears :meth:`SessionOwner._message_done`."""
        if self.stage != IDLE:
            raise RuntimeError(f"send() while {self.stage} is in progress")
        self._content = content
        self._message = MessageDelivery(
            envelope, content, self.extensions, reset=self._transactions > 0
        )
        self._transactions += 1
        self._follow(self._message.start())

    def _follow(self, step: Step) -> None:
        """Do what the message's logic says next: write, wait for a reply, or finish."""
        message = self._message
        if message.done:
            self._finish(message)
            return
        self._expect(message.stage, self._transaction_reply)
        if step.lines:
            self.transport.writeSequence([line + b"\r\n" for line in step.lines])
        if step.content:
            self._write_content()

    def _transaction_reply(self, code: int, resp: bytes) -> None:
        try:
            step = self._message.on_reply(code, _text(resp))
        except UnexpectedReply as e:
            self.fail(e)
            return
        self._owner._progress()
        self._follow(step)

    def _write_content(self) -> None:
        # Pulled by the transport a chunk at a time as its buffer drains: a big message
        # is never copied into the send buffer whole, and each chunk proves progress.
        self.transport.registerProducer(_ContentProducer(self, self._content), False)

    def _finish(self, message: MessageDelivery) -> None:
        self._message, self._content = None, b""
        if message.closing:
            self._close_after_peer()  # the session ends with this message
        else:
            self._expect(IDLE, self._unsolicited)
        self._owner._message_done(message.results)

    def _report_partial(self, error: SessionError) -> None:
        """A session that breaks after the peer took the message for some recipients still
        reports every recipient's result: those must never be sent again."""
        message, self._message = self._message, None
        if message is None:
            return
        partial = message.interrupted(str(error))
        if partial is not None:
            self.stage = CLOSING  # the owner must not start another message here
            self._owner._message_done(partial)


@implementer(IPullProducer)
class _ContentProducer:
    """Writes one message's DATA bytes (stuffed, terminator last) a slice per pull."""

    def __init__(self, protocol: SessionProtocol, content: bytes) -> None:
        self._protocol: SessionProtocol | None = protocol
        self._content = memoryview(content)
        self._offset = 0
        self._stuffer = DotStuffer()

    def resumeProducing(self) -> None:
        protocol = self._protocol
        if protocol is None:
            return
        transport = protocol.transport
        chunk = bytes(self._content[self._offset : self._offset + WRITE_CHUNK])
        self._offset += WRITE_CHUNK
        data = self._stuffer.feed(chunk)
        if self._offset >= len(self._content):
            # The terminator goes in the same write as the last slice: a separate small
            # write would wait for the peer's delayed ACK (Nagle), about 40 ms a message.
            self._protocol = None
            transport.write(data + self._stuffer.finish())
            transport.unregisterProducer()
        else:
            transport.write(data)
        protocol._owner._progress()

    def stopProducing(self) -> None:
        """The connection is gone: write nothing more."""
        self._protocol = None
