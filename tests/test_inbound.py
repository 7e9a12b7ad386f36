"""Tests for hatwist.inbound: the ESMTP listener's sessions, over real loopback sockets
(limits and hostile peers: tests.test_inbound_limits; pure syntax: tests.test_inbound_syntax)."""

from __future__ import annotations

import smtplib

import pytest
import pytest_twisted
from twisted.internet import reactor, task, threads

from hatwist.spool import Spool
from tests._inbound import (
    DEADLINE,
    LIMIT,
    GatedSpool,
    check_enhanced,
    message_content,
    servers_in,
    spooled,
    spooled_content,
    transaction,
)


@pytest.fixture
def server_for(tmp_path):
    yield from servers_in(tmp_path)


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
    content = spooled_content(tmp_path / "spool", message_id)
    assert content.startswith(b"Received: from me ([127.0.0.1])\r\n\tby relay.test (hatwist)")
    assert content.endswith(b"\r\nSubject: test\r\n\r\nline one\r\n.dot-stuffed\r\n")
    assert b"X-Binding" not in content


@pytest_twisted.ensureDeferred
async def test_250_waits_for_the_spool(server_for, tmp_path):
    gated = GatedSpool(Spool(str(tmp_path / "spool"), reactor=reactor,
                             threadpool=server_for.threadpool))
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
                                    "250-8BITMIME", "250-ENHANCEDSTATUSCODES", "250 SMTPUTF8"]
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
    # Nothing to wait for in DATA: a full round trip on another session instead.
    other = await server.connect()
    await other.send(b"NOOP\r\n", 1)
    assert session._data.size > LIMIT
    assert session._data.kept == 0  # past the limit, nothing of it is held
    replies = await client.send(b".\r\nNOOP\r\n", 2)
    assert replies == ["552 5.3.4 Message size exceeds fixed limit", "250 2.0.0 Ok"]
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
    # 220, EHLO, MAIL, RCPT, 354, 550 and the closing 421: nothing smuggled.
    assert client.replies()[5:] == [f"550 5.5.2 Error: bare <{kind}> received",
                                    "421 4.7.0 relay.test Error: closing connection"]
    assert server.accepted == []


@pytest_twisted.ensureDeferred
async def test_bare_lf_after_a_command_is_refused(server_for):
    client = await server_for().connect()
    # RFC 5321 section 3.8 and RFC 7504: a server that closes says so with a 421.
    assert await client.send(b"NOOP\n", 2) == ["550 5.5.2 Error: bare <LF> received",
                                               "421 4.7.0 relay.test Error: closing connection"]
    await client.lost.addTimeout(DEADLINE, reactor)


@pytest.mark.parametrize("headers, binding", [
    (b"Subject: a\r\n", "default"),
    (b"X-Binding: b2\r\nSubject: a\r\n", "b2"),
    (b"Subject: a\r\nx-binding:\r\n  b2\r\n", "b2"),
    # Canonical from submission on (the config's names are lower case), so B2 and b2
    # share one throttle window and one connection limit.
    (b"X-Binding: B2\r\nSubject: a\r\n", "b2"),
    (b"X-Binding : b2\r\nSubject: a\r\n", "b2"),  # WSP before the colon (RFC 5322 4.5.8)
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


@pytest.mark.parametrize("headers, answer", [
    (b"X-Binding: nope\r\n", '550 5.7.1 Unknown binding "nope"'),
    (b"X-Binding: b2\r\nX-Binding: b2\r\n", "550 5.7.1 Error: more than one X-Binding header"),
    (b"X-Binding:\r\n", "550 5.7.1 Error: empty X-Binding header"),
    (b"X-Binding: b2 b3\r\n", '550 5.7.1 Error: malformed X-Binding header "b2?b3"'),
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


@pytest.mark.parametrize("command, answer", [
    (b"RCPT TO:<a\x00b@example.net>",
     "501 5.1.3 Bad recipient address syntax: control character in address"),
    (b"RCPT TO:<a@" + b"l" * 64 + b".example.net>",
     "501 5.1.3 Bad recipient address syntax: DNS label over 63 octets"),
    (b"RCPT TO:<" + b"l" * 65 + b"@example.net>",
     "501 5.1.3 Bad recipient address syntax: local part over 64 octets"),
    (b"RCPT TO:<a@" + b".".join([b"d" * 60] * 5) + b">",
     "501 5.1.3 Bad recipient address syntax: domain over 255 octets"),
])
@pytest_twisted.ensureDeferred
async def test_a_recipient_that_could_never_be_delivered_is_refused_at_rcpt(server_for,
                                                                            command, answer):
    server = server_for()
    client = await server.connect()
    replies = await client.send(b"EHLO me\r\nMAIL FROM:<s@example.org>\r\n" + command
                                + b"\r\nRCPT TO:<ok@example.net>\r\n", 4)
    assert replies[2:] == [answer, "250 2.1.5 Ok"]


@pytest_twisted.ensureDeferred
async def test_a_sender_with_a_control_character_is_refused_at_mail(server_for):
    client = await server_for().connect()
    replies = await client.send(b"EHLO me\r\nMAIL FROM:<s\x01@example.org>\r\n", 2)
    assert replies[1] == "501 5.1.7 Bad sender address syntax: control character in address"


@pytest.mark.parametrize("options, delivered_to", [
    ({}, "postmaster@relay.test"),  # like Postfix's null client: @ this host's name
    ({"postmaster_address": "hostmaster@example.net"}, "hostmaster@example.net"),
])
@pytest_twisted.ensureDeferred
async def test_bare_postmaster_is_accepted_and_relayed_to_postmaster_address(
        server_for, options, delivered_to):
    """RFC 5321 section 4.5.1: RCPT TO:<Postmaster> MUST be accepted."""
    server = server_for(**options)
    client = await server.connect()
    replies = await client.send(b"EHLO me\r\nMAIL FROM:<s@example.org>\r\n"
                                b"RCPT TO:<Postmaster>\r\nDATA\r\n", 4)
    assert replies[2:] == ["250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>"]
    [reply] = await client.send(b"Subject: help\r\n\r\nhi\r\n.\r\n", 1)
    assert reply.startswith("250 2.0.0")
    [message] = server.accepted
    assert [r.address for r in message.recipients] == [delivered_to]
