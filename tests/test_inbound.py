"""Tests for hatwist.inbound: the ESMTP listener, over real loopback sockets."""

from __future__ import annotations

import ipaddress
import re
import smtplib

import pytest
import pytest_twisted
from twisted.internet import defer, endpoints, protocol, reactor, task, threads
from twisted.python.threadpool import ThreadPool

from hatwist.inbound import InboundFactory, split_binding
from hatwist.inbound._syntax import (
    check_mail_parameters,
    is_mailbox,
    parse_path,
    received_field,
)
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


@pytest.fixture
def pool():
    threadpool = ThreadPool(minthreads=1, maxthreads=4, name="test-inbound")
    threadpool.start()
    yield threadpool
    threadpool.stop()


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


@pytest.fixture
def server_for(tmp_path, pool):
    servers = []

    def make(directory=None, **kwargs) -> Server:
        spool = kwargs.pop("spool", None) or Spool(
            str(directory or tmp_path / "spool"), reactor=reactor, threadpool=pool)
        servers.append(Server(spool, **kwargs))
        return servers[-1]

    yield make
    for server in servers:
        pytest_twisted.blockon(defer.ensureDeferred(server.close()))
        if isinstance(server.spool, Spool):  # its files must not hold a tmpfs mount
            pytest_twisted.blockon(server.spool.close())


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


BODY = b"Subject: test\r\nX-Binding: b2\r\n\r\nline one\r\n..dot-stuffed\r\n.\r\n"


@pytest_twisted.ensureDeferred
async def test_accepted_mail_is_fsynced_in_the_spool_when_250_arrives(server_for, tmp_path):
    server = server_for()
    client = await server.connect()
    await client.send(b"EHLO me\r\n" + transaction(b""), 4)
    [reply] = await client.send(BODY, 1)
    assert reply.startswith("250 2.0.0 Ok: queued as ")
    message_id = reply.rsplit(" ", 1)[1]
    # At the moment the client reads its 250, the message's transaction committed
    # (synchronous=FULL: fsynced); another connection sees it.
    assert spooled(tmp_path / "spool") == [message_id]
    [message] = server.accepted
    assert (message.id, message.binding, message.mail_from) == (message_id, "b2", "s@example.org")
    content = spooled_contents(str(tmp_path / "spool"))[message_id]
    assert content.startswith(b"Received: from me ([127.0.0.1])\r\n\tby relay.test (hatwist)")
    assert content.endswith(b"\r\nSubject: test\r\n\r\nline one\r\n.dot-stuffed\r\n")
    assert b"X-Binding" not in content


