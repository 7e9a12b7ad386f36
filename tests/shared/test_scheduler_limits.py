"""The scheduler asking limits that answer later (RedisLimits' shape), on task.Clock.

An answer travels while the reactor goes on: the part holds its queue's place
meanwhile (two attempts never start for one slot), a refusal waits as long as the
limits say, an answer that comes after a stop gives its lease back, and every attempt
gives its lease back when it ends.
"""

from __future__ import annotations

import pytest
from twisted.internet import defer
from zope.interface import implementer

from hatwist.shared import Decision, ILimits, Lease, Refusal
from tests.test_scheduler_support import World, running


@implementer(ILimits)
class HeldLimits:
    """Every question waits until the test answers it."""

    def __init__(self):
        self.questions: list[tuple[tuple, defer.Deferred]] = []
        self.finished: list[Lease] = []
        self._n = 0

    def start(self, key, throttle, max_connections, now):
        d = defer.Deferred()
        self.questions.append(((key, throttle, max_connections, now), d))
        return d

    def finish(self, lease):
        self.finished.append(lease)

    def next_start(self, key, throttle, now):
        return now

    def open(self):
        return [d for _, d in self.questions if not d.called]

    def grant(self, d):
        self._n += 1
        d.callback(Decision.grant(Lease(("default", "dst.test"), f"n:{self._n}")))


@pytest.fixture
def world():
    limits = HeldLimits()
    w = World(limits=limits)
    w.limits = limits
    yield from running(w)


def test_a_question_in_flight_holds_its_slot(world):
    w = world
    for i in range(5):
        w.submit(rcpt_to=(f"u{i}@dst.test",))
    # max_connections = 2: two questions out, nothing started, the rest wait their turn
    assert len(w.limits.open()) == 2 and w.agent.calls == []
    (key, throttle, max_connections, _), _ = w.limits.questions[0]
    assert (key, throttle, max_connections) == (("default", "dst.test"), None, 2)
    for d in w.limits.open():
        w.limits.grant(d)
    assert len(w.agent.calls) == 2 and w.limits.open() == []  # both slots busy now
    w.agent.answer(0, 250)
    assert w.limits.finished == [Lease(("default", "dst.test"), "n:1")]
    assert len(w.limits.open()) == 1  # the slot it freed is asked for again
    w.limits.grant(w.limits.open()[0])
    assert len(w.agent.calls) == 3


def test_a_throttle_refusal_waits_the_time_the_limits_give(world):
    w = world
    w.submit()
    [d] = w.limits.open()
    d.callback(Decision.refuse(Refusal.THROTTLE, 30.0))
    assert w.agent.calls == [] and w.limits.open() == []
    w.clock.advance(29.9)
    assert w.limits.open() == []
    w.clock.advance(0.1)
    [d] = w.limits.open()
    w.limits.grant(d)
    assert len(w.agent.calls) == 1
    assert any("outbound_throttle_messages" in e.get("log_format", "") for e in w.events)


def test_a_slot_taken_elsewhere_is_asked_for_again_after_the_wait(world):
    w = world
    w.submit()
    w.limits.open()[0].callback(Decision.refuse(Refusal.SLOTS, 0.25))
    w.clock.advance(0.2)
    assert w.limits.open() == []
    w.clock.advance(0.05)
    w.limits.grant(w.limits.open()[0])
    assert len(w.agent.calls) == 1


def test_an_answer_after_the_stop_gives_its_lease_back(world):
    w = world
    w.submit()
    [d] = w.limits.open()
    stopping = w.scheduler.stopService()
    w.limits.grant(d)
    assert w.agent.calls == []
    assert [lease.id for lease in w.limits.finished] == ["n:1"]
    w.clock.advance(60)
    assert stopping.called


def test_a_failed_answer_loses_no_message(world):
    w = world
    message = w.submit()
    w.limits.open()[0].errback(RuntimeError("a bug in the limits"))
    assert message.id in w.spool.messages
    w.clock.advance(60)  # retry_interval
    w.limits.grant(w.limits.open()[0])
    assert [outbound.id for outbound, _ in w.agent.calls] == [message.id]
