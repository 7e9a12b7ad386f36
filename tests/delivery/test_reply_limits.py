"""Tests for the reply bounds of hatwist.delivery._protocol: an MX cannot make the relay
keep an endless reply (issue 11, item 1).

Real sockets on loopback: an in-process MX streams a multi-line reply that never ends
(up to a few MB, so the code before the bound fails the test instead of eating the box),
and a counting wrapper around the client's protocol measures what the relay read.
Deadlines run on a ``task.Clock`` that is never advanced: only the bound can end these
sessions quickly, a command deadline cannot.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, task
from twisted.internet.interfaces import IPullProducer, IStreamClientEndpoint
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from zope.interface import implementer

from hatwist.config import parse_config
from hatwist.delivery import Envelope, ReplyTooLarge, UnexpectedReply
from hatwist.delivery._protocol import MAX_LINE_LENGTH, MAX_REPLY_BYTES, MAX_REPLY_LINES
from hatwist.delivery.attempt import DeliveryAgent, OutboundMessage
from hatwist.health import ServerRegistry
from hatwist.mx import MXResolver, build_resolver

from .test_client_support import (
    ScriptedServer,
    esmtp_answers,
    failure_of,
    open_to,
    tcp,
    within,
)

#: What the streaming MX writes at most: far past the bound, small enough for any box.
STREAM_LIMIT = 4 * 1024 * 1024
#: What the relay may read of such a stream: the bound plus a few socket reads.
READ_BOUND = 512 * 1024


# -- a streaming MX and a counting client ----------------------------------------------------


@implementer(IPullProducer)
class _Stream:
    """A producer writing ``prefix`` lines (or one line without end) until stopped."""

    def __init__(self, transport, unit: bytes, server: StreamingMX) -> None:
        self.transport, self.unit, self.server = transport, unit, server

    def resumeProducing(self) -> None:
        if self.server.written >= STREAM_LIMIT:
            return  # far past any bound: hold the connection open, write no more
        chunk = self.unit * (16384 // len(self.unit) + 1)
        self.server.written += len(chunk)
        self.transport.write(chunk)

    def stopProducing(self) -> None:
        pass


class _StreamingPeer(protocol.Protocol):
    def __init__(self, server: StreamingMX) -> None:
        self.server = server
        self.buffer = b""

    def connectionMade(self) -> None:
        self.server.connections += 1
        if self.server.at == "greeting":
            self._stream()
        else:
            self.transport.write(b"220 mx.test ready\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            verb = line.split(b" ", 1)[0].upper()
            if verb.decode() == self.server.at:
                self._stream()
                return
            self.transport.write(esmtp_answers(line))

    def _stream(self) -> None:
        self.transport.registerProducer(_Stream(self.transport, self.server.unit, self.server),
                                        False)  # fmt: skip

    def connectionLost(self, reason) -> None:
        self.server.closed.append(reason)
        if self.server.lost is not None and not self.server.lost.called:
            self.server.lost.callback(None)


class StreamingMX(protocol.Factory):
    """Answers like a plain ESMTP peer until the command ``at`` ("greeting", "EHLO",
    "MAIL"): then it writes ``unit`` again and again, never a last line."""

    def __init__(self, at: str, unit: bytes = b"250-stream of continuation lines\r\n") -> None:
        self.at, self.unit = at, unit
        self.written = 0
        self.connections = 0
        self.closed: list = []
        self.lost: defer.Deferred | None = defer.Deferred()

    def buildProtocol(self, addr):
        return _StreamingPeer(self)

    def listen(self, reactor, host: str = "127.0.0.1") -> StreamingMX:
        self.port = reactor.listenTCP(0, self, interface=host)
        return self

    @property
    def address(self) -> tuple[str, int]:
        host = self.port.getHost()
        return host.host, host.port

    async def stop(self) -> None:
        await self.port.stopListening()


class _Counting(ProtocolWrapper):
    def dataReceived(self, data: bytes) -> None:
        self.factory.received += len(data)
        super().dataReceived(data)


class _CountingFactory(WrappingFactory):
    protocol = _Counting

    def __init__(self, wrapped) -> None:
        super().__init__(wrapped)
        self.received = 0


@implementer(IStreamClientEndpoint)
class CountingEndpoint:
    """An endpoint whose :attr:`received` says how many bytes reached the client."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.received = 0
        self._factories: list[_CountingFactory] = []

    def connect(self, factory):
        wrapping = _CountingFactory(factory)
        self._factories.append(wrapping)
        d = self._inner.connect(wrapping)
        return d.addCallback(lambda wrapper: wrapper.wrappedProtocol)

    @property
    def bytes_read(self) -> int:
        return sum(f.received for f in self._factories)


async def _stream_failure(reactor, mx: StreamingMX) -> tuple[BaseException, int]:
    endpoint = CountingEndpoint(tcp(reactor, *mx.address))
    try:
        error = await failure_of(reactor, open_to(reactor, endpoint, clock=task.Clock()))
        await within(reactor, mx.lost)
    finally:
        await mx.stop()
    return error, endpoint.bytes_read


