"""
Tests for hatwist.scheduler._bulk (a ``hatwist queue`` action a slice per reactor
turn) with task.Clock, and for the scheduler's bulk actions on the scheduler tests'
World: the reactor turns between slices, a slice's spool writes are done before the
next starts, a message gone meanwhile is not acted on, a client that went away stops
the action.
"""

from __future__ import annotations

import pytest
from twisted.internet import defer, task

from hatwist.scheduler._bulk import SLICE, act_in_slices, kind
from tests.control.test_operations import defer_all, fired
from tests.test_scheduler_support import World, running


def by_id(chunk):
    return [(i, i) for i in chunk]


def recorder():
    slices = []

    def act(selected):
        slices.append(selected)
        return [(i, "held") for i, _ in selected]

    return slices, act


def test_one_slice_per_reactor_turn_and_the_counts_of_all():
    clock = task.Clock()
    slices, act = recorder()
    ids = [f"m{n}" for n in range(600)]
    d = act_in_slices(act, ids, by_id, report=lambda _: None, reactor=clock, size=256)
    assert [len(s) for s in slices] == [256] and not d.called  # the rest after a turn
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0)  # (task.Clock runs the calls it schedules meanwhile: both turns)
    summary = fired(d)
    assert [len(s) for s in slices] == [256, 256, 88]
    assert (summary.matched, summary.counts, summary.stopped) == (600, {"held": 600}, False)


def test_a_lone_slice_runs_in_the_callers_turn():
    slices, act = recorder()
    summary = fired(act_in_slices(act, ["a", "b"], lambda c: [(i, None) for i in c],
                                  report=lambda _: None, reactor=task.Clock()))
    assert slices == [[("a", None), ("b", None)]] and summary.matched == 2


def test_the_next_slice_waits_for_the_last_ones_work_and_its_reader():
    clock = task.Clock()
    work, reading, seen = [], [], []

    def act(selected):
        seen.append(len(selected))
        work.append(defer.Deferred())
        return work[-1].addCallback(lambda _: [(i, "deleted") for i, _ in selected])

    def report(outcomes):
        reading.append(defer.Deferred())
        return reading[-1]

    d = act_in_slices(act, list(range(20)), by_id, report=report, reactor=clock, size=10)
    clock.advance(1)
    assert seen == [10] and not reading  # its spool writes are not done yet
    work[0].callback(None)
    clock.advance(1)
    assert seen == [10] and len(reading) == 1  # the client has not read them yet
    reading[0].callback(True)
    clock.advance(0)
    assert seen == [10, 10]
    work[1].callback(None)
    reading[1].callback(True)
    assert fired(d).counts == {"deleted": 20}


def test_a_reader_that_went_away_stops_the_action_between_slices():
    clock = task.Clock()
    slices, act = recorder()
    d = act_in_slices(act, list(range(30)), by_id, report=lambda _: False,
                      reactor=clock, size=10)
    clock.advance(0)
    clock.advance(0)
    summary = fired(d)
    assert len(slices) == 1 and (summary.matched, summary.stopped) == (10, True)


def test_each_slice_picks_its_messages_when_it_runs_and_an_empty_pick_acts_on_none():
    clock = task.Clock()
    queued = {n: f"entry{n}" for n in range(6)}
    slices, act = recorder()

    def pick(chunk):
        return [(n, queued[n]) for n in chunk if n in queued]

    d = act_in_slices(act, list(range(6)), pick, report=lambda _: None, reactor=clock, size=2)
    del queued[3]  # delivered before its slice ran
    del queued[4], queued[5]
    clock.advance(0)
    assert slices == [[(0, "entry0"), (1, "entry1")], [(2, "entry2")]]
    assert fired(d).matched == 3


def test_an_outcome_counts_by_its_kind():
    assert kind("bounced (DSN to <a@b.test>)") == "bounced"
    assert kind("held (its attempt in flight ends first)") == "held"
    assert kind("not in the queue") == "not in the queue"


# -- the scheduler's bulk actions -----------------------------------------------------------


