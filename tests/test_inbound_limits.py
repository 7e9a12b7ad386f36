"""Tests for the inbound listener's limits against hostile peers (hatwist.inbound._factory,
_admission, _session), each attack over real loopback sockets: a client that never reads
its replies, idle clients holding slots from other 127.0.0.0/8 addresses, NOOP to stay
alive, a 60 KB command line in one segment, a 1 MB line in a message.  Each test asserts
the bound (a count or a size), and that legitimate mail still flows meanwhile."""

from __future__ import annotations

import ipaddress
import socket

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor, task

from hatwist.inbound import JUNK_COMMAND_LIMIT, MAX_SESSIONS_PER_IP, MAX_SESSIONS_UNLISTED
from hatwist.inbound._admission import Admission, Limits
from hatwist.inbound._session import CLOSE_GRACE
from tests._inbound import DEADLINE, servers_in, spooled, transaction

SMALL_SOCKET_BUFFER = 4096
"""Kernel socket buffers of the never-reading test, so the bound is the process's own."""
LARGE_SOCKET_BUFFER = 1024 * 1024
"""...and afterwards, so that draining the replies is quick."""
TRANSPORT_BOUND = 64 * 1024 + 1024
"""Twisted's write-buffer size (FileDescriptor.bufferSize) plus one reply."""
READ_CHUNK = 64 * 1024
"""What one read of the transport returns at most (tcp.Connection.bufferSize)."""


@pytest.fixture
def server_for(tmp_path):
    yield from servers_in(tmp_path)