# -- the bounds, stage by stage --------------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "unit", "detail"),
    [
        ("greeting", b"220-welcome, and welcome again\r\n", f"more than {MAX_REPLY_LINES} lines"),
        ("EHLO", b"250-stream of continuation lines\r\n", f"more than {MAX_REPLY_LINES} lines"),
        ("EHLO", b"250-" + b"x" * 1000 + b"\r\n", f"more than {MAX_REPLY_BYTES} bytes"),
        ("EHLO", b"x" * 4096, f"a line longer than {MAX_LINE_LENGTH} bytes"),
        # Informational 0xx lines are dropped by the library's reader, never kept, but
        # they must not keep the session reading forever either.
        ("EHLO", b"000 still thinking\r\n", f"more than {MAX_REPLY_LINES} lines"),
    ],
    ids=["greeting-lines", "ehlo-lines", "ehlo-bytes", "ehlo-one-line", "informational"],
)
@pytest_twisted.ensureDeferred
async def test_endless_reply_fails_at_the_bound_and_closes(reactor, at, unit, detail):
    mx = StreamingMX(at, unit).listen(reactor)
    error, read = await _stream_failure(reactor, mx)
    assert isinstance(error, ReplyTooLarge) and isinstance(error, UnexpectedReply)
    assert error.stage == at and error.temporary
    assert detail in error.reason
    assert read < READ_BOUND, f"read {read} bytes of a reply past its bound"
    assert mx.closed, "the session is closed by the relay"


@pytest_twisted.ensureDeferred
async def test_endless_reply_in_a_transaction_fails_the_message_at_the_bound(reactor):
    mx = StreamingMX("MAIL").listen(reactor)
    endpoint = CountingEndpoint(tcp(reactor, *mx.address))
    try:
        session = await within(reactor, open_to(reactor, endpoint, clock=task.Clock()))
        error = await failure_of(reactor, session.send(Envelope("a@x.test", ["b@y.test"]), b"hi"))
        await within(reactor, mx.lost)
    finally:
        await mx.stop()
    assert isinstance(error, ReplyTooLarge) and error.stage == "MAIL"
    assert endpoint.bytes_read < READ_BOUND


@pytest_twisted.ensureDeferred
async def test_largest_allowed_reply_is_read_whole(reactor):
    """The bound refuses nothing a real MX sends: a reply of exactly the maximum lines,
    within the byte bound, with lines of the maximum length, is an EHLO like any other."""
    first, long_line, last = b"250-peer.test", b"250-X-LONG ", b"250 8BITMIME"
    long_line += b"y" * (MAX_LINE_LENGTH - len(long_line))
    n_ext = MAX_REPLY_LINES - 3
    width = (MAX_REPLY_BYTES - len(first) - len(long_line) - len(last)) // n_ext
    ext = [b"250-X-EXT%03d %s" % (n, b"z" * (width - 13)) for n in range(n_ext)]
    lines = [first, long_line, *ext, last]
    assert len(lines) == MAX_REPLY_LINES and len(long_line) == MAX_LINE_LENGTH
    assert MAX_REPLY_BYTES - width < sum(map(len, lines)) <= MAX_REPLY_BYTES  # CRLF not counted
    reply = b"".join(line + b"\r\n" for line in lines)

    def answer(line):
        return reply if line.startswith(b"EHLO") else esmtp_answers(line)

    server = ScriptedServer(b"220 peer.test\r\n", answer).listen(reactor)
    try:
        session = await within(reactor, open_to(reactor, tcp(reactor, *server.address)))
        assert "X-EXT096" in session.extensions and "8BITMIME" in session.extensions
        # The count starts again with every reply: the next one is not refused.
        await within(reactor, session.send(Envelope("a@x.test", ["b@y.test"]), b"hello"))
        await within(reactor, session.quit())
    finally:
        await server.stop()


# -- the attempt -----------------------------------------------------------------------------


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_attempt_to_an_mx_streaming_its_ehlo_reply_fails_temporarily(reactor, dns_server):
    mx = StreamingMX("EHLO").listen(reactor, host="127.0.0.21")
    dns_server.add_mx("stream.test", [(10, "mx.stream.test")])
    dns_server.add_a("mx.stream.test", "127.0.0.21")
    config = parse_config(
        f'binding b1 {{\n  ha_proxy_bypass = "true"\n  remote_smtp_port = "{mx.address[1]}"\n'
        f'  ehlo_hostname = "relay.test"\n  tls = "no"\n  smtp_timeout = "60"\n}}\n'
    )
    resolver = MXResolver(build_resolver(dns_server.address, reactor=reactor), reactor=reactor)
    registry = ServerRegistry((), success_threshold=1, failure_threshold=1)
    agent = DeliveryAgent(config, registry, resolver, reactor=reactor)
    message = OutboundMessage(
        id="m1", binding="b1", domain="stream.test",
        envelope=Envelope("s@relay.test", ("r@stream.test",)), content=b"Subject: x\r\n\r\nx\r\n",
    )  # fmt: skip
    try:
        result = await within(reactor, agent.deliver(message))
        await within(reactor, mx.lost)
    finally:
        await agent.close()
        resolver.close()
        await mx.stop()
    [recipient] = result.recipients
    assert recipient.kind == "temporary"
    assert "reply to EHLO too large" in result.error
    assert (result.mx_host, result.mx_address) == ("mx.stream.test", "127.0.0.21")