class SlowWrites(World):
    """A World whose spool writes wait until the test lets them finish."""

    def __init__(self):
        super().__init__()
        self.writes = []
        update = self.spool.update

        def slow(message):
            d = defer.Deferred()
            self.writes.append(d)
            return d.addCallback(lambda _: update(message))

        self.spool.update = slow

    def finish_writes(self):
        waiting, self.writes = self.writes, []
        for d in waiting:
            d.callback(None)


@pytest.fixture
def world():
    yield from running(SlowWrites())


def queued(world, count, domains=1):
    """``count`` messages (to ``one.test``, or to ``d0.test``... over ``domains``), each
    deferred once and waiting for its retry."""
    for n in range(count):
        domain = "one.test" if domains == 1 else f"d{n % domains}.test"
        world.submit(rcpt_to=(f"r{n}@{domain}",))
    world.clock.advance(0)
    defer_all(world)
    world.clock.advance(0)
    world.finish_writes()  # the deferrals' own saves


def held(world) -> int:
    return sum(1 for e in world.scheduler._ledger.entries() if e.held)


def test_a_filtered_hold_of_many_holds_a_slice_a_turn_after_its_writes(world):
    count = SLICE + 44
    queued(world, count)
    outcomes = []
    d = world.scheduler.stream_action("hold", domain="one.test", report=outcomes.extend)
    assert held(world) == SLICE and len(world.writes) == SLICE
    world.clock.advance(0)
    assert held(world) == SLICE  # the first slice's writes are not done
    world.finish_writes()
    world.clock.advance(0)
    assert held(world) == count
    world.finish_writes()
    summary = fired(d)
    assert (summary.matched, summary.counts) == (count, {"held": count})
    assert len(outcomes) == count and {o for _, o in outcomes} == {"held"}
    [line] = [e for e in world.events if e.get("action") == "hold"]
    assert "by the operator" in line["log_format"]
    assert line["matched"] == count and line["done"] == f"held {count}"


def test_a_message_bounced_before_its_slice_is_left_out_and_none_is_acted_on_twice(world):
    queued(world, SLICE + 1)
    last = f"m{SLICE + 1}"
    outcomes = []
    d = world.scheduler.stream_action("delete", domain="one.test", report=outcomes.extend)
    fired(world.scheduler.act_on_messages("bounce", (last,)))
    world.clock.advance(0)
    summary = fired(d)
    assert last not in {i for i, _ in outcomes}
    assert (summary.matched, summary.counts) == (SLICE, {"deleted": SLICE})
    assert len({i for i, _ in outcomes}) == len(outcomes)


def test_a_release_by_filter_releases_each_held_message_once(world):
    """A release gives a message new parts, in the queues the candidates were copied
    from: it is still released once."""
    count = SLICE + 10
    queued(world, count)
    holding = world.scheduler.act_on_messages("hold", tuple(f"m{n}" for n in range(1, 101)))
    world.finish_writes()
    fired(holding)
    outcomes = []
    d = world.scheduler.stream_action("release", domain="one.test", report=outcomes.extend)
    for _ in range(10):
        world.finish_writes()
        world.clock.advance(0)
    summary = fired(d)
    released = [i for i, o in outcomes if o == "released"]
    assert len(released) == len(set(released)) == 100
    assert summary.counts == {"released": 100, "not held": count - 100}


def test_after_a_bulk_hold_the_stale_parts_on_a_line_are_dropped_a_budget_a_turn(world):
    """The held messages' parts stay on their queue's line until their turn: one pump
    must not drop a third of a million of them in one reactor turn."""
    from hatwist.scheduler._dispatch import PUMP_BUDGET

    count = PUMP_BUDGET + 500
    for n in range(count + 2):
        world.submit(rcpt_to=(f"r{n}@one.test",))
    world.clock.advance(0)
    running = len(world.agent.pending())  # max_connections of them; the rest wait in line
    [queue] = list(world.scheduler._board)
    assert len(queue.ready) == count + 2 - running
    waiting = tuple(e.message.id for e in world.scheduler._ledger.entries()
                    if not any(o.id == e.message.id for o, _ in world.agent.pending()))
    holding = world.scheduler.act_on_messages("hold", waiting)
    for _ in range(10):
        world.finish_writes()
        world.clock.advance(0)
    fired(holding)
    world.agent.answer(0, 250)  # a slot frees: the pump takes the next parts, all stale
    world.finish_writes()
    assert len(queue.ready) == count + 2 - running - PUMP_BUDGET
    world.clock.advance(0)  # the next turn drops the rest
    assert not queue.ready
    assert len(world.agent.pending()) == running - 1  # and starts nothing held


