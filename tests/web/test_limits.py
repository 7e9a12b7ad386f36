"""Tests for hatwist.web._limits: the status port's bounds (issue 11, item 6).

A real ``LimitedSite`` on 127.0.0.1 and raw TCP clients, so what is pinned is what a
peer sees on the wire. Request deadlines run on a ``task.Clock`` given to the site (the
sockets on the real reactor), so nothing here waits for time to pass.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import deferLater
from twisted.web import http
from twisted.web.resource import Resource

from hatwist.web._limits import LINGER_BYTES, MAX_HEADERS, MAX_LINE, LimitedSite
from tests.rig.wait import until

DEADLINE = 10.0


class _Hello(Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"hello\n"


class Client(protocol.Protocol):
    """Collects what the server says; :attr:`closed` fires when the connection ends."""

    def __init__(self) -> None:
        self.data = b""
        self.closed: defer.Deferred = defer.Deferred()
        self.got: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if not self.got.called:
            self.got.callback(None)

    def connectionLost(self, reason) -> None:
        self.closed.callback(None)

    @property
    def status(self) -> int | None:
        line = self.data.split(b"\r\n", 1)[0]
        return int(line.split()[1]) if line.startswith(b"HTTP/1.1 ") else None


class _Streamer:
    """A pull producer writing chunk after chunk of a chunked body, forever."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.sent = 0

    def resumeProducing(self) -> None:
        chunk = b"x" * 16384
        self.sent += len(chunk)
        self.client.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))

    def stopProducing(self) -> None:
        pass


@pytest.fixture
def temp_files(monkeypatch):
    """Every temporary file twisted.web makes for a request body."""
    made = []
    real = http.tempfile.TemporaryFile

    def counting(*args, **kwargs):
        made.append(True)
        return real(*args, **kwargs)

    monkeypatch.setattr(http.tempfile, "TemporaryFile", counting)
    return made


@pytest_twisted.async_yield_fixture
async def site(reactor):
    clock = task.Clock()
    limited = LimitedSite(_Hello(), max_connections=4, idle_timeout=15, reactor=clock)
    limited.clock = clock
    port = reactor.listenTCP(0, limited, interface="127.0.0.1")
    limited.port_number = port.getHost().port
    try:
        yield limited
    finally:
        await port.stopListening()
        for channel in list(limited.channels):
            channel.transport.abortConnection()


async def connect(reactor, site) -> Client:
    client = Client()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", site.port_number)
    await connectProtocol(endpoint, client).addTimeout(DEADLINE, reactor)
    return client




async def answer(reactor, client: Client) -> None:
    await client.got.addTimeout(DEADLINE, reactor)
    await until(reactor, lambda: b"\r\n\r\n" in client.data, "the whole head")


