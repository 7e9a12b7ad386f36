# -*- test-case-name: tests.delivery.test_client -*-
"""
Outbound SMTP sessions over any client endpoint, reused for message after message.

:func:`open_session` connects, waits for the banner, says EHLO and (per the ``tls``
setting) STARTTLS and EHLO again, and hands back an :class:`OutboundSession`. Each
:meth:`OutboundSession.send` is one mail transaction ending in one
:class:`~hatwist.delivery.RecipientResult` per recipient; RSET goes between messages.

Nothing here can hang: connect and banner share one ``connect_timeout``; the EHLO/STARTTLS
set-up and QUIT get ``command_timeout`` each; within a message every wait for a reply,
and every slice of content the transport has not taken yet, gets ``command_timeout``
(a stalled peer is caught, a slow but moving one is not). A deadline aborts the
connection. A lost connection fails whatever was waiting, at any stage. There are no
retries: trying another address, MX or route, or the same one without STARTTLS, is the
caller's decision.
"""

from __future__ import annotations

from collections import deque

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from hatwist.config import TLSMode
from hatwist.delivery._errors import (
    ConnectFailed,
    ConnectionLostDuringSession,
    NoGreeting,
    SessionError,
    SessionTimeout,
)
from hatwist.delivery._protocol import CLOSING, IDLE, SessionProtocol
from hatwist.delivery._tls import TLSPolicy
from hatwist.delivery._values import Envelope, RecipientResult

__all__ = ["OutboundSession", "open_session"]

#: Characters an EHLO name may never contain (it is written into a command line).
_EHLO_FORBIDDEN = frozenset(chr(c) for c in range(0x21)) | {"\x7f"}

_log = Logger()


def _ehlo_bytes(name: str) -> bytes:
    if not name or not name.isascii() or _EHLO_FORBIDDEN.intersection(name):
        raise ValueError(f"ehlo_hostname must be a non-empty ASCII name, not {name!r}")
    return name.encode("ascii")


def _fire(d: defer.Deferred, result: object) -> None:
    """Fire ``d`` unless it already fired (a caller may have cancelled it)."""
    if not d.called:
        if isinstance(result, (Failure, Exception)):
            d.errback(result)
        else:
            d.callback(result)


class _Item:
    """One queued request: a message (``envelope`` set) or a QUIT (``envelope`` None)."""

    __slots__ = ("content", "deferred", "envelope")

    def __init__(self, envelope: Envelope | None, content: bytes, deferred: defer.Deferred):
        self.envelope = envelope
        self.content = content
        self.deferred = deferred


