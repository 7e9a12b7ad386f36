"""Hostile submitters against ``twistd hatwist`` as operators run it (hatwist.inbound, tap).

The relay is a real child process configured with the inbound limit keys; the hostile
peers are real loopback connections from other 127.0.0.0/8 addresses, outside
``relay_from``; legitimate mail goes out through the real HAProxy to the recording sink.
Each test asserts the bound as a count of sessions or replies, and that legitimate mail
flows meanwhile (RSS is measured by bench/bench_inbound_hostile.py, not here).
"""

from __future__ import annotations

import email
import re

import pytest
import pytest_twisted
from twisted.internet import endpoints

from tests._inbound import Client
from tests.service._relay import make_message
from tests.service.test_relay import DEFAULT_SOURCE, SENDER

pytestmark = pytest.mark.integration

DEADLINE = 20.0
HOSTNAME = "mx.hatwist.test"
LIMITS = f"""\
hostname = {HOSTNAME}
max_inbound_connections = 4
max_inbound_connections_per_ip = 2
max_inbound_connections_unlisted = 3
inbound_junk_command_limit = 10
"""



async def connect(reactor, port: int, source: str) -> tuple[Client, str]:
    """A raw SMTP client from ``source``, and the first reply it got."""
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=(source, 0))
    client = await endpoints.connectProtocol(endpoint, Client()).addTimeout(DEADLINE, reactor)
    return client, (await client.until(1))[0]


async def close(reactor, clients) -> None:
    for client in clients:
        client.transport.loseConnection()
        await client.lost.addTimeout(DEADLINE, reactor)


@pytest_twisted.ensureDeferred
async def test_idle_outsiders_hold_only_their_own_pool_and_mail_flows_meanwhile(rig, reactor):
    await rig.start_relay(relay_from="127.0.0.1/32", extra=LIMITS)
    held, banners = [], []
    for n in range(8):  # eight idle peers outside relay_from, each from its own address
        client, banner = await connect(reactor, rig.listen, f"127.0.0.{77 + n}")
        held.append(client)
        banners.append(banner)
    assert banners[:3] == [f"220 {HOSTNAME} ESMTP hatwist"] * 3
    assert banners[3:] == [f"421 4.3.2 {HOSTNAME} Error: too many connections from outside "
                           "relay_from"] * 5
    # NOOPs do not keep an outsider's session (junk limit 10): the 11th closes it.
    noops = await held[0].send(b"EHLO x\r\n" + b"NOOP\r\n" * 11, 12)
    assert noops[1:] == ["250 2.0.0 Ok"] * 10 + [
        f"421 4.7.0 {HOSTNAME} Error: too many junk commands"]
    await held[0].lost.addTimeout(DEADLINE, reactor)

    # Every slot of relay_from is still free: a submitter gets its mail through.
    sent = await rig.send("legit-1@t")
    await rig.sink.wait_for(1, timeout=DEADLINE)
    [copy] = rig.delivered()["legit-1@t"]
    assert copy.peer[0] == DEFAULT_SOURCE
    received = email.message_from_bytes(copy.data).get_all("Received")
    assert any(f"by {HOSTNAME} (hatwist)" in field for field in received), received
    assert sent
    # One address inside relay_from holds at most two sessions.
    mine = [await connect(reactor, rig.listen, "127.0.0.1") for _ in range(3)]
    assert [banner[:9] for _, banner in mine] == ["220 mx.ha", "220 mx.ha", "421 4.7.0"]
    await close(reactor, held[1:] + [client for client, _ in mine])


@pytest_twisted.ensureDeferred
async def test_an_over_long_command_line_or_message_line_is_refused_and_never_relayed(
        rig, reactor):
    relay = await rig.start_relay(extra=LIMITS)
    client, _ = await connect(reactor, rig.listen, "127.0.0.1")
    replies = await client.send(b"EHLO me\r\nMAIL FROM:<s@src.test>\r\nRCPT TO:<"
                                + b"x" * 60_000 + b"@dest.test>\r\nDATA\r\n", 4)
    assert replies[1:] == ["250 2.1.0 Ok", "500 5.5.2 Error: line too long",
                           f"421 4.7.0 {HOSTNAME} Error: closing connection"]
    await client.lost.addTimeout(DEADLINE, reactor)

    client, _ = await connect(reactor, rig.listen, "127.0.0.1")
    await client.send(b"EHLO me\r\nMAIL FROM:<s@src.test>\r\nRCPT TO:<a@dest.test>\r\n"
                      b"DATA\r\n", 4)
    [reply] = await client.send(b"Message-ID: <long-1@t>\r\n\r\n" + b"y" * 1_000_000
                                + b"\r\n.\r\n", 1)
    assert reply.startswith("550 5.6.0 Error: message has a line of 1000000 octets")
    # The session goes on and the next message flows; the refused one never arrives.
    await client.send(b"MAIL FROM:<s@src.test>\r\nRCPT TO:<a@dest.test>\r\nDATA\r\n", 3)
    [reply] = await client.send(b"Message-ID: <short-1@t>\r\n\r\n" + b"z" * 998
                                + b"\r\n.\r\n", 1)
    assert reply.startswith("250 2.0.0 Ok: queued as ")
    await rig.sink.wait_for(1, timeout=DEADLINE)
    assert list(rig.delivered()) == ["short-1@t"]
    # The submitter was told, and so is the log (its lines come over a pipe of their own:
    # they may trail the sink's message, so wait for them).
    await relay.wait_for_log("accepted ", since=0, timeout=DEADLINE)
    assert relay.lines_with("refused a message from 127.0.0.1: 550 5.6.0 Error: message has a "
                            "line of 1000000 octets")
    assert len(relay.lines_with("accepted ")) == 1
    await close(reactor, [client])


@pytest_twisted.ensureDeferred
async def test_hostname_names_the_bounces_and_bare_postmaster_goes_to_postmaster_address(
        rig, reactor):
    rig.sink.recipient_replies["bad@dest.test"] = (550, "5.1.1 no such user")
    await rig.start_relay(extra=LIMITS + "postmaster_address = pm@dest.test\n")
    sent = await rig.submit(["Postmaster"], make_message("pm-1@t"))
    assert sent.rcpts == ((250, "2.1.5 Ok"),) and sent.accepted, sent
    await rig.send("bounce-1@t", ["bad@dest.test"])
    await rig.sink.wait_until(lambda: len(rig.sink.messages) == 2, timeout=DEADLINE)
    [to_postmaster] = rig.delivered()["pm-1@t"]
    assert to_postmaster.rcpt_tos == ("pm@dest.test",)
    [dsn] = [m for m in rig.sink.messages if m.mail_from == ""]
    assert dsn.rcpt_tos == (SENDER,)
    report = email.message_from_bytes(dsn.data)
    assert report["From"] == f"Mail Delivery System <MAILER-DAEMON@{HOSTNAME}>"
    assert report["Message-ID"].endswith(f"@{HOSTNAME}>")
    [status] = [p for p in report.walk() if p.get_content_type() == "message/delivery-status"]
    assert re.search(rf"Reporting-MTA: dns; {re.escape(HOSTNAME)}\b", status.as_string())