class GatedSpool:
    """A real spool whose store() answer is held until the test releases it."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.called = defer.Deferred()
        self.gate = defer.Deferred()

    def store(self, *args):
        self.called.callback(None)
        return self.gate.addCallback(lambda _: self.spool.store(*args))


@pytest_twisted.ensureDeferred
async def test_250_waits_for_the_spool(server_for, tmp_path, pool):
    gated = GatedSpool(Spool(str(tmp_path / "spool"), reactor=reactor, threadpool=pool))
    server = server_for(spool=gated)
    client = await server.connect()
    await client.send(b"EHLO me\r\n" + transaction(b""), 4)
    client.transport.write(BODY + b"NOOP\r\n")
    await gated.called.addTimeout(DEADLINE, reactor)
    # A full round trip on another connection: a premature reply would be here by now.
    other = await server.connect()
    await other.send(b"NOOP\r\n", 1)
    assert len(client.replies()) == 5
    gated.gate.callback(None)
    replies = await client.until(7)
    assert replies[5].startswith("250 2.0.0 Ok: queued as ")
    assert replies[6] == "250 2.0.0 Ok"


@pytest_twisted.ensureDeferred
async def test_peer_outside_relay_from_gets_550_571_for_every_recipient(server_for, tmp_path):
    server = server_for()
    client = await server.connect(source="127.0.0.77")
    replies = await client.send(
        b"EHLO me\r\n" + transaction(b"", rcpts=("a@example.net", "b@example.net")), 5)
    assert replies[1] == "250 2.1.0 Ok"
    assert replies[2] == "550 5.7.1 <a@example.net>: Relay access denied"
    assert replies[3] == "550 5.7.1 <b@example.net>: Relay access denied"
    assert replies[4] == "554 5.5.1 Error: no valid recipients"
    assert spooled(tmp_path / "spool") == []
    assert server.accepted == []


@pytest_twisted.ensureDeferred
async def test_pipelined_commands_in_one_write_get_replies_in_order(server_for):
    server = server_for()
    client = await server.connect()
    first = await client.send(
        b"EHLO me\r\nMAIL FROM:<s@example.org> BODY=8BITMIME SIZE=100\r\n"
        b"RCPT TO:<a@example.net>\r\nRCPT TO:<not-an-address>\r\nRCPT TO:<b@example.net>\r\n"
        b"DATA\r\n", 6)
    assert first[0].split("\n") == ["250-relay.test", "250-PIPELINING", f"250-SIZE {LIMIT}",
                                    "250-8BITMIME", "250 ENHANCEDSTATUSCODES"]
    assert [r[:9] for r in first[1:]] == ["250 2.1.0", "250 2.1.5", "501 5.1.3", "250 2.1.5",
                                          "354 End d"]
    # End of data, a whole second transaction and QUIT, all in one write.
    second = await client.send(
        b"Subject: 8bit caf\xc3\xa9\r\n\r\nhi\r\n.\r\n" + transaction(b"") + b"x\r\n.\r\nQUIT\r\n",
        6)
    assert [r[:9] for r in second] == ["250 2.0.0", "250 2.1.0", "250 2.1.5", "354 End d",
                                       "250 2.0.0", "221 2.0.0"]
    await client.lost.addTimeout(DEADLINE, reactor)
    check_enhanced(first[1:] + second)  # first[0] is the EHLO answer, exempt
    assert [m.recipients[0].address for m in server.accepted] == ["a@example.net",
                                                                 "r1@example.net"]
    assert len(server.accepted[0].recipients) == 2


@pytest_twisted.ensureDeferred
async def test_declared_size_over_the_limit_is_refused_at_mail(server_for):
    client = await server_for().connect()
    replies = await client.send(
        f"EHLO me\r\nMAIL FROM:<s@example.org> SIZE={LIMIT + 1}\r\nNOOP\r\n".encode(), 3)
    assert replies[1:] == ["552 5.3.4 Message size exceeds fixed limit", "250 2.0.0 Ok"]


@pytest.mark.parametrize("line", [b"x" * 100, b"y" * (LIMIT + 70_000)],
                         ids=["many-lines", "one-long-line"])
@pytest_twisted.ensureDeferred
async def test_body_over_the_limit_is_refused_after_data_and_not_kept(server_for, tmp_path,
                                                                      line):
    server = server_for()
    client = await server.connect()
    await client.send(b"EHLO me\r\n" + transaction(b""), 4)
    [session] = server.factory.sessions
    body = b"Subject: big\r\n\r\n" + (line + b"\r\n") * (2 * LIMIT // len(line) + 1)
    client.transport.write(body)
    replies = await client.send(b".\r\nNOOP\r\n", 2)
    assert replies == ["552 5.3.4 Message size exceeds fixed limit", "250 2.0.0 Ok"]
    assert session._chunks == []
    assert server.accepted == []


@pytest.mark.parametrize("smuggled", [
    b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r\r\n", b"\n",
])
@pytest_twisted.ensureDeferred
async def test_bare_line_ends_in_data_are_refused_and_the_rest_never_runs(
        server_for, tmp_path, smuggled):
    server = server_for()
    client = await server.connect()
    await client.send(b"EHLO me\r\n" + transaction(b""), 4)
    kind = "CR" if smuggled.count(b"\r") != smuggled.count(b"\r\n") else "LF"
    replies = await client.send(
        b"Subject: one\r\n\r\nhello" + smuggled
        + b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<v@example.net>\r\nDATA\r\n"
        + b"Subject: smuggled\r\n\r\n.\r\n", 1)
    assert replies == [f"550 5.5.2 Error: bare <{kind}> received"]
    await client.lost.addTimeout(DEADLINE, reactor)
    assert len(client.replies()) == 6  # 220, EHLO, MAIL, RCPT, 354, 550: nothing smuggled
    assert server.accepted == []


@pytest_twisted.ensureDeferred
async def test_bare_lf_after_a_command_is_refused(server_for):
    client = await server_for().connect()
    assert await client.send(b"NOOP\n", 1) == ["550 5.5.2 Error: bare <LF> received"]
    await client.lost.addTimeout(DEADLINE, reactor)


@pytest.mark.parametrize("headers, binding", [
    (b"Subject: a\r\n", "default"),
    (b"X-Binding: b2\r\nSubject: a\r\n", "b2"),
    (b"Subject: a\r\nx-binding:\r\n  b2\r\n", "b2"),
])
@pytest_twisted.ensureDeferred
async def test_binding_comes_from_x_binding_which_is_removed(server_for, tmp_path, headers,
                                                            binding):
    server = server_for()
    client = await server.connect()
    await client.send(b"EHLO me\r\n" + transaction(b""), 4)
    [reply] = await client.send(headers + b"\r\nbody X-Binding: b9\r\n.\r\n", 1)
    assert reply.startswith("250 2.0.0")
    [message] = server.accepted
    assert message.binding == binding
    content = await message_content(server, message.id)
    assert content.endswith(b"\r\nSubject: a\r\n\r\nbody X-Binding: b9\r\n")
    assert content.lower().count(b"x-binding") == 1


async def message_content(server: Server, message_id: str) -> bytes:
    return await server.spool.content(message_id).addTimeout(DEADLINE, reactor)


@pytest.mark.parametrize("headers, answer", [
    (b"X-Binding: nope\r\n", '550 5.7.1 Unknown binding "nope"'),
    (b"X-Binding: b2\r\nX-Binding: b2\r\n", "550 5.7.1 Error: more than one X-Binding header"),
    (b"X-Binding:\r\n", "550 5.7.1 Error: empty X-Binding header"),
])
@pytest_twisted.ensureDeferred
async def test_unknown_or_ambiguous_binding_is_refused_naming_it(server_for, tmp_path,
                                                                  headers, answer):
    server = server_for()
    client = await server.connect()
    await client.send(b"EHLO me\r\n" + transaction(b""), 4)
    assert await client.send(headers + b"\r\nbody\r\n.\r\n", 1) == [answer]
    assert server.accepted == []
    assert spooled(tmp_path / "spool") == []


@pytest_twisted.ensureDeferred
async def test_full_disk_answers_452_431_and_leaves_nothing_half_written(server_for,
                                                                         tiny_tmpfs):
    server = server_for(directory=tiny_tmpfs / "spool")
    server.factory.max_message_size = 200_000
    client = await server.connect()
    await client.send(b"EHLO me\r\n" + transaction(b""), 4)
    filler = b"Subject: big\r\n\r\n" + (b"z" * 998 + b"\r\n") * 100
    assert await client.send(filler + b".\r\n", 1) == ["452 4.3.1 Insufficient system storage"]
    assert spooled(tiny_tmpfs / "spool") == []
    assert server.accepted == []
    # The session goes on, and a message that fits is still accepted.
    await client.send(transaction(b""), 3)
    [reply] = await client.send(b"Subject: small\r\n\r\nhi\r\n.\r\n", 1)
    assert reply.startswith("250 2.0.0")
    await server.spool.close()  # before the tmpfs is unmounted


@pytest_twisted.ensureDeferred
async def test_sessions_past_the_limit_get_421_and_a_freed_slot_is_reused(server_for):
    """Each session may buffer a whole message: their number is what bounds memory."""
    server = server_for(max_sessions=2)
    first = await server.connect()
    await server.connect()
    refused = await server.connect(greeting="421 4.3.2 relay.test Error: too many connections")
    await refused.lost.addTimeout(DEADLINE, reactor)
    # After QUIT the server closes first, so its session is gone when the client sees EOF.
    assert await first.send(b"QUIT\r\n", 1) == ["221 2.0.0 Bye"]
    await first.lost.addTimeout(DEADLINE, reactor)
    third = await server.connect()
    assert (await third.send(b"EHLO me\r\n", 1))[0].startswith("250-relay.test")


@pytest_twisted.ensureDeferred
async def test_idle_session_is_closed_with_421(server_for):
    clock = task.Clock()
    client = await server_for(clock=clock).connect()
    await client.send(b"EHLO me\r\n", 1)
    clock.advance(301)
    assert (await client.until(3))[2] == "421 4.4.2 relay.test Error: timeout exceeded"
    await client.lost.addTimeout(DEADLINE, reactor)


@pytest_twisted.ensureDeferred
async def test_a_real_client_smtplib_delivers_through_size_and_8bitmime(server_for):
    server = server_for()
    port = server.port.getHost().port

    def submit():
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=DEADLINE) as s:
            s.ehlo()
            assert s.has_extn("size") and s.has_extn("pipelining")
            refused = s.sendmail("s@example.org", ["a@example.net", "b@example.net"],
                                 "Subject: caf\u00e9\r\n\r\nbody\r\n.leading dot\r\n".encode(),
                                 mail_options=["BODY=8BITMIME"])
            return refused

    assert await threads.deferToThread(submit).addTimeout(DEADLINE, reactor) == {}
    [message] = server.accepted
    content = await message_content(server, message.id)
    assert content.endswith(b"\r\nSubject: caf\xc3\xa9\r\n\r\nbody\r\n.leading dot\r\n")


def test_split_binding_keeps_everything_but_the_field():
    content = b"A: 1\r\nX-BINDING:\r\n\tb2 \r\nB: 2\r\n\r\nX-Binding: body\r\n"
    assert split_binding(content) == ("b2", b"A: 1\r\nB: 2\r\n\r\nX-Binding: body\r\n",
                                      0)
    assert split_binding(b"no header here\r\nX-Binding: b\r\n") == (
        None, b"no header here\r\nX-Binding: b\r\n", 0)


@pytest.mark.parametrize("argument, parsed", [
    ("FROM:<a@b.test>", ("a@b.test", [])),
    ("from: <a@b.test> SIZE=10 BODY=8BITMIME", ("a@b.test", ["SIZE=10", "BODY=8BITMIME"])),
    ("FROM:<>", ("", [])),
    ("FROM:<@relay.test,@r2.test:a@b.test>", ("a@b.test", [])),  # source route dropped
    ("FROM:a@b.test", None),
    ("FROM:<a b@c.test>", None),
    ("TO:<a@b.test>", None),
])
def test_paths_are_parsed_strictly(argument, parsed):
    assert parse_path("FROM:", argument) == parsed


@pytest.mark.parametrize("params, refusal", [
    ([], None),
    (["SIZE=10000", "body=7bit"], None),
    (["SIZE=10001"], (552, "5.3.4")),
    (["SIZE=big"], (555, "5.5.4")),
    (["BODY=BINARYMIME"], (555, "5.5.4")),  # CHUNKING is not offered
    (["SMTPUTF8"], (555, "5.5.4")),  # nor is SMTPUTF8
    (["RET=HDRS"], (555, "5.5.4")),  # nor DSN
])
def test_mail_accepts_only_the_parameters_ehlo_advertises(params, refusal):
    found = check_mail_parameters(params, LIMIT)
    assert (found and (found.code, found.enhanced)) == refusal


@pytest.mark.parametrize("address, ok", [
    ("a@b.test", True), ("a@b@c.test", False), ("@b.test", False), ("a@", False),
    ("postmaster", False)])
def test_a_recipient_is_a_local_part_at_a_domain(address, ok):
    assert is_mailbox(address) is ok


@pytest.mark.parametrize("peer, literal", [
    (ipaddress.ip_address("192.0.2.7"), "[192.0.2.7]"),
    (ipaddress.ip_address("2001:db8::7"), "[IPv6:2001:db8::7]"),  # RFC 5321 section 4.1.3
    (None, "[unknown]"),
])
def test_received_field_names_the_peer_as_an_address_literal(peer, literal):
    field = received_field(helo="client.test", peer=peer, hostname="relay.test", date=0)
    assert field.startswith(f"Received: from client.test ({literal})\r\n".encode())
    assert field.endswith(b"\t" + b"Thu, 01 Jan 1970 00:00:00 -0000\r\n")


@pytest_twisted.ensureDeferred
async def test_when_idle_fires_once_the_last_session_is_gone_so_shutdown_need_not_poll(
        server_for):
    server = server_for()
    assert server.factory.when_idle().called  # no session: at once
    first, second = await server.connect(), await server.connect()
    idle = server.factory.when_idle()
    await first.send(b"QUIT\r\n", 1)
    await first.lost.addTimeout(DEADLINE, reactor)
    assert not idle.called
    await second.send(b"QUIT\r\n", 1)
    await idle.addTimeout(DEADLINE, reactor)
    assert server.factory.sessions == set()
