"""Shared pieces for the delivery tests (no tests here): deadlines, reporting endpoints,
scripted peers. Named test_client_* only to stay inside the files this helper owns."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.protocols.basic import LineReceiver
from zope.interface import implementer

from hatwist.config import TLSMode
from hatwist.delivery import open_session

#: Upper bound on any awaited Deferred in these tests (a safety net, never a wait).
DEADLINE = 10.0

EHLO_NAME = "relay.hatwist.test"


def within(reactor, d: defer.Deferred, seconds: float = DEADLINE) -> defer.Deferred:
    """``d`` with a test deadline, so that a bug shows up as a failure, not a hang."""
    return d.addTimeout(seconds, reactor)


async def failure_of(reactor, d: defer.Deferred) -> BaseException:
    """The exception ``d`` fails with (a test failure if it succeeds)."""
    try:
        result = await within(reactor, d)
    except Exception as e:
        return e
    raise AssertionError(f"expected a failure, got {result!r}")


@implementer(IStreamClientEndpoint)
class ReportingEndpoint:
    """Wraps an endpoint; :attr:`connected` fires once the client protocol is connected
    (its ``connectionMade`` has run), the readiness a Clock-driven deadline test needs;
    :attr:`attempts` counts connection attempts (there must be no hidden retries)."""

    def __init__(self, inner: IStreamClientEndpoint) -> None:
        self._inner = inner
        self.connected: defer.Deferred = defer.Deferred()
        self.attempts = 0

    def connect(self, factory):
        self.attempts += 1
        d = self._inner.connect(factory)

        def report(proto):
            self.connected.callback(proto)
            return proto

        return d.addCallback(report)


@implementer(IStreamClientEndpoint)
class NeverConnects:
    """An endpoint whose connection attempt never ends by itself (a black-holed SYN)."""

    def __init__(self) -> None:
        self.cancelled = False

    def connect(self, factory):
        def cancel(d):
            self.cancelled = True
            d.errback(ConnectingCancelledError(None))

        return defer.Deferred(cancel)


def tcp(reactor, host: str, port: int) -> TCP4ClientEndpoint:
    return TCP4ClientEndpoint(reactor, host, port)


def open_to(
    reactor,
    endpoint,
    *,
    clock=None,
    tls: TLSMode = TLSMode.NO,
    tls_hostname: str | None = "mx.test",
    trust_root=None,
    connect_timeout: float = DEADLINE,
    command_timeout: float = DEADLINE,
) -> defer.Deferred:
    """``open_session`` with test defaults; ``clock`` drives the session's deadlines."""
    return open_session(
        endpoint,
        reactor=clock if clock is not None else reactor,
        ehlo_hostname=EHLO_NAME,
        tls=tls,
        tls_hostname=tls_hostname,
        trust_root=trust_root,
        connect_timeout=connect_timeout,
        command_timeout=command_timeout,
    )


class ScriptedPeer(LineReceiver):
    """A peer that misbehaves on purpose: ``greeting`` bytes are written raw on connect
    (and then it closes, if the server's ``close_after_greeting`` is set); after that,
    ``answer(line)`` gives the raw bytes to write for each line (``None``: close)."""

    delimiter = b"\r\n"

    def __init__(self, server: ScriptedServer) -> None:
        self.server = server

    def connectionMade(self) -> None:
        self.server.protocols.append(self)
        self.transport.write(self.server.greeting)
        if self.server.close_after_greeting:
            self.transport.loseConnection()

    def lineReceived(self, line: bytes) -> None:
        self.server.lines.append(line)
        reply = self.server.answer(line)
        if reply is None:
            self.transport.loseConnection()
        else:
            self.transport.write(reply)

    def connectionLost(self, reason) -> None:
        self.server.closed.append(self)
        if len(self.server.closed) == len(self.server.protocols):
            waiters, self.server.waiters = self.server.waiters, []
            for d in waiters:
                d.callback(None)