# -- bodies are refused unread -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_chunked_post_is_refused_while_it_is_still_being_sent(reactor, site, temp_files):
    client = await connect(reactor, site)
    client.transport.write(
        b"POST /status HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    streamer = _Streamer(client)
    client.transport.registerProducer(streamer, False)
    await answer(reactor, client)
    await client.closed.addTimeout(DEADLINE, reactor)
    assert client.status == 405 and b"Allow: GET, HEAD" in client.data
    assert temp_files == []  # not one byte of the body went to disk
    assert site.refused["method"] == 1
    assert streamer.sent < 64 * 1024 * 1024


@pytest.mark.parametrize(
    ("head", "status", "why"),
    [
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n", 405, "method"),
        (b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 9\r\n\r\n",
         405, "method"),
        (b"DELETE /status HTTP/1.1\r\nHost: x\r\n\r\n", 405, "method"),
        (b"GET /status HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n", 413, "body"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 413, "body"),
    ],
    ids=["post-length", "put-expect", "delete", "get-with-length", "get-chunked"],
)
@pytest_twisted.ensureDeferred
async def test_requests_with_a_body_or_another_method_are_answered_before_any_body(
    reactor, site, temp_files, head, status, why
):
    client = await connect(reactor, site)
    client.transport.write(head)  # the announced body never comes
    await answer(reactor, client)
    await client.closed.addTimeout(DEADLINE, reactor)
    assert client.status == status
    assert b"100 Continue" not in client.data  # nobody was invited to send the body
    assert temp_files == [] and site.refused[why] == 1


@pytest_twisted.ensureDeferred
async def test_leftovers_after_a_refusal_are_bounded(reactor, site):
    client = await connect(reactor, site)
    client.transport.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n")
    client.transport.write(b"y" * (LINGER_BYTES + 65536))
    await client.closed.addTimeout(DEADLINE, reactor)
    await until(reactor, lambda: not site.channels, "the server side is closed too")
    assert client.status == 405


@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
@pytest_twisted.ensureDeferred
async def test_get_and_head_are_answered(reactor, site, method):
    client = await connect(reactor, site)
    client.transport.write(method + b" / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    await answer(reactor, client)
    assert client.status == 200
    client.transport.loseConnection()


# -- request size --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * MAX_LINE + b"\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-H%d: v\r\n" % n for n in range(MAX_HEADERS + 1))
        + b"\r\n",
    ],
    ids=["long-line", "many-headers"],
)
@pytest_twisted.ensureDeferred
async def test_oversized_request_heads_get_400(reactor, site, head):
    client = await connect(reactor, site)
    client.transport.write(head)
    await answer(reactor, client)
    await client.closed.addTimeout(DEADLINE, reactor)
    assert client.status == 400


# -- connections and time ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_request_must_arrive_within_the_idle_timeout_however_it_trickles(reactor, site):
    client = await connect(reactor, site)
    await until(reactor, lambda: len(site.channels) == 1, "the connection is open")
    for _ in range(14):
        client.transport.write(b"G" if not client.data else b"")
        site.clock.advance(1)
        await deferLater(reactor, 0.01)  # the byte is read before the next second
    assert not client.closed.called
    site.clock.advance(1)
    await client.closed.addTimeout(DEADLINE, reactor)


@pytest_twisted.ensureDeferred
async def test_the_idle_timeout_starts_again_after_each_response(reactor, site):
    client = await connect(reactor, site)
    site.clock.advance(10)
    client.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await answer(reactor, client)
    site.clock.advance(14)
    await deferLater(reactor, 0.01)
    assert not client.closed.called  # 24 s since connecting, 14 since the response
    site.clock.advance(1)
    await client.closed.addTimeout(DEADLINE, reactor)


@pytest_twisted.ensureDeferred
async def test_connections_over_the_cap_replace_the_longest_idle(reactor, site):
    clients = []
    for n in range(12):
        clients.append(await connect(reactor, site))
        site.clock.advance(1)  # each is idle a second longer than the next
        expected = min(n + 1, 4)
        await until(reactor, lambda: len(site.channels) == expected, "the cap holds")  # noqa: B023
        assert len(site.channels) <= site.max_connections
    await until(reactor, lambda: sum(c.closed.called for c in clients) == 8, "8 evicted")
    assert [c.closed.called for c in clients] == [True] * 8 + [False] * 4  # oldest first
    assert site.evicted == 8
    # The newest connection is one of the four: it is answered.
    newest = clients[-1]
    newest.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await answer(reactor, newest)
    assert newest.status == 200
    for client in clients[-4:]:
        client.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_a_newcomer_gets_503_when_no_connection_is_idle(reactor, site):
    for _ in range(4):
        await connect(reactor, site)
    await until(reactor, lambda: len(site.channels) == 4, "four open")
    for channel in site.channels:  # as if each were in the middle of a response
        channel._handlingRequest = True
    client = await connect(reactor, site)
    await client.closed.addTimeout(DEADLINE, reactor)
    assert client.status == 503 and site.busy_refused == 1
    assert len(site.channels) == 4
    for channel in site.channels:
        channel._handlingRequest = False
