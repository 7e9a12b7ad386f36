"""
ILimits.unstart: a start the agent held for want of a plumbed proxy leaves the throttle
window, in this process (LocalLimits) and in the fleet's (RedisLimits, against a real
redis-server on loopback).  The scheduler's use of it is pinned in
tests/test_scheduler_semantics.py.
"""

from __future__ import annotations

import pytest_twisted

from hatwist.config.values import Throttle
from hatwist.shared import LocalLimits, Refusal
from tests.shared.conftest import nodes, redis_server  # noqa: F401  (the fixtures)
from tests.shared.test_redis import KEY, ask, sleep


def test_a_local_start_given_back_frees_its_place_in_the_window():
    limits = LocalLimits()
    throttle = Throttle(2, 3600)
    first = limits.start(KEY, throttle, 10, 100.0).lease
    limits.start(KEY, throttle, 10, 101.0)
    assert limits.start(KEY, throttle, 10, 102.0).refusal is Refusal.THROTTLE
    limits.unstart(first)
    limits.finish(first)
    assert limits.start(KEY, throttle, 10, 103.0).granted
    assert limits.start(KEY, throttle, 10, 104.0).refusal is Refusal.THROTTLE


@pytest_twisted.ensureDeferred
async def test_a_start_given_back_leaves_the_fleets_window(reactor, nodes):  # noqa: F811
    a, b = nodes.start("a"), nodes.start("b")
    throttle = Throttle(2, 3600)
    first = (await ask(a, throttle=throttle)).lease
    assert (await ask(b, throttle=throttle)).granted
    assert (await ask(b, throttle=throttle)).refusal is Refusal.THROTTLE
    a.unstart(first)
    a.finish(first)

    # The ZREM rides with a's next batch (within 50 ms): then b finds the place free.
    for _ in range(40):
        if (await ask(b, throttle=throttle)).granted:
            break
        await sleep(reactor, 0.05)
    else:
        raise AssertionError("the start given back still counts in Redis")
    assert (await ask(a, throttle=throttle)).refusal is Refusal.THROTTLE