class OutboundSession:
    """
    One open SMTP session, ready for messages. Made by :func:`open_session`.

    Requests run one at a time, in call order: a :meth:`send` made while another is in
    flight waits its turn (its deadline starts when its turn comes), and :meth:`quit`
    waits for the sends before it. When the session fails, everything still waiting
    fails with the same :class:`~hatwist.delivery.SessionError`; a send made after the
    session closed fails at once with ``ConnectionLostDuringSession(stage="idle")``.
    """

    def __init__(
        self, reactor: IReactorTime, *, connect_timeout: float, command_timeout: float
    ) -> None:
        self._reactor = reactor
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._protocol: SessionProtocol | None = None
        self._connecting: defer.Deferred | None = None
        self._opened: defer.Deferred[OutboundSession] = defer.Deferred(self._cancel_open)
        self._deadline: IDelayedCall | None = None
        self._deadline_seconds = 0.0
        self._queue: deque[_Item] = deque()
        self._current: _Item | None = None
        self._closed_waiters: list[defer.Deferred[None]] = []
        self._is_ready = False
        self._quitting = False
        self._error: SessionError | None = None
        self._gone = False
        #: Why the session is no longer open (for the log and for late sends).
        self.close_reason: str | None = None
        #: Messages that completed a transaction here (whatever the recipients' fate).
        self.messages_sent = 0

    # -- public state ------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """True while the session can take another message (not once the peer said it is
        closing, even before the connection is gone)."""
        closing = self._protocol is not None and self._protocol.stage == CLOSING
        return (
            self._is_ready
            and not self._quitting
            and self._error is None
            and not self._gone
            and not closing
        )

    @property
    def tls_active(self) -> bool:
        return self._protocol is not None and self._protocol.tls_active

    @property
    def tls_verified(self) -> bool:
        return self._protocol is not None and self._protocol.tls_verified

    @property
    def tls_skipped(self) -> str | None:
        """Why the peer offered STARTTLS and this session is plaintext anyway (it refused
        STARTTLS under ``ifavailable``); ``None`` otherwise."""
        return self._protocol.tls_skipped if self._protocol is not None else None

    @property
    def greeting(self) -> bytes:
        """The 220 banner's text (lines joined with LF), without the code."""
        return self._protocol.greeting if self._protocol is not None else b""

    @property
    def extensions(self) -> dict[str, str]:
        """EHLO keywords, upper-case, to their parameters (``""`` when none)."""
        return dict(self._protocol.extensions) if self._protocol is not None else {}

    # -- public operations -------------------------------------------------------------------

    def send(
        self, envelope: Envelope, message: bytes
    ) -> defer.Deferred[tuple[RecipientResult, ...]]:
        """
        Send one message; fires with one result per recipient, in ``rcpt_to`` order, or
        fails with a :class:`~hatwist.delivery.SessionError` (then no recipient got an
        answer and the session is closed). ``message`` is the content as stored: line
        endings may be CRLF, LF or CR; the wire gets CRLF and correct dot-stuffing.
        Cancelling a queued send drops it; cancelling one in flight aborts the session.
        """
        if not isinstance(message, bytes):
            raise TypeError(f"message must be bytes, not {type(message).__name__}")
        d: defer.Deferred = defer.Deferred(self._cancel_item)
        if not self.is_open:
            reason = self.close_reason or "the session is closing"
            d.errback(ConnectionLostDuringSession(IDLE, f"session already closed: {reason}"))
            return d
        self._queue.append(_Item(envelope, message, d))
        self._pump()
        return d

    def quit(self) -> defer.Deferred[None]:
        """QUIT politely once earlier sends are done, then close. Fires with ``None``
        when the connection is closed (or given up on); never fails, never hangs."""
        d: defer.Deferred[None] = defer.Deferred()
        if self._gone:
            d.callback(None)
            return d
        self._closed_waiters.append(d)
        if not self._quitting and self._error is None:
            self._quitting = True
            done: defer.Deferred[None] = defer.Deferred()
            done.addErrback(lambda _: None)  # QUIT's outcome is reported by the waiters
            self._queue.append(_Item(None, b"", done))
            self._pump()
        return d

    def when_closed(self) -> defer.Deferred[None]:
        """Fires with ``None`` once the connection is gone, however that happened (for a
        pool that must forget sessions the server closed while idle). Never fails."""
        d: defer.Deferred[None] = defer.Deferred()
        if self._gone:
            d.callback(None)
        else:
            self._closed_waiters.append(d)
        return d

    def abort(self) -> None:
        """Close the connection now; whatever was waiting fails."""
        stage = self._protocol.stage if self._protocol is not None else "connect"
        self._fail(ConnectionLostDuringSession(stage, "aborted locally"))
        if self._connecting is not None:
            self._connecting.cancel()
        if self._protocol is not None:
            self._protocol.abort()

    # -- deadlines ---------------------------------------------------------------------------

    def _arm(self, seconds: float) -> None:
        # Re-armed at every reply: moving the pending call (reset) costs an attribute
        # write, where cancel + callLater costs two heap operations per reply.
        self._deadline_seconds = seconds
        if self._deadline is not None and self._deadline.active():
            self._deadline.reset(seconds)
        else:
            self._deadline = self._reactor.callLater(seconds, self._deadline_passed)

    def _disarm(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _deadline_passed(self) -> None:
        self._deadline = None
        seconds = self._deadline_seconds
        if self._protocol is None:
            self._fail(ConnectFailed(f"no connection within {seconds:g}s"))
            if self._connecting is not None:
                self._connecting.cancel()
            return
        stage = self._protocol.stage
        if stage == "QUIT":
            self._protocol.abort()
            self._gone_now()
            return
        if stage == "greeting":
            error: SessionError = NoGreeting(f"no 220 banner within {seconds:g}s")
        else:
            error = SessionTimeout(stage, seconds)
        self._protocol.fail(error)

    # -- the queue ---------------------------------------------------------------------------

    def _pump(self) -> None:
        proto = self._protocol
        if not self._is_ready or self._current is not None or proto is None:
            return
        if not self._queue or proto.stage != IDLE or self._error is not None:
            return
        item = self._current = self._queue.popleft()
        self._arm(self._command_timeout)
        if item.envelope is None:
            proto.quit()
        else:
            proto.send(item.envelope, item.content)

    def _cancel_open(self, d: defer.Deferred) -> None:
        # Deferred.cancel() fails ``d`` with CancelledError, the usual signal; _fail must
        # not get there first with its own error.
        self._opened = defer.Deferred()
        self._opened.addErrback(lambda _: None)
        self.abort()

    def _cancel_item(self, d: defer.Deferred) -> None:
        for item in self._queue:
            if item.deferred is d:
                self._queue.remove(item)
                return
        if self._current is not None and self._current.deferred is d:
            self.abort()

    # -- reports from the protocol -----------------------------------------------------------

    def _connected(self, proto: SessionProtocol) -> None:
        self._protocol = proto

    def _greeted(self) -> None:
        self._arm(self._command_timeout)

    def _progress(self) -> None:
        """A reply came, or a slice of content went out: the next wait gets the full
        ``command_timeout`` (it is a deadline per command, not per message)."""
        if self._current is not None:
            self._arm(self._command_timeout)

    def _session_ready(self) -> None:
        self._disarm()
        if not self._is_ready:
            self._is_ready = True
            _fire(self._opened, self)
        self._pump()

    def _message_done(self, results: tuple[RecipientResult, ...]) -> None:
        self._disarm()
        item, self._current = self._current, None
        self.messages_sent += 1
        if item is not None:
            _fire(item.deferred, results)
        self._pump()

    def _unsolicited(self, code: int, text: str) -> None:
        self.close_reason = f"the server said {code} {text} while idle"
        _log.info(
            "SMTP session closed by the server while idle: {code} {text}", code=code, text=text
        )

    def _failed(self, error: SessionError) -> None:
        self._fail(error)

    def _lost(self, error: SessionError | None) -> None:
        if error is not None:
            self._fail(error)
        elif self.close_reason is None:
            self.close_reason = "connection closed"
        self._gone_now()

    # -- endings -----------------------------------------------------------------------------

    def _fail(self, error: SessionError) -> None:
        """Fail everything that waits with ``error`` (once); the connection is closing."""
        if self._error is not None or self._gone:
            return
        self._error = error
        self.close_reason = str(error)
        self._disarm()
        _fire(self._opened, error)
        pending = ([self._current] if self._current is not None else []) + list(self._queue)
        self._current = None
        self._queue.clear()
        for item in pending:
            _fire(item.deferred, error)

    def _gone_now(self) -> None:
        if self._gone:
            return
        if self._error is None:
            # Closed without an error: anything still waiting is told why.
            self._fail(ConnectionLostDuringSession(IDLE, self.close_reason or "closed"))
        self._gone = True
        self._disarm()
        waiters, self._closed_waiters = self._closed_waiters, []
        for d in waiters:
            _fire(d, None)


def open_session(
    endpoint: IStreamClientEndpoint,
    *,
    reactor: IReactorTime,
    ehlo_hostname: str,
    tls: TLSMode,
    tls_hostname: str | None,
    trust_root: object | None = None,
    connect_timeout: float,
    command_timeout: float,
) -> defer.Deferred[OutboundSession]:
    """
    Connect through ``endpoint`` and set up an SMTP session ready for messages.

    Fires once the 220 banner, EHLO (HELO if EHLO is refused and TLS is not required) and,
    per ``tls``, STARTTLS and the second EHLO are done. Fails with
    :class:`~hatwist.delivery.ConnectFailed` (no TCP connection within ``connect_timeout``),
    :class:`~hatwist.delivery.NoGreeting` (connected, but EOF or silence instead of the
    banner, within the same ``connect_timeout``), :class:`~hatwist.delivery.GreetingRejected`,
    :class:`~hatwist.delivery.TLSUnavailable`, :class:`~hatwist.delivery.TLSFailed`,
    :class:`~hatwist.delivery.SessionTimeout` (set-up slower than ``command_timeout``), and
    the other :class:`~hatwist.delivery.SessionError` classes. Cancelling it aborts.

    :param ehlo_hostname: the name said in EHLO (never looked up here).
    :param tls: ``TLSMode.REQUIRED`` verifies the certificate for ``tls_hostname`` (the MX
        host name) against ``trust_root`` (default: the platform's trust store);
        ``IFAVAILABLE`` uses STARTTLS when offered and records whether it verified.
    """
    ehlo = _ehlo_bytes(ehlo_hostname)
    policy = TLSPolicy.for_mode(tls, tls_hostname, trust_root)
    session = OutboundSession(
        reactor, connect_timeout=connect_timeout, command_timeout=command_timeout
    )
    factory = protocol.Factory.forProtocol(lambda: SessionProtocol(session, ehlo, policy))
    session._arm(connect_timeout)
    connecting = session._connecting = endpoint.connect(factory)

    def connected(proto: object) -> None:
        session._connecting = None

    def not_connected(failure: Failure) -> None:
        session._connecting = None
        # A deadline or abort() that cancelled the attempt has already said why.
        session._fail(ConnectFailed(f"could not connect: {failure.getErrorMessage()}"))
        session._gone_now()

    connecting.addCallbacks(connected, not_connected)
    return session._opened
