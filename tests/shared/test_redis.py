"""hatwist.shared.RedisLimits against a real redis-server on loopback.

Every test starts its own Debian redis-server (tests/shared/redis_server.py) and one or
more limiter instances standing for nodes of a fleet; "node" here means one process's
RedisLimits, which is what a worker or a box runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
import redis
from twisted.internet import defer, task
from twisted.logger import globalLogPublisher

from hatwist.config.values import Throttle
from hatwist.shared import LocalLimits, RedisLimits, Refusal
from tests.shared.redis_server import RedisServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KEY = ("b1", "example.com")


def sleep(reactor, seconds):
    return task.deferLater(reactor, seconds, lambda: None)


async def until(reactor, check, deadline=10.0, step=0.05):
    """Wait for ``check()`` to be true, failing the test after ``deadline`` seconds."""
    waited = 0.0
    while not check():
        if waited > deadline:
            raise AssertionError(f"still not true after {deadline}s: {check}")
        await sleep(reactor, step)
        waited += step


class Nodes:
    """Limiter instances of one test, all stopped at its end."""

    def __init__(self, reactor, url):
        self.reactor, self.url, self.started = reactor, url, []

    def start(self, name, **kwargs):
        kwargs.setdefault("heartbeat", 0.2)
        kwargs.setdefault("timeout", 0.5)
        limits = RedisLimits(self.url, reactor=self.reactor, node_id=name, **kwargs)
        limits.startService()
        self.started.append(limits)
        return limits

    async def stop_all(self):
        for limits in self.started:
            if limits.running:
                await limits.stopService()


async def ask(limits, key=KEY, throttle=None, max_connections=100):
    from twisted.internet import reactor

    return await defer.maybeDeferred(limits.start, key, throttle, max_connections,
                                     reactor.seconds())  # fmt: skip


@pytest.fixture
def shared_log():
    """The text of every hatwist.shared log event of the test."""
    events = []

    def observe(event):
        if event.get("log_namespace") == "hatwist.shared":
            from twisted.logger import formatEvent

            events.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


@pytest_twisted.ensureDeferred
async def test_a_throttle_holds_exactly_across_two_nodes(nodes):
    """10/3600 lets exactly 10 start in total, not 10 per node, even when both nodes
    ask all at once (each decision is one atomic script)."""
    a, b = nodes.start("a"), nodes.start("b")
    throttle = Throttle(10, 3600)
    assert [(await ask(a, throttle=throttle)).granted for _ in range(4)] == [True] * 4
    decisions = await defer.gatherResults(
        [defer.maybeDeferred(n.start, KEY, throttle, 100, 0.0) for _ in range(15) for n in (a, b)]
    )
    granted = [d for d in decisions if d.granted]
    assert len(granted) == 6  # 4 + 6 = 10 in the hour, whichever node asked
    refused = [d for d in decisions if not d.granted]
    assert {d.refusal for d in refused} == {Refusal.THROTTLE}
    # the next start is allowed when the oldest of the 10 leaves the hour
    assert all(3590 < d.wait <= 3600 for d in refused)
    assert (await ask(b, throttle=throttle)).refusal is Refusal.THROTTLE
    # the same questions to two local limiters let 20 start: the difference pinned here
    local = [LocalLimits(), LocalLimits()]
    assert sum(n.start(KEY, throttle, 100, 0.0).granted for _ in range(15) for n in local) == 20


@pytest_twisted.ensureDeferred
async def test_the_window_slides_like_the_local_sliding_log(reactor, nodes):
    """3/1: three start, the fourth waits until the first leaves the second; then one
    more may start, not three (a sliding log, not a fixed window)."""
    a = nodes.start("a")
    throttle = Throttle(3, 1)
    assert (await ask(a, throttle=throttle)).granted
    await sleep(reactor, 0.4)  # the other two start well after the first
    assert [(await ask(a, throttle=throttle)).granted for _ in range(2)] == [True] * 2
    refused = await ask(a, throttle=throttle)
    assert refused.refusal is Refusal.THROTTLE and 0.4 < refused.wait <= 0.6
    await sleep(reactor, refused.wait + 0.02)
    assert (await ask(a, throttle=throttle)).granted
    assert not (await ask(a, throttle=throttle)).granted


@pytest_twisted.ensureDeferred
async def test_a_reloaded_throttle_applies_at_the_next_question_as_locally(nodes):
    """Lowered, it refuses at once; a lowered throttle keeps only its own N starts, so
    raised again it has room: the same answers, in the same order, as the local log."""
    a, local = nodes.start("a"), LocalLimits()
    sequence = [5] * 6 + [2, 5, 5, 5, 5]
    shared = [(await ask(a, throttle=Throttle(n, 3600))).granted for n in sequence]
    alone = [local.start(KEY, Throttle(n, 3600), 100, 0.0).granted for n in sequence]
    assert shared == alone == [True] * 5 + [False, False] + [True] * 3 + [False]


@pytest_twisted.ensureDeferred
async def test_the_window_survives_a_restart_of_the_limiter(nodes):
    throttle = Throttle(3, 3600)
    first = nodes.start("first")
    assert [(await ask(first, throttle=throttle)).granted for _ in range(3)] == [True] * 3
    await first.stopService()
    again = nodes.start("again")  # a new process, the same Redis
    decision = await ask(again, throttle=throttle)
    assert decision.refusal is Refusal.THROTTLE and decision.wait > 3500


@pytest_twisted.ensureDeferred
async def test_slots_are_fleet_wide_and_given_back_after_a_linger(reactor, nodes):
    a, b = nodes.start("a", linger=0.3), nodes.start("b")
    held = [await ask(a, max_connections=3), await ask(b, max_connections=3),
            await ask(a, max_connections=3)]  # fmt: skip
    assert all(d.granted for d in held)
    refused = await ask(b, max_connections=3)
    assert refused.refusal is Refusal.SLOTS and refused.wait > 0
    a.finish(held[0].lease)
    given_back = reactor.seconds()
    while not (await ask(b, max_connections=3)).granted:
        await sleep(reactor, 0.02)
    assert 0.25 < reactor.seconds() - given_back < 1.0  # a kept it idle for its linger


@pytest_twisted.ensureDeferred
async def test_an_unthrottled_start_takes_back_a_lingering_slot_without_asking(nodes):
    a = nodes.start("a")
    first = await ask(a, max_connections=1)
    a.finish(first.lease)
    again = a.start(KEY, None, 1, 0.0)  # no Deferred: Redis is not asked
    assert not isinstance(again, defer.Deferred) and again.lease == first.lease
    a.finish(again.lease)
    # a throttled start must ask Redis (the window is the fleet's); the idle slot is
    # released in the same pipeline, just before, so the question finds it free
    throttled = a.start(KEY, Throttle(5, 60), 1, 0.0)
    assert isinstance(throttled, defer.Deferred)
    decision = await throttled
    assert decision.granted and decision.lease != first.lease


@pytest_twisted.ensureDeferred
async def test_the_heartbeat_renews_leases_and_a_killed_node_frees_its_slots(
    reactor, redis_server, nodes
):
    """A node holding both slots is killed with SIGKILL: while it lived its heartbeat kept
    the leases (longer than their ttl), and within a ttl of its death they are free."""
    ttl = 1.0
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.shared._node", redis_server.url, "doomed", str(ttl),
         "0.2", *KEY, "2", "2"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = await defer.Deferred.fromCoroutine(_readline(reactor, child))
        assert line.strip() == "held 2"
        other = nodes.start("other")
        await sleep(reactor, 2 * ttl)  # leases renewed past their ttl
        assert (await ask(other, max_connections=2)).refusal is Refusal.SLOTS
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=5)
        killed_at = reactor.seconds()
        while not (await ask(other, max_connections=2)).granted:
            assert reactor.seconds() - killed_at < ttl + 1.0, "the dead node's slots stay taken"
            await sleep(reactor, 0.05)
        assert (await ask(other, max_connections=2)).granted  # both of them
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


async def _readline(reactor, child):
    from twisted.internet import threads

    return await threads.deferToThread(child.stdout.readline)


@pytest_twisted.ensureDeferred
async def test_noscript_falls_back_to_eval(redis_server, nodes):
    """A Redis that lost its script cache (restart, SCRIPT FLUSH) still answers."""
    a = nodes.start("a")
    assert (await ask(a, throttle=Throttle(1, 3600))).granted
    redis.Redis.from_url(redis_server.url).script_flush()
    assert (await ask(a, throttle=Throttle(1, 3600))).refusal is Refusal.THROTTLE
    assert a.up


@pytest_twisted.ensureDeferred
async def test_redis_killed_then_local_shares_then_recovery(
    reactor, tmp_path, redis_server, nodes, shared_log
):
    """Redis dies mid-run: each of the two nodes delivers under half of each limit
    (logged once, not per message), the fleet's throttle count stays at 10 over the
    outage, and when a new (empty) redis-server starts on the same port the nodes share
    again, telling it what they started alone, so the hour still holds only 10."""
    throttle = Throttle(10, 3600)
    a, b = nodes.start("a"), nodes.start("b")
    await until(reactor, lambda: a.nodes == 2 and b.nodes == 2)
    for _ in range(2):
        decision = await ask(a, throttle=throttle)
        a.finish(decision.lease)
    await until(reactor, lambda: a._pending == 0)

    redis_server.kill()
    alone_a = [await ask(a, throttle=throttle) for _ in range(8)]
    alone_b = [await ask(b, throttle=throttle) for _ in range(8)]
    assert not a.up and not b.up
    # a's share is 10 // 2 = 5 per hour, 2 of them already used through Redis; b's is 5
    assert sum(d.granted for d in alone_a) == 3
    assert sum(d.granted for d in alone_b) == 5
    assert all(d.refusal is Refusal.THROTTLE for d in alone_a + alone_b if not d.granted)
    # slots: max_connections 4 is 2 per node while alone
    slots = [await ask(a, key=("b1", "slots.example"), max_connections=4) for _ in range(3)]
    assert [d.granted for d in slots] == [True, True, False]
    assert slots[2].refusal is Refusal.SLOTS
    went = [line for line in shared_log if "does not answer" in line]
    assert len(went) == 2  # once per node, not once per question
    assert "divided by the 2 nodes" in went[0]

    RedisServer(redis_server.directory, redis_server.port).start()  # the fixture stops it
    await until(reactor, lambda: a.up and b.up)
    back = [line for line in shared_log if "answers again" in line]
    assert len(back) == 2
    # the new Redis knows the 8 starts made alone; with the 2 of before (a's journal
    # replays them too) the hour is full for the fleet
    assert (await ask(b, throttle=throttle)).refusal is Refusal.THROTTLE
    assert (await ask(a, throttle=throttle)).refusal is Refusal.THROTTLE
    # the two slots a took alone are counted in Redis too: 4 - 2 leave b two
    await sleep(reactor, 0.5)  # a heartbeat renews them into the new Redis
    more = [await ask(b, key=("b1", "slots.example"), max_connections=4) for _ in range(3)]
    assert [d.granted for d in more] == [True, True, False]


@pytest_twisted.ensureDeferred
async def test_a_slot_given_back_counts_for_a_start_asked_in_the_same_turn(nodes):
    """Release and start travel in one pipeline, in order: the start gets the slot."""
    a = nodes.start("a")
    held = await ask(a, max_connections=1)
    a.finish(held.lease)
    assert (await ask(a, max_connections=1)).granted


@pytest_twisted.ensureDeferred
async def test_questions_waiting_for_redis_are_bounded(reactor, nodes):
    a = nodes.start("a", max_pending=3, heartbeat=30)
    await until(reactor, lambda: a._pending == 0)  # the first heartbeat is back
    decisions = await defer.gatherResults(
        [defer.maybeDeferred(a.start, ("b1", f"d{i}.example"), None, 5, 0.0) for i in range(5)]
    )
    assert [d.granted for d in decisions] == [True] * 3 + [False] * 2
    assert {d.refusal for d in decisions[3:]} == {Refusal.BUSY}
    assert all(0 < d.wait < 1 for d in decisions[3:])


@pytest_twisted.ensureDeferred
async def test_nodes_are_counted_by_their_heartbeats_and_leave_at_stop(reactor, nodes):
    a, b, c = nodes.start("a"), nodes.start("b"), nodes.start("c")
    await until(reactor, lambda: a.nodes == 3)
    # b gives one slot back just before it stops, and holds another: both are free after
    # the stop, long before their lease would expire
    given_back, held = await ask(b, max_connections=2), await ask(b, max_connections=2)
    assert held.granted
    b.finish(given_back.lease)
    await b.stopService()
    assert [(await ask(a, max_connections=2)).granted for _ in range(3)] == [True, True, False]
    await c.stopService()
    await until(reactor, lambda: a.nodes == 1)
