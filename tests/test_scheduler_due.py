"""
Tests for hatwist.scheduler._due: one timer for every part waiting for its due time.

Unit tests drive a DueHeap on a task.Clock; the last test checks the scheduler keeps
one timer in the reactor however many messages wait for their retry.
"""

from __future__ import annotations

import attrs
from twisted.internet import task

from hatwist.scheduler import _due
from hatwist.scheduler._due import DueHeap
from hatwist.scheduler._queues import Part
from tests.test_scheduler_support import START, World


@attrs.define(eq=False)
class _Entry:
    name: str


def part(name: str, due: float, domain: str = "dst.test") -> Part:
    return Part(_Entry(name), ("default", domain), due)


class Heap:
    def __init__(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(START)
        self.handed: list[list[str]] = []
        self.heap = DueHeap(self.clock, lambda parts: self.handed.append(
            [p.entry.name for p in parts]))

    def names(self) -> list[str]:
        return [name for batch in self.handed for name in batch]


def test_a_thousand_waiting_parts_keep_one_timer_and_come_due_in_order():
    h = Heap()
    for i in range(1000):
        h.heap.push(part(f"p{i}", START + 1 + (i * 7919) % 1000, domain=f"d{i % 10}.test"))
    assert len(h.clock.getDelayedCalls()) == 1
    while h.clock.getDelayedCalls():
        h.clock.advance(h.clock.getDelayedCalls()[0].getTime() - h.clock.seconds())
    assert sorted(h.names()) == sorted(f"p{i}" for i in range(1000))
    dues = {f"p{i}": START + 1 + (i * 7919) % 1000 for i in range(1000)}
    assert [dues[n] for n in h.names()] == sorted(dues.values())


def test_a_part_comes_due_exactly_at_its_time_not_before():
    h = Heap()
    h.heap.push(part("late", START + 100))
    h.heap.push(part("early", START + 10))  # moves the one timer earlier
    assert [c.getTime() for c in h.clock.getDelayedCalls()] == [START + 10]
    h.clock.advance(9.9)
    assert h.names() == []
    h.clock.advance(0.1)
    assert h.names() == ["early"]
    h.clock.advance(89.9)
    assert h.names() == ["early"]
    h.clock.advance(0.1)
    assert h.names() == ["early", "late"]
    assert h.clock.getDelayedCalls() == []


def test_parts_due_at_the_same_moment_come_in_the_order_they_were_added():
    h = Heap()
    for name in ("c", "a", "b"):
        h.heap.push(part(name, START + 5))
    h.clock.advance(5)
    assert h.names() == ["c", "a", "b"]


def test_a_discarded_part_never_comes_due_and_the_next_one_still_does():
    h = Heap()
    first, second = part("first", START + 10), part("second", START + 20)
    h.heap.push(first)
    h.heap.push(second)
    DueHeap.discard(first)
    assert h.heap.head(("default", "dst.test")) is second
    h.clock.advance(20)
    assert h.names() == ["second"]
    assert not DueHeap.waiting(second)


def test_a_part_pushed_again_comes_due_once_at_its_new_time():
    h = Heap()
    p = part("p", START + 10)
    h.heap.push(p)
    p.due = START + 30  # taken out and put back with a later time
    h.heap.push(p)
    h.clock.advance(10)
    assert h.names() == []
    h.clock.advance(20)
    assert h.names() == ["p"]


def test_head_is_the_earliest_part_of_each_queue():
    h = Heap()
    h.heap.push(part("x2", START + 20, "x.test"))
    h.heap.push(part("x1", START + 10, "x.test"))
    h.heap.push(part("y1", START + 5, "y.test"))
    assert h.heap.head(("default", "x.test")).entry.name == "x1"
    assert h.heap.head(("default", "y.test")).entry.name == "y1"
    assert h.heap.head(("default", "z.test")) is None


def test_a_mass_retry_is_handed_out_over_several_reactor_turns(monkeypatch):
    monkeypatch.setattr(_due, "MAX_DUE_PER_TURN", 10)
    h = Heap()
    for i in range(25):
        h.heap.push(part(f"p{i}", START + 60, domain=f"d{i % 2}.test"))
    h.clock.advance(60)  # task.Clock runs the zero-delay follow-ups in the same advance
    assert [len(batch) for batch in h.handed] == [10, 10, 5], "three timer calls, not one"
    assert sorted(h.names()) == sorted(f"p{i}" for i in range(25))


def test_stop_cancels_the_timer_and_hands_out_nothing_more():
    h = Heap()
    h.heap.push(part("p", START + 10))
    h.heap.stop()
    assert h.clock.getDelayedCalls() == []
    h.heap.push(part("q", START + 10))
    h.clock.advance(10)
    assert h.names() == []


def test_messages_waiting_for_their_retry_keep_one_timer_in_the_reactor():
    w = World()
    w.scheduler.startService()
    for i in range(50):
        w.submit(rcpt_to=(f"u{i}@d{i}.test",))
    for i in range(50):
        w.agent.answer(i, 451, "4.7.1 later")
    assert len(w.clock.getDelayedCalls()) == 1
    w.clock.advance(60)
    assert len(w.agent.calls) == 100
    w.scheduler.stopService()
    for _, d in w.agent.pending():
        d.cancel()
    w.clock.advance(60)
    assert not w.clock.getDelayedCalls()


# -- a reload's retime, a slice a turn ------------------------------------------------------


def test_a_retime_runs_a_slice_a_turn_and_a_queue_takes_its_new_times_together(monkeypatch):
    monkeypatch.setattr(_due, "RETIME_PER_TURN", 10)
    h = Heap()
    parts = [part(f"p{i}", START + 600, domain=f"d{i % 2}.test") for i in range(30)]
    for p in parts:
        h.heap.push(p)
    d = h.heap.retime(lambda p: START + 60, lambda key: key[1] == "d0.test")
    assert not d.called  # 15 parts of d0.test: more than one turn's 10
    assert {p.due for p in parts} == {START + 600}  # none yet: the queue changes at once
    late = part("late", START + 30, domain="d0.test")  # failed meanwhile: new policy's time
    h.heap.push(late)
    h.clock.advance(0)
    assert d.called
    assert {p.due for p in parts[0::2]} == {START + 60}  # d0.test
    assert {p.due for p in parts[1::2]} == {START + 600}  # d1.test was not changed
    h.clock.advance(30)
    assert h.names() == ["late"]
    h.clock.advance(30)
    assert sorted(h.names()) == sorted(["late", *(p.entry.name for p in parts[0::2])])


def test_a_part_taken_out_during_a_retime_stays_out_and_a_second_retime_takes_over(
        monkeypatch):
    monkeypatch.setattr(_due, "RETIME_PER_TURN", 10)
    h = Heap()
    parts = [part(f"p{i}", START + 600, domain=f"d{i % 2}.test") for i in range(40)]
    for p in parts:
        h.heap.push(p)
    first = h.heap.retime(lambda p: START + 60, lambda key: True)
    h.heap.discard(parts[0])  # delivered, held or deleted meanwhile
    second = h.heap.retime(lambda p: START + 90, lambda key: False)  # changed nothing itself
    h.clock.advance(0)
    assert first.called and second.called
    assert {p.due for p in parts[1:]} == {START + 90}  # the first one's queues, newest times
    h.clock.advance(90)
    assert "p0" not in h.names() and len(h.names()) == 39


def test_stop_cancels_a_retime_under_way(monkeypatch):
    monkeypatch.setattr(_due, "RETIME_PER_TURN", 10)
    h = Heap()
    for i in range(30):
        h.heap.push(part(f"p{i}", START + 600))
    d = h.heap.retime(lambda p: START + 60, lambda key: True)
    h.heap.stop()
    assert d.called and h.clock.getDelayedCalls() == []
