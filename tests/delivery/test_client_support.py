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
