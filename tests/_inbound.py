"""The harness of the inbound tests (tests.test_inbound*): a raw SMTP client and an
L{InboundFactory} listening on 127.0.0.1 over a real spool, both on real sockets."""

from __future__ import annotations

import ipaddress
import re

import pytest_twisted
from twisted.internet import defer, endpoints, protocol, reactor
from twisted.python.threadpool import ThreadPool

from hatwist.inbound import InboundFactory
from hatwist.spool import Spool
from hatwist.spool._inspect import spooled_contents, spooled_ids

DEADLINE = 10
LIMIT = 10_000
ENHANCED = re.compile(r"\A\d{3}[ -][245]\.\d{1,3}\.\d{1,3} ")
EXEMPT = ("220 ", "250-", "354 ")  # RFC 2034: greeting, EHLO answer and go-ahead
LOCALHOST = ipaddress.ip_network("127.0.0.1/32")


class Client(protocol.Protocol):
    """Raw SMTP lines: writes what it is told, parses the replies it gets."""

    def __init__(self) -> None:
        self.received = b""
        self.lost = defer.Deferred()
        self._waiting: list[tuple[int, defer.Deferred]] = []

    def replies(self) -> list[str]:
        out, current = [], []
        for line in self.received.decode("ascii").split("\r\n")[:-1]:
            current.append(line)
            if line[3:4] != "-":
                out.append("\n".join(current))
                current = []
        return out

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        have = len(self.replies())
        for wanted, d in list(self._waiting):
            if have >= wanted:
                self._waiting.remove((wanted, d))
                d.callback(self.replies()[:wanted])

    def connectionLost(self, reason) -> None:
        for _, d in self._waiting:
            d.errback(reason)
        self._waiting = []
        self.lost.callback(None)

    def until(self, count: int) -> defer.Deferred:
        """Fires with the first C{count} replies (deadline: DEADLINE seconds)."""
        d = defer.Deferred()
        self._waiting.append((count, d))
        self.dataReceived(b"")
        return d.addTimeout(DEADLINE, reactor)

    async def send(self, data: bytes, count: int) -> list[str]:
        """Write C{data} in one write; return the C{count} replies that follow."""
        before = len(self.replies())
        self.transport.write(data)
        return (await self.until(before + count))[before:]


class Server:
    """An InboundFactory listening on 127.0.0.1, with what it handed on."""

    def __init__(self, spool, *, bindings=("default", "b2"), clock=None, relay_from=(LOCALHOST,),
                 **options):
        self.spool = spool
        self.accepted = []
        self.factory = InboundFactory(
            spool=spool, relay_from=relay_from, max_message_size=LIMIT,
            hostname="relay.test", binding_exists=lambda name: name in bindings,
            on_accepted=self.accepted.append, reactor=clock or reactor, **options,
        )
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.clients: list[Client] = []

    async def connect(self, source: str = "127.0.0.1", greeting: str = "220 relay.test ESMTP"
                      ) -> Client:
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port,
                                                bindAddress=(source, 0))
        client = await endpoints.connectProtocol(endpoint, Client()).addTimeout(DEADLINE,
                                                                                reactor)
        self.clients.append(client)
        assert (await client.until(1))[0].startswith(greeting)
        return client

    async def close(self) -> None:
        for client in self.clients:
            client.transport.loseConnection()
            await client.lost.addTimeout(DEADLINE, reactor)
        await self.port.stopListening()


class GatedSpool:
    """A real spool whose store() answer is held until the test releases it."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.called = defer.Deferred()
        self.gate = defer.Deferred()

    def store(self, *args):
        self.called.callback(None)
        return self.gate.addCallback(lambda _: self.spool.store(*args))


def servers_in(base):
    """Yield a C{make(**kwargs) -> Server} for one test; every server (and its spool's
    threads) is closed afterwards.  Test modules wrap it in their C{server_for} fixture."""
    threadpool = ThreadPool(minthreads=1, maxthreads=4, name="test-inbound")
    threadpool.start()
    servers = []

    def make(directory=None, **kwargs) -> Server:
        spool = kwargs.pop("spool", None) or Spool(
            str(directory or base / "spool"), reactor=reactor, threadpool=threadpool)
        servers.append(Server(spool, **kwargs))
        return servers[-1]

    make.threadpool = threadpool
    try:
        yield make
    finally:
        for server in servers:
            pytest_twisted.blockon(defer.ensureDeferred(server.close()))
            if isinstance(server.spool, Spool):  # its files must not hold a tmpfs mount
                pytest_twisted.blockon(server.spool.close())
        threadpool.stop()


def transaction(body: bytes, rcpts=("r1@example.net",), sender="s@example.org") -> bytes:
    lines = [f"MAIL FROM:<{sender}>".encode()] + [f"RCPT TO:<{r}>".encode() for r in rcpts]
    return b"\r\n".join([*lines, b"DATA", b""])


def check_enhanced(replies: list[str]) -> None:
    for reply in replies:
        for line in reply.split("\n"):
            assert line.startswith(EXEMPT) or ENHANCED.match(line), line


def spooled(directory) -> list[str]:
    """Ids committed in the spool, read on a connection of its own."""
    return spooled_ids(str(directory))


def spooled_content(directory, message_id: str) -> bytes:
    return spooled_contents(str(directory))[message_id]


async def message_content(server: Server, message_id: str) -> bytes:
    return await server.spool.content(message_id).addTimeout(DEADLINE, reactor)
