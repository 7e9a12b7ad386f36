"""Two real ``twistd hatwist`` relays sharing one real redis-server: the end-to-end proof.

Both relays deliver through the same real HAProxy to the same recording sink, each with
its own spool and ports, with ``redis_url`` pointing at a redis-server the test started on
loopback.  Under a fleet-wide ``outbound_throttle_messages = 4/3600`` the sink receives
exactly 4 messages in total, whichever relay the mail was submitted to; without Redis the
same two relays would send 4 each.
"""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet import defer, task

from tests.rig.haproxy import free_port
from tests.service._relay import Relay, config_text, make_message, submit

pytestmark = pytest.mark.integration

SINK_HOST = "127.0.0.20"
SOURCE = "127.0.0.9"
SENDER = "sender@src.test"


async def start_relay(reactor, tmp_path, name, dns, sink, haproxy, extra):
    directory = tmp_path / name
    directory.mkdir()
    listen = free_port()
    text = config_text(
        listen=listen, status_listen=free_port(), spool_dir=str(directory / "spool"),
        resolver=dns.address, proxy=haproxy.server_text, smtp_port=sink.port,
        bindings={"default": SOURCE}, extra=extra,
    )  # fmt: skip
    path = os.path.join(directory, "hatwist.conf")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return await Relay(reactor, path, listen).start()


async def send_many(reactor, relay, prefix, count):
    for i in range(count):
        sent = await submit(reactor, relay.listen_port, SENDER, ["a@dest.test"],
                            make_message(f"{prefix}-{i}@t"))  # fmt: skip
        assert sent.accepted, f"{sent}\n{relay.tail()}"


async def start_fleet_sending(reactor, tmp_path, dns, sink, haproxy, redis_server,
                              throttle, per_relay, relays):
    """Two relays sharing ``redis_server`` under ``throttle`` (appended to ``relays`` as
    they start, for the caller to stop), each sent ``per_relay`` messages at once."""
    dns.add_mx("dest.test", [(10, "mx.dest.test")])
    dns.add_a("mx.dest.test", SINK_HOST)
    extra = f'redis_url = "{redis_server.url}"\noutbound_throttle_messages = "{throttle}"\n'
    for name in ("one", "two"):
        relays.append(await start_relay(reactor, tmp_path, name, dns, sink, haproxy, extra))
    await defer.gatherResults(
        [defer.ensureDeferred(send_many(reactor, r, n, per_relay))
         for r, n in zip(relays, ("one", "two"), strict=True)]
    )  # fmt: skip


@pytest_twisted.ensureDeferred
async def test_two_relays_sharing_redis_start_exactly_the_fleets_throttle(
    reactor, tmp_path, dns_server, smtp_sink, haproxy, redis_server
):
    relays = []
    try:
        await start_fleet_sending(reactor, tmp_path, dns_server, smtp_sink, haproxy,
                                  redis_server, "4/3600", 6, relays)
        # each relay says its queue waits for the window once the fleet used it up
        for relay in relays:
            await relay.wait_for_log("outbound_throttle_messages 4/3600 reached", 20, since=0)
        await task.deferLater(reactor, 2.0, lambda: None)  # nothing more trickles out
        assert len(smtp_sink.messages) == 4, [r.tail() for r in relays]
        assert all(m.peer[0] == SOURCE for m in smtp_sink.messages)
    finally:
        for relay in relays:
            await relay.stop()


@pytest_twisted.ensureDeferred
async def test_two_busy_relays_using_credits_still_start_exactly_the_throttle(
    reactor, tmp_path, dns_server, smtp_sink, haproxy, redis_server
):
    """48/3600 is big enough for credits (3 at a time, hatwist/shared/_credits.py):
    each relay reserves starts ahead while its queue is busy, and the sink still gets
    exactly 48 of the 60 messages, the credits used among them."""
    import redis

    relays = []
    try:
        await start_fleet_sending(reactor, tmp_path, dns_server, smtp_sink, haproxy,
                                  redis_server, "48/3600", 30, relays)
        # 60 > 48: some relay is refused (not necessarily both: one may send all 30)
        await defer.DeferredList(
            [r.wait_for_log("outbound_throttle_messages 48/3600 reached", 30, since=0)
             for r in relays], fireOnOneCallback=True, consumeErrors=True,
        )  # fmt: skip
        waited = 0.0
        while len(smtp_sink.messages) < 48 and waited < 20:
            await task.deferLater(reactor, 0.1, lambda: None)
            waited += 0.1
        await task.deferLater(reactor, 2.0, lambda: None)  # nothing more trickles out
        assert len(smtp_sink.messages) == 48, [r.tail() for r in relays]
        client = redis.Redis.from_url(redis_server.url)
        [key] = client.keys("hatwist:throttle:*")
        members = [m.decode() for m in client.zrange(key, 0, -1)]
        client.close()
        assert len(members) == 48
        assert any("+" in m for m in members), members  # started from credits
    finally:
        for relay in relays:
            await relay.stop()