class ScriptedServer(protocol.Factory):
    """Listens on 127.0.0.1, any free port; :meth:`stop` aborts whatever is still open."""

    close_after_greeting = False

    def __init__(self, greeting: bytes, answer: Callable[[bytes], bytes | None]):
        self.greeting = greeting
        self.answer = answer
        self.protocols: list[ScriptedPeer] = []
        self.closed: list[ScriptedPeer] = []
        self.lines: list[bytes] = []
        self.waiters: list[defer.Deferred] = []
        self.port = None

    def buildProtocol(self, addr):
        return ScriptedPeer(self)

    def listen(self, reactor) -> ScriptedServer:
        self.port = reactor.listenTCP(0, self, interface="127.0.0.1")
        return self

    @property
    def address(self) -> tuple[str, int]:
        host = self.port.getHost()
        return host.host, host.port

    def wait_closed(self) -> defer.Deferred:
        """Fires once every connection made so far has closed (at least one)."""
        if self.protocols and len(self.closed) == len(self.protocols):
            return defer.succeed(None)
        d = defer.Deferred()
        self.waiters.append(d)
        return d

    async def stop(self) -> None:
        await self.port.stopListening()
        for proto in self.protocols:
            if proto not in self.closed:
                proto.transport.abortConnection()
        if len(self.closed) < len(self.protocols):
            await self.wait_closed()


def esmtp_answers(line: bytes) -> bytes | None:
    """A minimal well-behaved ESMTP peer, for scripts that change one answer."""
    verb = line.split(b" ", 1)[0].upper()
    if verb == b"EHLO":
        return b"250-peer.test\r\n250 8BITMIME\r\n"
    if verb == b"QUIT":
        return b"221 bye\r\n"
    if verb == b"DATA":
        return b"354 go\r\n"
    return b"250 ok\r\n"


class LimitedMX:
    """
    The answers of a peer that takes at most ``limit`` recipients per transaction
    (452 4.5.3 beyond), recording each delivered message as (recipients, content lines).
    With ``hold_until_data`` it answers nothing until DATA arrives, and then everything at
    once: only a pipelining client gets anywhere with it.
    """

    def __init__(self, limit: int, *, pipelining: bool = True, hold_until_data=False) -> None:
        self.limit = limit
        self.pipelining = pipelining
        self.hold_until_data = hold_until_data
        self.messages: list[tuple[tuple[bytes, ...], tuple[bytes, ...]]] = []
        self.drop_at_transaction: int | None = None
        self._held = b""
        self._reset()
        self._data: list[bytes] | None = None

    def _reset(self) -> None:
        self._mail = False
        self._rcpts: list[bytes] = []

    def __call__(self, line: bytes) -> bytes | None:
        if self._data is not None:
            if line != b".":
                self._data.append(line)
                return b""
            self.messages.append((tuple(self._rcpts), tuple(self._data)))
            self._data = None
            self._reset()
            return b"250 2.0.0 queued\r\n"
        reply = self._answer(line)
        if reply is None:
            return None
        if self.hold_until_data and not line.startswith((b"DATA", b"EHLO", b"QUIT")):
            self._held += reply
            return b""
        reply, self._held = self._held + reply, b""
        return reply

    def _answer(self, line: bytes) -> bytes | None:
        verb = line.split(b" ", 1)[0].upper()
        if verb == b"EHLO":
            pipelining = b"250-PIPELINING\r\n" if self.pipelining else b""
            return b"250-peer.test\r\n" + pipelining + b"250 8BITMIME\r\n"
        if verb == b"MAIL":
            if self.drop_at_transaction == len(self.messages):
                return None
            self._mail = True
            return b"250 2.1.0 ok\r\n"
        if verb == b"RCPT":
            if not self._mail:
                return b"503 5.5.1 MAIL first\r\n"
            if len(self._rcpts) >= self.limit:
                return b"452 4.5.3 too many recipients\r\n"
            self._rcpts.append(line.split(b"<", 1)[1].rstrip(b">"))
            return b"250 2.1.5 ok\r\n"
        if verb == b"DATA":
            if not self._rcpts:
                return b"554 5.5.1 no valid recipients\r\n"
            self._data = []
            return b"354 go\r\n"
        if verb == b"RSET":
            self._reset()
            return b"250 2.0.0 ok\r\n"
        if verb == b"QUIT":
            return b"221 bye\r\n"
        return b"500 5.5.2 what\r\n"