def write_buffered(transport) -> int:
    """Bytes a Twisted TCP transport holds for writing (its private buffers)."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


async def eventually(condition, what: str) -> None:
    """Wait (polling, with DEADLINE) until ``condition()`` holds."""
    deadline = reactor.seconds() + DEADLINE
    while not condition():
        assert reactor.seconds() < deadline, f"never: {what}"
        await task.deferLater(reactor, 0.01)


class NeverReads(protocol.Protocol):
    """A submitter that writes commands and reads none of the replies (until told to)."""

    def __init__(self) -> None:
        self.received = 0
        self.data = b""  # the first megabyte of it
        self.lost = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.pauseProducing()  # read nothing

    @classmethod
    def connect(cls, port: int) -> NeverReads:
        """Connected to 127.0.0.1:port with a small receive buffer, set before the
        handshake (shrinking it later makes Linux drop data it already allowed)."""
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_SOCKET_BUFFER)
        raw.settimeout(DEADLINE)
        raw.connect(("127.0.0.1", port))
        raw.setblocking(False)
        client = cls()
        factory = protocol.Factory.forProtocol(lambda: client)
        reactor.adoptStreamConnection(raw.fileno(), socket.AF_INET, factory)
        raw.close()  # the reactor holds its own duplicate of the descriptor
        return client

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if len(self.data) < 1_000_000:
            self.data += data

    def connectionLost(self, reason) -> None:
        self.lost.callback(None)


@pytest_twisted.ensureDeferred
async def test_a_client_that_never_reads_replies_costs_a_bounded_buffer_and_loses_nothing(
        server_for):
    server = server_for(junk_command_limit=10**9)  # the back-pressure alone is under test
    hostile = NeverReads.connect(server.port.getHost().port)
    await eventually(lambda: server.factory.sessions, "the session is open")
    [session] = server.factory.sessions
    session.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                        SMALL_SOCKET_BUFFER)
    lines = 60_000  # 1 MB of EHLO lines: about 5.8 MB of replies
    hostile.transport.write(b"EHLO hostile.test\r\n" * lines)

    # Today's code read all of it and queued every reply; now the session stops
    # reading once its replies back up.
    await eventually(lambda: getattr(session, "waiting_for_reader", False)
                     or write_buffered(session.transport) > TRANSPORT_BOUND,
                     "the session stops reading or its buffer grows")
    assert write_buffered(session.transport) <= TRANSPORT_BOUND
    assert session.pending_input <= READ_CHUNK + len(b"EHLO hostile.test\r\n")

    # Meanwhile a legitimate submitter gets its mail accepted...
    client = await server.connect()
    await client.send(b"EHLO me\r\n" + transaction(b""), 4)
    [reply] = await client.send(b"Subject: meanwhile\r\n\r\nhi\r\n.\r\n", 1)
    assert reply.startswith("250 2.0.0 Ok: queued as ")
    assert len(server.accepted) == 1
    # ...and the hostile session still holds no more.
    assert write_buffered(session.transport) <= TRANSPORT_BOUND
    assert session.pending_input <= READ_CHUNK + len(b"EHLO hostile.test\r\n")

    # Once it reads, every command it sent gets its reply: pausing lost nothing.
    session.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                        LARGE_SOCKET_BUFFER)
    hostile.transport.resumeProducing()
    ehlo = b"250-relay.test\r\n250-PIPELINING\r\n250-SIZE 10000\r\n250-8BITMIME\r\n"
    expected = len(b"220 relay.test ESMTP hatwist\r\n") + lines * len(
        ehlo + b"250-ENHANCEDSTATUSCODES\r\n250 SMTPUTF8\r\n")
    await eventually(lambda: hostile.received >= expected, f"{lines} EHLO replies")
    assert hostile.received == expected
    hostile.transport.loseConnection()
    await hostile.lost.addTimeout(DEADLINE, reactor)


@pytest_twisted.ensureDeferred
async def test_a_closed_session_that_never_reads_its_last_reply_is_cut_off_and_frees_its_slot(
        server_for):
    clock = task.Clock()
    server = server_for(clock=clock, idle_timeout=30, junk_command_limit=10**9)
    hostile = NeverReads.connect(server.port.getHost().port)
    await eventually(lambda: server.factory.sessions, "the session is open")
    [session] = server.factory.sessions
    session.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                        SMALL_SOCKET_BUFFER)
    hostile.transport.write(b"EHLO hostile.test\r\n" * 20_000)
    await eventually(lambda: getattr(session, "waiting_for_reader", False)
                     or write_buffered(session.transport) > TRANSPORT_BOUND,
                     "the session stops reading or its buffer grows")
    clock.advance(31)  # idle: 421, but the peer reads nothing, so the close cannot finish
    assert session.transport.disconnecting and server.factory.sessions == {session}
    clock.advance(CLOSE_GRACE)
    await eventually(lambda: not server.factory.sessions, "the session is gone")
    assert (server.factory.admission.listed, server.factory.admission.per_ip(session.peer)) == (
        0, 0)
    hostile.transport.resumeProducing()  # it finds the connection reset
    await hostile.lost.addTimeout(DEADLINE, reactor)


@pytest_twisted.ensureDeferred
async def test_a_session_closed_from_outside_while_paused_answers_nothing_more(server_for):
    """What a shutdown's drain does (loseConnection) to a session paused for its reader:
    the close completes once the peer reads, and the commands still buffered never run."""
    server = server_for(junk_command_limit=10**9)
    hostile = NeverReads.connect(server.port.getHost().port)
    await eventually(lambda: server.factory.sessions, "the session is open")
    [session] = server.factory.sessions
    session.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                        SMALL_SOCKET_BUFFER)
    # One read's worth: the transaction is read with the EHLOs, and waits behind them.
    hostile.transport.write(b"EHLO hostile.test\r\n" * 2000 + b"MAIL FROM:<s@example.org>\r\n"
                            b"RCPT TO:<r@example.net>\r\nDATA\r\nSubject: late\r\n\r\n.\r\n")
    await eventually(lambda: session.waiting_for_reader, "the session stops reading")
    assert b"DATA" in session._buffer[session._at:]
    session.transport.loseConnection()
    hostile.transport.resumeProducing()
    await hostile.lost.addTimeout(DEADLINE, reactor)
    await eventually(lambda: not server.factory.sessions, "the session is gone")
    assert b"354 " not in hostile.data  # the buffered transaction never ran
    assert server.accepted == []


@pytest_twisted.ensureDeferred
async def test_a_60_kb_command_line_in_one_segment_is_refused_and_the_session_closed(
        server_for, tmp_path):
    server = server_for()
    client = await server.connect()
    long_rcpt = b"RCPT TO:<" + b"x" * 60_000 + b"@example.net>\r\n"
    replies = await client.send(b"EHLO me\r\nMAIL FROM:<s@example.org>\r\n" + long_rcpt
                                + b"DATA\r\nSubject: x\r\n\r\n.\r\n", 4)
    assert replies[1:] == ["250 2.1.0 Ok", "500 5.5.2 Error: line too long",
                           "421 4.7.0 relay.test Error: closing connection"]
    await client.lost.addTimeout(DEADLINE, reactor)
    assert server.accepted == []
    assert spooled(tmp_path / "spool") == []


@pytest.mark.parametrize("length, answer", [
    (2048, "250 2.0.0 Ok"), (2049, "500 5.5.2 Error: line too long")])
@pytest_twisted.ensureDeferred
async def test_the_command_line_limit_is_2048_octets_whatever_follows_it(server_for, length,
                                                                        answer):
    client = await server_for().connect()
    line = b"NOOP " + b"x" * (length - 5)
    [reply] = await client.send(line + b"\r\nNOOP\r\n", 1)
    assert reply == answer


@pytest.mark.parametrize("segments", [1, 3000], ids=["one-segment", "many-segments"])
@pytest_twisted.ensureDeferred
async def test_a_message_with_a_line_over_998_octets_is_refused_with_550_560(
        server_for, tmp_path, segments):
    server = server_for()
    server.factory.max_message_size = 2_000_000
    client = await server.connect()
    await client.send(b"EHLO me\r\n" + transaction(b""), 4)
    [session] = server.factory.sessions
    body = b"Subject: long\r\n\r\n" + b"y" * 1_000_000 + b"\r\n"
    step = len(body) // segments + 1
    for start in range(0, len(body), step):
        client.transport.write(body[start:start + step])
    other = await server.connect()  # a round trip: the body has been read by now
    await other.send(b"NOOP\r\n", 1)
    assert session._data.kept == 0  # refused already: none of it is held
    replies = await client.send(b".\r\n", 1)
    assert replies == ["550 5.6.0 Error: message has a line of 1000000 octets; "
                       "at most 998 allowed (RFC 5322 2.1.1)"]
    assert server.accepted == []
    assert spooled(tmp_path / "spool") == []
    # The session goes on; a line of exactly 998 octets is fine.
    await client.send(transaction(b""), 3)
    [reply] = await client.send(b"Subject: ok\r\n\r\n" + b"z" * 998 + b"\r\n.\r\n", 1)
    assert reply.startswith("250 2.0.0 Ok: queued as ")


@pytest_twisted.ensureDeferred
async def test_noop_does_not_keep_a_session_alive_but_mail_commands_do(server_for):
    clock = task.Clock()
    client = await server_for(clock=clock, idle_timeout=30).connect()
    await client.send(b"EHLO me\r\n", 1)
    clock.advance(20)
    await client.send(b"MAIL FROM:<s@example.org>\r\n", 1)  # useful: the timer restarts
    clock.advance(20)
    assert len(client.replies()) == 3
    for _ in range(5):
        await client.send(b"NOOP\r\n", 1)  # junk: the timer goes on
    clock.advance(11)
    assert (await client.until(9))[8] == "421 4.4.2 relay.test Error: timeout exceeded"
    await client.lost.addTimeout(DEADLINE, reactor)


@pytest_twisted.ensureDeferred
async def test_junk_commands_past_the_limit_get_421_and_an_accepted_message_resets_it(
        server_for):
    assert JUNK_COMMAND_LIMIT == 100  # Postfix's smtpd_junk_command_limit
    server = server_for(junk_command_limit=4)
    client = await server.connect()
    assert await client.send(b"EHLO me\r\nNOOP\r\nRSET\r\nVRFY x\r\n", 4) == [
        client.replies()[1], "250 2.0.0 Ok", "250 2.0.0 Ok", "252 2.0.0 Cannot VRFY user"]
    await client.send(transaction(b""), 3)
    [reply] = await client.send(b"Subject: a\r\n\r\nb\r\n.\r\n", 1)
    assert reply.startswith("250 2.0.0 Ok: queued")
    # Counted again from the accepted message on: four more, then the fifth closes.
    assert await client.send(b"NOOP\r\nNOOP\r\nEHLO again\r\nXYZZY\r\n", 4) == [
        "250 2.0.0 Ok", "250 2.0.0 Ok", client.replies()[1], "500 5.5.2 Error: command not "
        "recognized"]
    assert await client.send(b"NOOP\r\nNOOP\r\n", 1) == [
        "421 4.7.0 relay.test Error: too many junk commands"]
    await client.lost.addTimeout(DEADLINE, reactor)
    assert len(server.accepted) == 1


INSIDE = ipaddress.ip_network("127.0.0.0/28")  # .1 .2 .3 inside; .77 .78 outside


@pytest_twisted.ensureDeferred
async def test_idle_peers_outside_relay_from_never_take_the_slots_of_those_inside(server_for):
    assert (MAX_SESSIONS_PER_IP, MAX_SESSIONS_UNLISTED) == (10, 5)
    server = server_for(relay_from=(INSIDE,), max_sessions=3, max_sessions_per_ip=2,
                        max_sessions_unlisted=2)
    outsiders = [await server.connect(source) for source in ("127.0.0.77", "127.0.0.78")]
    pool_full = "421 4.3.2 relay.test Error: too many connections from outside relay_from"
    refused = await server.connect("127.0.0.79", greeting=pool_full)
    await refused.lost.addTimeout(DEADLINE, reactor)
    # The outsiders hold their own small pool; all three inside slots are still free.
    first = await server.connect("127.0.0.1")
    await server.connect("127.0.0.1")
    per_ip = "421 4.7.0 relay.test Error: too many connections from your address"
    refused = await server.connect("127.0.0.1", greeting=per_ip)
    await refused.lost.addTimeout(DEADLINE, reactor)
    legit = await server.connect("127.0.0.2")
    await server.connect("127.0.0.3", greeting="421 4.3.2 relay.test Error: too many connections")
    assert (server.factory.admission.listed, server.factory.admission.unlisted) == (3, 2)
    # Mail flows from inside meanwhile.
    await legit.send(b"EHLO me\r\n" + transaction(b""), 4)
    [reply] = await legit.send(b"Subject: a\r\n\r\nb\r\n.\r\n", 1)
    assert reply.startswith("250 2.0.0 Ok: queued")
    # Freed slots are reused, each by its own pool.
    for client in (first, outsiders[0]):
        await client.send(b"QUIT\r\n", 1)
        await client.lost.addTimeout(DEADLINE, reactor)
    await server.connect("127.0.0.3")
    await server.connect("127.0.0.79")
    assert (server.factory.admission.listed, server.factory.admission.unlisted) == (3, 2)


def test_admission_counts_per_pool_and_per_address_and_frees_what_it_took():
    admission, limits = Admission(), Limits(max_sessions=2, max_per_ip=1, max_unlisted=1)
    a, b, c = (ipaddress.ip_address(f"192.0.2.{n}") for n in (1, 2, 3))
    assert admission.check(limits, a, True) is None
    admission.add(a, True)
    assert admission.check(limits, a, True).enhanced == "4.7.0"
    assert admission.check(limits, b, False) is None
    admission.add(b, False)
    assert admission.check(limits, c, False).enhanced == "4.3.2"
    assert admission.check(limits, c, True) is None
    admission.remove(a, True)
    admission.remove(b, False)
    assert (admission.listed, admission.unlisted, admission.per_ip(a)) == (0, 0, 0)