def test_once_a_turns_budget_is_spent_other_pumps_in_that_turn_wait_for_the_next():
    from hatwist.scheduler._dispatch import PUMP_BUDGET

    world = World()
    dispatch = world.scheduler._dispatch
    dispatch.active = True
    taken = []

    class Stale:
        """A board whose every part is stale: each one taken is dropped."""

        def next(self):
            taken.append(1)
            return None if len(taken) > 5 * PUMP_BUDGET else (_Q, _P)

        def refresh(self, queue):
            pass

    dispatch._board = Stale()
    dispatch._start = lambda part, queue: None
    dispatch.pump()
    assert len(taken) == PUMP_BUDGET
    for _ in range(3):  # three more queues released by their timers in the same turn
        dispatch.pump()
    assert len(taken) == PUMP_BUDGET and len(world.clock.getDelayedCalls()) == 1
    world.clock.advance(0)  # (task.Clock runs the turns the pumps schedule meanwhile)
    assert len(taken) == 5 * PUMP_BUDGET + 1 and not world.clock.getDelayedCalls()


_Q, _P = object(), object()


# -- a filtered list's total, counted over several turns ------------------------------------


def test_a_filtered_lists_total_is_counted_a_slice_a_turn(world, monkeypatch):
    from hatwist.scheduler import _queue_view

    monkeypatch.setattr(_queue_view, "COUNT_SLICE", 10)
    queued(world, 35, domains=3)
    holding = world.scheduler.act_on_messages("hold", ("m1", "m2", "m3"))
    world.finish_writes()
    fired(holding)
    d = world.scheduler.list_messages(binding="default", limit=5)
    assert not d.called and len(world.clock.getDelayedCalls()) >= 1  # the rest next turn
    world.clock.advance(0)
    listing = fired(d)
    assert listing.total == 35 and len(listing.rows) == 5
    held = world.scheduler.list_messages(state="held")
    world.clock.advance(0)
    assert fired(held).total == 3
    everything = world.scheduler.list_messages()
    assert fired(everything).total == 35  # no filter: the ledger's length, at once


def test_a_long_lists_rows_are_made_a_slice_a_turn_and_a_message_gone_meanwhile_is_left_out(
        world, monkeypatch):
    from hatwist.scheduler import _queue_view

    monkeypatch.setattr(_queue_view, "ROW_SLICE", 10)
    queued(world, 30)
    d = world.scheduler.list_messages(limit=25)
    assert not d.called
    fired(world.scheduler.act_on_messages("bounce", ("m20",)))  # gone before its row
    world.clock.advance(0)
    listing = fired(d)
    assert [r["id"] for r in listing.rows] == [f"m{n}" for n in range(1, 26) if n != 20]


def test_a_long_lists_lines_are_written_a_batch_a_turn_and_stop_when_the_client_is_gone():
    from hatwist.control._handler import ROWS_PER_TURN, _write_rows
    from hatwist.control._protocol import Request
    from hatwist.scheduler._queue_view import Listing

    class Answer:
        def __init__(self):
            self.lines, self.turns = [], []

        def __call__(self, data):
            self.lines.append(data)

        def next_turn(self):
            self.turns.append(defer.Deferred())
            return self.turns[-1]

    answer = Answer()
    listing = Listing(tuple({"id": f"m{n}"} for n in range(ROWS_PER_TURN * 2 + 5)), 10**6)
    d = defer.ensureDeferred(_write_rows(listing, Request("list", limit=100_000), answer))
    assert len(answer.lines) == ROWS_PER_TURN and not d.called
    answer.turns[0].callback(True)
    assert len(answer.lines) == 2 * ROWS_PER_TURN
    answer.turns[1].callback(False)  # gone: the last 5 are not written
    assert len(answer.lines) == 2 * ROWS_PER_TURN
    assert fired(d)["total"] == 10**6
