"""hatwist.shared.LocalLimits: today's limits of one process behind ILimits."""

from __future__ import annotations

from zope.interface.verify import verifyObject

from hatwist.config.values import Throttle
from hatwist.shared import ILimits, LocalLimits, RedisLimits, Refusal
from hatwist.throttle import Throttles

KEY = ("b1", "example.com")


def test_both_implementations_provide_ilimits():
    assert verifyObject(ILimits, LocalLimits())
    assert ILimits.implementedBy(RedisLimits)


def test_slots_are_taken_and_given_back():
    limits = LocalLimits()
    leases = [limits.start(KEY, None, 2, 0.0).lease for _ in range(2)]
    refused = limits.start(KEY, None, 2, 0.0)
    assert refused.refusal is Refusal.SLOTS and refused.wait is None
    assert len({lease.id for lease in leases}) == 2
    limits.finish(leases[0])
    assert limits.in_flight(KEY) == 1
    assert limits.start(KEY, None, 2, 0.0).granted


def test_the_throttle_answers_like_the_sliding_log():
    """Same throttle, same times: the same answers and waits as hatwist.throttle."""
    limits, log = LocalLimits(), Throttles()
    throttle = Throttle(3, 10)
    for now in [0.0, 1.0, 2.0, 3.0, 9.0, 10.0, 10.5, 11.0, 12.5, 30.0]:
        decision = limits.start(KEY, throttle, 100, now)
        allowed_at = log.next_start(KEY, throttle, now)
        assert decision.granted == (allowed_at <= now)
        if decision.granted:
            log.record(KEY, throttle, now)
            limits.finish(decision.lease)
        else:
            assert decision.refusal is Refusal.THROTTLE
            assert decision.wait == allowed_at - now


def test_a_refused_start_is_not_counted():
    limits = LocalLimits()
    limits.start(KEY, None, 1, 0.0)
    limits.start(KEY, Throttle(1, 10), 1, 0.0)  # no slot: the throttle must not count it
    limits.finish(limits.start(KEY, None, 2, 0.0).lease)
    assert limits.start(KEY, Throttle(1, 10), 2, 0.0).granted
