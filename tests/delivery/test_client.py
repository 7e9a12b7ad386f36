"""Tests for hatwist.delivery.client: sessions against a real SMTP sink on loopback.

Deadline tests give the session a ``task.Clock`` for its deadlines while the sockets run on
the real reactor, and advance the clock only once the situation under test is established,
so nothing here waits for time to pass.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, task

from hatwist.config import TLSMode
from hatwist.delivery import (
    ConnectFailed,
    ConnectionLostDuringSession,
    Envelope,
    GreetingRejected,
    NoGreeting,
    SessionTimeout,
    UnexpectedReply,
    open_session,
)
from tests.rig.haproxy import free_port
from tests.rig.sink import END_OF_DATA, SILENT

from .test_client_support import (
    EHLO_NAME,
    LimitedMX,
    NeverConnects,
    ReportingEndpoint,
    ScriptedServer,
    esmtp_answers,
    failure_of,
    open_to,
    tcp,
    within,
)

CHUNK = 16 * 1024  # twisted.mail's FileSender chunk, where its dot-stuffing broke


async def _session(reactor, sink, **kwargs):
    return await within(reactor, open_to(reactor, tcp(reactor, sink.host, sink.port), **kwargs))


async def _send(reactor, session, envelope, content):
    return await within(reactor, session.send(envelope, content))


def _codes(results):
    return [(r.address, r.code, r.kind) for r in results]


# -- content on the wire -----------------------------------------------------------------------


def _dot_lines_at(offsets: list[int], total: int) -> bytes:
    """CRLF content with a lone "." line starting exactly at each offset, and a smuggled
    command after each, so a dot that escapes stuffing would show as a second message."""
    content = bytearray()
    for offset in offsets:
        filler = offset - len(content)
        assert filler >= 2
        # Lines of up to 998 octets, the last ending right before the offset.
        while filler > 0:
            line = min(filler, 998)
            if filler - line == 1:
                line -= 1
            content += b"x" * (line - 2) + b"\r\n"
            filler -= line
        assert len(content) == offset
        content += b".\r\nMAIL FROM:<smuggled@evil.test>\r\n"
    while len(content) < total:
        content += b"y" * 70 + b"\r\n"
    return bytes(content)


@pytest_twisted.ensureDeferred
async def test_dot_lines_at_chunk_boundaries_arrive_unchanged(reactor, smtp_sink):
    content = b".\r\n..\r\n" + _dot_lines_at(
        [CHUNK, 2 * CHUNK, 4 * CHUNK, 5 * CHUNK - 3], 6 * CHUNK
    )
    content += b".\r\n"  # and a dot line at the very end
    session = await _session(reactor, smtp_sink)
    [result] = await _send(reactor, session, Envelope("a@client.test", ["b@mx.test"]), content)
    assert result.kind == "delivered"
    await within(reactor, session.quit())
    [message] = smtp_sink.messages
    assert message.data == content
    assert [c for c in smtp_sink.sessions[0].commands if c.startswith("MAIL")] == [
        f"MAIL FROM:<a@client.test> SIZE={len(content)}"
    ]


@pytest.mark.parametrize(
    ("content", "arrives"),
    [
        (b"Subject: x\r\n\r\nbody\r\n", b"Subject: x\r\n\r\nbody\r\n"),
        (b"Subject: x\n\nbody\n.\n", b"Subject: x\r\n\r\nbody\r\n.\r\n"),
        (b"Subject: x\r\rbody\r", b"Subject: x\r\n\r\nbody\r\n"),
        (b"mixed\r\nlf\ncr\rend", b"mixed\r\nlf\r\ncr\r\nend\r\n"),
        (b"", b""),
    ],
)
@pytest_twisted.ensureDeferred
async def test_line_endings_arrive_as_crlf(reactor, smtp_sink, content, arrives):
    session = await _session(reactor, smtp_sink)
    await _send(reactor, session, Envelope("a@client.test", ["b@mx.test"]), content)
    await within(reactor, session.quit())
    assert smtp_sink.messages[0].data == arrives


@pytest_twisted.ensureDeferred
async def test_eight_bit_content_is_declared_when_the_peer_offers_8bitmime(reactor, smtp_sink):
    session = await _session(reactor, smtp_sink)
    await _send(reactor, session, Envelope("", ["b@mx.test"]), b"caf\xc3\xa9\r\n")
    await within(reactor, session.quit())
    assert "MAIL FROM:<> SIZE=7 BODY=8BITMIME" in smtp_sink.sessions[0].commands


# -- per-recipient results ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_each_recipient_gets_its_own_result(reactor, smtp_sink):
    smtp_sink.recipient_replies["later@mx.test"] = (451, "4.2.1 mailbox busy")
    smtp_sink.recipient_replies["gone@mx.test"] = (550, "5.1.1 no such user")
    session = await _session(reactor, smtp_sink)
    envelope = Envelope("a@client.test", ["ok@mx.test", "later@mx.test", "gone@mx.test"])
    results = await _send(reactor, session, envelope, b"hi\r\n")
    await within(reactor, session.quit())
    assert _codes(results) == [
        ("ok@mx.test", 250, "delivered"),
        ("later@mx.test", 451, "temporary"),
        ("gone@mx.test", 550, "permanent"),
    ]
    assert results[2].response == "5.1.1 no such user"
    assert smtp_sink.messages[0].rcpt_tos == ("ok@mx.test",)


def _without_pipelining(sink) -> None:
    sink.extensions = [e for e in sink.extensions if e != "PIPELINING"]


@pytest.mark.parametrize(("code", "kind"), [(451, "temporary"), (553, "permanent")])
@pytest_twisted.ensureDeferred
async def test_refused_sender_decides_every_recipient(reactor, smtp_sink, code, kind):
    smtp_sink.replies["MAIL"] = (code, "sender refused")
    session = await _session(reactor, smtp_sink)
    results = await _send(reactor, session, Envelope("a@client.test", ["b@x", "c@x"]), b"hi")
    await within(reactor, session.quit())
    assert _codes(results) == [("b@x", code, kind), ("c@x", code, kind)]
    assert smtp_sink.messages == []
    # Pipelined, RCPT and DATA went out with MAIL (and were refused by the sink); no
    # content ever follows.
    assert smtp_sink.sessions[0].commands[1:] == [
        "MAIL FROM:<a@client.test> SIZE=2",
        "RCPT TO:<b@x>",
        "RCPT TO:<c@x>",
        "DATA",
        "QUIT",
    ]


@pytest.mark.parametrize(("code", "kind"), [(451, "temporary"), (553, "permanent")])
@pytest_twisted.ensureDeferred
async def test_refused_sender_without_pipelining_ends_the_transaction_at_mail(
    reactor, smtp_sink, code, kind
):
    _without_pipelining(smtp_sink)
    smtp_sink.replies["MAIL"] = (code, "sender refused")
    session = await _session(reactor, smtp_sink)
    results = await _send(reactor, session, Envelope("a@client.test", ["b@x", "c@x"]), b"hi")
    await within(reactor, session.quit())
    assert _codes(results) == [("b@x", code, kind), ("c@x", code, kind)]
    assert not any(c.startswith(("RCPT", "DATA")) for c in smtp_sink.sessions[0].commands)


@pytest_twisted.ensureDeferred
async def test_final_reply_decides_the_accepted_recipients_only(reactor, smtp_sink):
    smtp_sink.recipient_replies["gone@x"] = (550, "5.1.1 no such user")
    smtp_sink.replies[END_OF_DATA] = (554, "5.6.0 content refused")
    session = await _session(reactor, smtp_sink)
    results = await _send(reactor, session, Envelope("a@x", ["ok@x", "gone@x"]), b"hi")
    await within(reactor, session.quit())
    assert _codes(results) == [("ok@x", 554, "permanent"), ("gone@x", 550, "permanent")]
    assert results[0].response == "5.6.0 content refused"


@pytest_twisted.ensureDeferred
async def test_refused_data_command_decides_the_accepted_recipients(reactor, smtp_sink):
    smtp_sink.replies["DATA"] = (451, "4.3.0 not now")
    session = await _session(reactor, smtp_sink)
    results = await _send(reactor, session, Envelope("a@x", ["ok@x"]), b"hi")
    await within(reactor, session.quit())
    assert _codes(results) == [("ok@x", 451, "temporary")]
    assert smtp_sink.messages == []


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-at-a-time"])
@pytest_twisted.ensureDeferred
async def test_no_accepted_recipient_sends_no_content_and_keeps_the_session(
    reactor, smtp_sink, pipelining
):
    if not pipelining:
        _without_pipelining(smtp_sink)
    smtp_sink.recipient_replies["gone@x"] = (550, "5.1.1 no")
    session = await _session(reactor, smtp_sink)
    first = await _send(reactor, session, Envelope("a@x", ["gone@x"]), b"one")
    second = await _send(reactor, session, Envelope("a@x", ["ok@x"]), b"two")
    await within(reactor, session.quit())
    assert _codes(first) == [("gone@x", 550, "permanent")]
    assert _codes(second) == [("ok@x", 250, "delivered")]
    assert [m.data for m in smtp_sink.messages] == [b"two\r\n"]
    # Pipelined, DATA went out with the group and the sink refused it ("no valid
    # recipients"); one at a time, DATA is never sent.
    first_data = ["DATA"] if pipelining else []
    assert smtp_sink.sessions[0].commands[1:] == [
        "MAIL FROM:<a@x> SIZE=3",
        "RCPT TO:<gone@x>",
        *first_data,
        "RSET",
        "MAIL FROM:<a@x> SIZE=3",
        "RCPT TO:<ok@x>",
        "DATA",
        "QUIT",
    ]


@pytest_twisted.ensureDeferred
async def test_non_ascii_address_without_smtputf8_fails_permanently_unsent(reactor, smtp_sink):
    session = await _session(reactor, smtp_sink)
    results = await _send(reactor, session, Envelope("a@x", ["jos\u00e9@x"]), b"hi")
    await within(reactor, session.quit())
    assert _codes(results) == [("jos\u00e9@x", 553, "permanent")]
    assert "5.6.7" in results[0].response
    assert not any(c.startswith("MAIL") for c in smtp_sink.sessions[0].commands)


@pytest_twisted.ensureDeferred
async def test_pipelining_sends_mail_rcpt_and_data_without_waiting(reactor):
    # This peer answers nothing before DATA arrives: a client that waits for each reply
    # (no pipelining) never gets there.
    mx = LimitedMX(100, hold_until_data=True)
    server = await _scripted(reactor, b"220 peer.test ready\r\n", mx)
    try:
        session = await within(reactor, open_to(reactor, tcp(reactor, *server.address)))
        envelope = Envelope("a@x", ["b@x", "c@x"])
        results = await _send(reactor, session, envelope, b"hi\r\n")
        again = await _send(reactor, session, Envelope("a@x", ["d@x"]), b"again\r\n")
        await within(reactor, session.quit())
    finally:
        await server.stop()
    assert _codes(results) == [("b@x", 250, "delivered"), ("c@x", 250, "delivered")]
    assert _codes(again) == [("d@x", 250, "delivered")]
    assert mx.messages == [((b"b@x", b"c@x"), (b"hi",)), ((b"d@x",), (b"again",))]


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-at-a-time"])
@pytest_twisted.ensureDeferred
async def test_too_many_recipients_go_in_further_transactions(reactor, pipelining):
    mx = LimitedMX(2, pipelining=pipelining)
    server = await _scripted(reactor, b"220 peer.test ready\r\n", mx)
    rcpts = [f"r{n}@x" for n in range(5)]
    try:
        session = await within(reactor, open_to(reactor, tcp(reactor, *server.address)))
        results = await _send(reactor, session, Envelope("a@x", rcpts), b"hi\r\n")
        assert session.is_open
        await within(reactor, session.quit())
    finally:
        await server.stop()
    assert _codes(results) == [(r, 250, "delivered") for r in rcpts]
    assert [m[0] for m in mx.messages] == [
        (b"r0@x", b"r1@x"),
        (b"r2@x", b"r3@x"),
        (b"r4@x",),
    ]
    assert all(m[1] == (b"hi",) for m in mx.messages)
    # Without pipelining, no RCPT is spent beyond the limit once it was reached.
    rcpt_lines = [line for line in server.lines if line.startswith(b"RCPT")]
    assert len(rcpt_lines) == (5 + 3 + 1 if pipelining else 3 + 3 + 1)


@pytest_twisted.ensureDeferred
async def test_session_lost_in_a_further_transaction_keeps_the_delivered_results(reactor):
    mx = LimitedMX(2)
    mx.drop_at_transaction = 1  # the second MAIL gets EOF
    server = await _scripted(reactor, b"220 peer.test ready\r\n", mx)
    rcpts = ["r0@x", "r1@x", "r2@x"]
    try:
        session = await within(reactor, open_to(reactor, tcp(reactor, *server.address)))
        results = await _send(reactor, session, Envelope("a@x", rcpts), b"hi\r\n")
        await within(reactor, session.when_closed())
    finally:
        await server.stop()
    assert _codes(results) == [
        ("r0@x", 250, "delivered"),
        ("r1@x", 250, "delivered"),
        ("r2@x", 451, "temporary"),
    ]
    assert "connection lost during MAIL" in results[2].response
    assert not session.is_open


@pytest_twisted.ensureDeferred
async def test_closing_reply_mid_transaction_decides_everyone_and_ends_the_session(
    reactor, smtp_sink
):
    smtp_sink.recipient_replies["c@x"] = (421, "4.7.0 too many errors, closing")
    session = await _session(reactor, smtp_sink)
    results = await _send(reactor, session, Envelope("a@x", ["b@x", "c@x", "d@x"]), b"hi")
    assert not session.is_open  # at once: a pool must not lend it out again
    await within(reactor, session.when_closed())
    assert [(r.code, r.kind) for r in results] == [(421, "temporary")] * 3
    assert smtp_sink.messages == []


@pytest_twisted.ensureDeferred
async def test_message_over_the_peers_size_limit_is_refused_unsent(reactor, smtp_sink):
    smtp_sink.extensions = ["SIZE 10", "PIPELINING"]
    session = await _session(reactor, smtp_sink)
    results = await _send(reactor, session, Envelope("a@x", ["b@x"]), b"x" * 11)
    await within(reactor, session.quit())
    assert _codes(results) == [("b@x", 552, "permanent")]
    assert "5.3.4" in results[0].response
    assert not any(c.startswith("MAIL") for c in smtp_sink.sessions[0].commands)


# -- reuse -------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_five_messages_travel_over_one_session_with_rset_between(reactor, smtp_sink):
    session = await _session(reactor, smtp_sink)
    for n in range(5):
        [result] = await _send(reactor, session, Envelope("a@x", [f"r{n}@x"]), b"m%d\r\n" % n)
        assert result.kind == "delivered"
    assert session.messages_sent == 5
    assert session.is_open
    await within(reactor, session.quit())
    assert not session.is_open
    [sink_session] = smtp_sink.sessions
    assert sink_session.helo == EHLO_NAME
    assert [m.data for m in smtp_sink.messages] == [b"m%d\r\n" % n for n in range(5)]
    verbs = [c.split(" ")[0] for c in sink_session.commands]
    assert verbs == ["EHLO"] + ["MAIL", "RCPT", "DATA", "RSET"] * 4 + ["MAIL", "RCPT", "DATA"] + [
        "QUIT"
    ]
    await within(reactor, smtp_sink.wait_closed())


@pytest_twisted.ensureDeferred
async def test_sends_made_together_run_in_call_order(reactor, smtp_sink):
    session = await _session(reactor, smtp_sink)
    sends = [session.send(Envelope("a@x", ["b@x"]), b"n%d" % n) for n in range(3)]
    closed = session.quit()
    results = await within(reactor, defer.gatherResults(sends))
    await within(reactor, closed)
    assert [r[0].kind for r in results] == ["delivered"] * 3
    assert [m.data for m in smtp_sink.messages] == [b"n0\r\n", b"n1\r\n", b"n2\r\n"]
    assert len(smtp_sink.sessions) == 1


# -- failures of the session ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_drop_mid_data_fails_the_message_and_closes_the_session(reactor, smtp_sink):
    smtp_sink.drop_in_data = True
    session = await _session(reactor, smtp_sink)
    error = await failure_of(reactor, session.send(Envelope("a@x", ["b@x"]), b"x\r\n" * 100))
    assert isinstance(error, ConnectionLostDuringSession)
    # The content was written: the final dot's reply was awaited when the peer dropped.
    assert (error.stage, error.temporary) == ("end of data", True)
    await within(reactor, session.when_closed())
    assert not session.is_open
    assert len(smtp_sink.sessions) == 1  # no reconnect, no retry
    late = await failure_of(reactor, session.send(Envelope("a@x", ["b@x"]), b"again"))
    assert isinstance(late, ConnectionLostDuringSession) and late.stage == "idle"
    await within(reactor, session.quit())  # on a dead session: fires, does not hang


@pytest_twisted.ensureDeferred
async def test_silent_banner_is_no_greeting_at_the_deadline(reactor, smtp_sink):
    smtp_sink.greeting = SILENT
    clock = task.Clock()
    endpoint = ReportingEndpoint(tcp(reactor, smtp_sink.host, smtp_sink.port))
    opening = open_to(reactor, endpoint, clock=clock, connect_timeout=30)
    await within(reactor, endpoint.connected)
    clock.advance(29.9)
    assert not opening.called
    clock.advance(0.1)
    error = await failure_of(reactor, opening)
    assert isinstance(error, NoGreeting)
    assert error.temporary and "30s" in error.reason
    await within(reactor, smtp_sink.wait_closed())  # the client closed its transport
    assert clock.getDelayedCalls() == []


async def _scripted(reactor, greeting, answer=esmtp_answers):
    return ScriptedServer(greeting, answer).listen(reactor)


@pytest.mark.parametrize("greeting", [b"", b"220-mx.test first line of many\r\n", b"220 mx"])
@pytest_twisted.ensureDeferred
async def test_eof_before_the_banner_is_no_greeting(reactor, greeting):
    server = await _scripted(reactor, greeting)
    server.close_after_greeting = True
    try:
        error = await failure_of(reactor, open_to(reactor, tcp(reactor, *server.address)))
    finally:
        await server.stop()
    assert isinstance(error, NoGreeting)
    assert error.temporary


@pytest.mark.parametrize(("code", "temporary"), [(554, False), (421, True), (450, True)])
@pytest_twisted.ensureDeferred
async def test_refused_banner_is_greeting_rejected(reactor, smtp_sink, code, temporary):
    smtp_sink.greeting = (code, "5.7.1 not from you")
    error = await failure_of(
        reactor, open_to(reactor, tcp(reactor, smtp_sink.host, smtp_sink.port))
    )
    assert isinstance(error, GreetingRejected)
    assert (error.code, error.temporary) == (code, temporary)
    await within(reactor, smtp_sink.wait_closed())
    if code != 421:  # a 421 peer closes at once; others get a polite QUIT
        assert smtp_sink.sessions[0].commands == ["QUIT"]


@pytest_twisted.ensureDeferred
async def test_refused_ehlo_falls_back_to_helo(reactor, smtp_sink):
    smtp_sink.replies["EHLO"] = (502, "5.5.1 no ESMTP here")
    session = await _session(reactor, smtp_sink)
    [result] = await _send(reactor, session, Envelope("a@x", ["b@x"]), b"hi")
    await within(reactor, session.quit())
    assert result.kind == "delivered"
    assert session.extensions == {}
    assert smtp_sink.sessions[0].commands[:2] == [f"EHLO {EHLO_NAME}", f"HELO {EHLO_NAME}"]


@pytest_twisted.ensureDeferred
async def test_silence_after_mail_is_a_timeout_naming_the_stage(reactor, smtp_sink):
    smtp_sink.replies["MAIL"] = SILENT
    clock = task.Clock()
    session = await _session(reactor, smtp_sink, clock=clock, command_timeout=60)
    sending = session.send(Envelope("a@x", ["b@x"]), b"hi")
    await within(
        reactor, smtp_sink.wait_until(lambda: "MAIL" in str(smtp_sink.sessions[0].commands))
    )
    clock.advance(60)
    error = await failure_of(reactor, sending)
    assert isinstance(error, SessionTimeout)
    assert (error.stage, error.temporary) == ("MAIL", True)
    await within(reactor, smtp_sink.wait_closed())


@pytest_twisted.ensureDeferred
async def test_the_deadline_is_per_command_not_per_message(reactor):
    # smtp_timeout is documented as the deadline of each command: a peer that takes 50 s
    # over MAIL and 50 s over the final dot, with 60 s allowed, delivers.
    held = {b"MAIL": b"250 2.1.0 ok\r\n", b".": b"250 2.0.0 queued\r\n"}
    seen = {verb: defer.Deferred() for verb in held}

    def answer(line):
        verb = line.split(b" ", 1)[0]
        if verb in seen:
            seen[verb].callback(None)
            return b""
        return b"" if verb == b"hi" else esmtp_answers(line)

    server = await _scripted(reactor, b"220 peer.test ready\r\n", answer)
    clock = task.Clock()
    try:
        session = await within(
            reactor,
            open_to(reactor, tcp(reactor, *server.address), clock=clock, command_timeout=60),
        )
        sending = session.send(Envelope("a@x", ["b@x"]), b"hi\r\n")
        for verb, reply in held.items():
            await within(reactor, seen[verb])
            clock.advance(50)
            assert not sending.called
            server.protocols[0].transport.write(reply)
        [result] = await within(reactor, sending)
        assert result.kind == "delivered"
        await within(reactor, session.quit())
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_unanswered_quit_closes_at_the_deadline(reactor, smtp_sink):
    smtp_sink.replies["QUIT"] = SILENT
    clock = task.Clock()
    session = await _session(reactor, smtp_sink, clock=clock, command_timeout=60)
    closing = session.quit()
    await within(reactor, smtp_sink.wait_until(lambda: "QUIT" in smtp_sink.sessions[0].commands))
    assert not closing.called
    clock.advance(60)
    assert await within(reactor, closing) is None
    await within(reactor, smtp_sink.wait_closed())


@pytest_twisted.ensureDeferred
async def test_connect_refused_is_connect_failed(reactor):
    endpoint = ReportingEndpoint(tcp(reactor, "127.0.0.1", free_port("127.0.0.1")))
    error = await failure_of(reactor, open_to(reactor, endpoint))
    assert endpoint.attempts == 1  # no built-in retries
    assert isinstance(error, ConnectFailed)
    assert error.temporary and "refused" in error.reason


@pytest_twisted.ensureDeferred
async def test_connect_deadline_cancels_the_attempt(reactor):
    clock = task.Clock()
    endpoint = NeverConnects()
    opening = open_to(reactor, endpoint, clock=clock, connect_timeout=5)
    clock.advance(5)
    error = await failure_of(reactor, opening)
    assert isinstance(error, ConnectFailed) and "5s" in error.reason
    assert endpoint.cancelled


@pytest_twisted.ensureDeferred
async def test_cancelling_open_session_aborts(reactor, smtp_sink):
    smtp_sink.greeting = SILENT
    endpoint = ReportingEndpoint(tcp(reactor, smtp_sink.host, smtp_sink.port))
    opening = open_to(reactor, endpoint, clock=task.Clock())
    await within(reactor, endpoint.connected)
    opening.cancel()
    with pytest.raises(defer.CancelledError):
        await opening
    await within(reactor, smtp_sink.wait_closed())


@pytest_twisted.ensureDeferred
async def test_reply_that_is_not_smtp_is_unexpected_reply(reactor):
    def answer(line):
        return b"hello there\r\n" if line.startswith(b"EHLO") else esmtp_answers(line)

    server = await _scripted(reactor, b"220 peer.test ready\r\n", answer)
    try:
        error = await failure_of(reactor, open_to(reactor, tcp(reactor, *server.address)))
        await within(reactor, server.wait_closed())
    finally:
        await server.stop()
    assert isinstance(error, UnexpectedReply)
    assert error.stage == "EHLO" and "hello there" in error.reason


@pytest_twisted.ensureDeferred
async def test_refused_rset_is_unexpected_reply(reactor, smtp_sink):
    smtp_sink.replies["RSET"] = (502, "5.5.1 no")
    session = await _session(reactor, smtp_sink)
    await _send(reactor, session, Envelope("a@x", ["b@x"]), b"one")
    error = await failure_of(reactor, session.send(Envelope("a@x", ["b@x"]), b"two"))
    assert isinstance(error, UnexpectedReply) and error.stage == "RSET"
    await within(reactor, session.when_closed())


@pytest_twisted.ensureDeferred
async def test_peer_closing_an_idle_session_is_noticed(reactor):
    def answer(line):
        if line.startswith(b"EHLO"):
            return b"250 peer.test\r\n421 4.4.2 idle too long\r\n"
        return esmtp_answers(line)

    server = await _scripted(reactor, b"220 peer.test ready\r\n", answer)
    try:
        session = await within(reactor, open_to(reactor, tcp(reactor, *server.address)))
        await within(reactor, session.when_closed())
    finally:
        await server.stop()
    assert not session.is_open
    error = await failure_of(reactor, session.send(Envelope("a@x", ["b@x"]), b"hi"))
    assert isinstance(error, ConnectionLostDuringSession) and "421" in error.reason


@pytest_twisted.ensureDeferred
async def test_abort_fails_the_message_in_flight(reactor, smtp_sink):
    smtp_sink.replies["MAIL"] = SILENT
    session = await _session(reactor, smtp_sink)
    sending = session.send(Envelope("a@x", ["b@x"]), b"hi")
    queued = session.send(Envelope("a@x", ["c@x"]), b"hi")
    session.abort()
    for d in (sending, queued):
        error = await failure_of(reactor, d)
        assert isinstance(error, ConnectionLostDuringSession) and error.stage == "MAIL"
    await within(reactor, session.when_closed())
    await within(reactor, smtp_sink.wait_closed())


@pytest.mark.parametrize("name", ["", "two words", "evil\r\nRSET", "caf\u00e9.test"])
def test_ehlo_name_that_would_break_the_command_is_refused(name):
    endpoint = NeverConnects()
    with pytest.raises(ValueError):
        open_session(
            endpoint,
            reactor=task.Clock(),
            ehlo_hostname=name,
            tls=TLSMode.NO,
            tls_hostname=None,
            connect_timeout=1,
            command_timeout=1,
        )
    assert not endpoint.cancelled
