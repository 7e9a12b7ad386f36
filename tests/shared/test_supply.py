"""hatwist.shared._supply.CreditSupply on task.Clock, with the questions answered by hand."""

from __future__ import annotations

import itertools

from twisted.internet import defer, task

from hatwist.config.values import Throttle
from hatwist.shared._credits import usable
from hatwist.shared._supply import CreditSupply

KEY = ("b1", "example.com")
BIG = Throttle(10**6, 3600)


class Rig:
    def __init__(self, busy=False):
        self.clock = task.Clock()
        self.busy = busy
        self.questions: list[tuple[list, list, defer.Deferred]] = []
        self.released: list[tuple[tuple, list]] = []
        self.failures = []
        self.supply = CreditSupply(
            self.clock, self.question, lambda key, ids: self.released.append((key, ids)),
            self.failures.append, lambda key: "throttle:" + ":".join(key),
            (f"n:{i}" for i in itertools.count(1)),
        )

    def question(self, script, keys, args):
        if self.busy:
            return None
        d = defer.Deferred()
        self.questions.append((keys, args, d))
        return d

    def demand(self, starts):
        """``starts`` starts asked of Redis (no credit held) at the clock's time."""
        for _ in range(starts):
            self.supply.asked(KEY, BIG, self.clock.seconds())


def test_credits_are_asked_with_demand_and_taken_then_the_rest_given_back():
    rig = Rig()
    rig.demand(5)
    [(keys, args, d)] = rig.questions  # one question at a time
    assert keys == ["throttle:b1:example.com"]
    assert args[:3] == [BIG.messages, BIG.seconds, 1]  # asked at the second start
    d.callback(1)
    assert rig.supply.take(KEY, BIG, 0.0) == "n:1+1"
    rig.demand(3)
    keys, args, d = rig.questions[-1]
    d.callback(args[2])  # all granted
    granted = args[2]
    assert granted > 1
    assert rig.supply.take(KEY, BIG, 0.1) == f"{args[4]}+1"
    rig.clock.advance(usable(BIG))  # the rest expire unused: back in one ZREM
    assert rig.released == [(KEY, [f"{args[4]}+{i}" for i in range(2, granted + 1)])]
    assert rig.clock.getDelayedCalls() == []


def test_a_question_not_sent_leaves_the_queue_free_to_ask_again():
    rig = Rig(busy=True)
    rig.demand(3)
    rig.busy = False
    rig.demand(1)
    assert len(rig.questions) == 1  # not stuck "asking" after the refused send


def test_a_failed_question_is_reported_and_grants_nothing():
    rig = Rig()
    rig.demand(2)
    rig.questions[0][2].errback(ConnectionError("gone"))
    assert len(rig.failures) == 1
    assert rig.supply.take(KEY, BIG, 0.0) is None
    rig.demand(1)
    assert len(rig.questions) == 2


def test_a_stop_gives_back_what_is_held_and_keeps_no_timer():
    rig = Rig()
    rig.demand(3)
    rig.questions[0][2].callback(2)
    assert rig.clock.getDelayedCalls()
    held = rig.supply.stop()
    assert held == [("throttle:b1:example.com", "n:1+1"), ("throttle:b1:example.com", "n:1+2")]
    assert [c for c in rig.clock.getDelayedCalls() if c.active()] == []
