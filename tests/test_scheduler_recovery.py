"""
Tests for hatwist.scheduler's start and stop: recovery from the spool (in batches), the
shutdown grace, and a restart on the real Spool.
"""

from __future__ import annotations

import gc

import attrs
import pytest_twisted
from twisted.internet import defer, task

from hatwist.config import parse_config
from hatwist.health import ServerRegistry
from hatwist.scheduler import Scheduler
from hatwist.spool import FAILED, PENDING, Spool
from tests.test_scheduler_support import (
    CONFIG,
    START,
    InstantAgent,
    World,
)


def test_recovery_schedules_spooled_messages_at_start():
    w = World()
    due = w.spool.add("default", "a@src.test", ["b@dst.test"], next_attempt_at=START - 10)
    later = w.spool.add("default", "a@src.test", ["c@dst.test"], next_attempt_at=START + 100)
    w.scheduler.startService()
    assert [o.id for o, _ in w.agent.calls] == [due.id]
    w.clock.advance(100)
    assert [o.id for o, _ in w.agent.calls] == [due.id, later.id]
    w.agent.answer(0, 250)
    w.agent.answer(1, 250)
    assert w.spool.messages == {}
    w.scheduler.stopService()


def test_recovered_message_with_nothing_pending_is_bounced_and_removed():
    w = World()
    message = w.spool.add("default", "a@src.test", ["b@dst.test"])
    failed = attrs.evolve(message.recipients[0], status=FAILED, code=550, reason="5.1.1 gone")
    w.spool.messages[message.id] = attrs.evolve(message, recipients=(failed,))
    w.scheduler.startService()
    assert message.id in w.spool.removed
    assert len(w.spool.stored) == 1
    w.scheduler.stopService()
    w.clock.advance(10)


def test_message_finished_during_recovery_is_not_recovered():
    w = World()
    listing = defer.Deferred()
    w.spool.recover = lambda: listing
    w.scheduler.startService()
    message = w.submit()
    snapshot = [w.spool.messages[message.id]]  # what recovery read from the directory
    w.agent.answer(0, 250)
    listing.callback(snapshot)
    assert len(w.agent.calls) == 1
    assert w.spool.removed == [message.id]
    # Not even tried again (which would only find it gone from the spool):
    assert not [e for e in w.events if "gone from the spool" in e["log_format"]]
    w.scheduler.stopService()


def test_stop_waits_for_in_flight_attempts():
    w = World()
    w.scheduler.startService()
    message = w.submit()
    stopping = w.scheduler.stopService()
    assert not stopping.called
    w.agent.answer(0, 250)
    assert stopping.called
    assert w.spool.removed == [message.id]
    assert not w.clock.getDelayedCalls()


def test_stop_cancels_attempts_after_grace_and_leaves_mail_spooled():
    w = World()
    w.scheduler.startService()
    message = w.submit()
    stopping = w.scheduler.stopService()
    w.clock.advance(9.9)
    assert not stopping.called
    w.clock.advance(0.1)
    assert stopping.called
    assert w.agent.cancelled == 1
    assert w.spool.messages[message.id].recipients[0].status == PENDING
    assert w.spool.messages[message.id].recipients[0].attempts == 0
    assert not w.clock.getDelayedCalls()


def test_stop_starts_nothing_new():
    w = World()
    w.scheduler.startService()
    w.submit(rcpt_to=("a@dst.test",))
    w.submit(rcpt_to=("b@dst.test",))
    w.submit(rcpt_to=("c@dst.test",))  # waits for a slot
    stopping = w.scheduler.stopService()
    w.agent.answer(0, 250)
    w.agent.answer(1, 250)
    assert stopping.called
    assert len(w.agent.calls) == 2
    assert len(w.spool.messages) == 1


@pytest_twisted.inlineCallbacks
def test_real_spool_state_survives_restart(tmp_path):
    from twisted.internet import reactor

    clock = task.Clock()
    config = parse_config(CONFIG)
    registry = ServerRegistry((), success_threshold=1, failure_threshold=1)
    spool = Spool(str(tmp_path), reactor=reactor, threadpool=reactor.getThreadPool())

    def scheduler(agent):
        return Scheduler(spool=spool, agent=agent, config_provider=lambda: config,
                         registry=registry, reactor=clock, reporting_mta="relay.test")

    message = yield spool.store("default", "a@src.test", ["b@dst.test"], b"Subject: x\r\n\r\n")
    clock.advance(message.received_at)  # the real Spool stamps messages with real time
    first = scheduler(InstantAgent(451))
    first.startService()
    first.submit(message)
    assert first.in_flight() == 1
    yield first.stopService().addTimeout(10, reactor)
    [saved] = yield spool.recover().addTimeout(10, reactor)
    assert saved.recipients[0].attempts == 1
    assert saved.next_attempt_at > clock.seconds()

    agent = InstantAgent(250)
    second = scheduler(agent)
    second.startService()
    yield second.when_recovered().addTimeout(10, reactor)
    assert agent.calls == []  # not due yet
    clock.advance(60)
    assert second.in_flight() == 1
    yield second.stopService().addTimeout(10, reactor)  # waits for the attempt and its state
    assert [o.id for o in agent.calls] == [message.id]
    left = yield spool.recover().addTimeout(10, reactor)
    assert left == []
    assert not clock.getDelayedCalls()


class BatchFeed:
    """A spool's ``recover_batches`` that the test drives: it hands the batches over
    itself, one call at a time, like a read that is still going on."""

    def __init__(self, spool):
        self.spool = spool
        self.on_batch = None
        self.reading = defer.Deferred(lambda _: setattr(self, "cancelled", True))
        self.cancelled = False
        spool.recover_batches = self.recover_batches
        # A scheduler that read the spool in one go would get everything at once:
        spool.recover = lambda: defer.succeed(sorted(spool.messages.values(),
                                                     key=lambda m: m.id))

    def recover_batches(self, on_batch, *, batch_size=10_000):
        self.on_batch = on_batch
        return self.reading

    def feed(self, *messages):
        if self.on_batch is not None:  # None: the scheduler never asked for batches
            self.on_batch(list(messages))


def test_recovery_delivers_the_first_batch_while_the_rest_is_still_being_read():
    w = World()
    listed = [w.spool.add("default", "a@src.test", [f"u{i}@d{i}.test"]) for i in range(3)]
    feed = BatchFeed(w.spool)
    w.scheduler.startService()
    recovered = w.scheduler.when_recovered()
    feed.feed(*listed[:2])
    assert sorted(o.id for o, _ in w.agent.calls) == [m.id for m in listed[:2]]
    assert not recovered.called
    w.agent.answer(0, 250)  # delivered before the read is over
    assert w.spool.removed == [listed[0].id]
    feed.feed(listed[2])
    feed.reading.callback(3)
    assert recovered.called
    assert len(w.agent.calls) == 3
    [line] = [e for e in w.events if "spooled messages recovered" in e["log_format"]]
    assert line["count"] == 3
    for i in (1, 2):
        w.agent.answer(i, 250)
    w.scheduler.stopService()


def test_a_stop_during_recovery_takes_no_more_batches_and_does_not_wait_for_the_read():
    w = World()
    listed = [w.spool.add("default", "a@src.test", [f"u{i}@d{i}.test"]) for i in range(3)]
    feed = BatchFeed(w.spool)
    w.scheduler.startService()
    feed.feed(listed[0])
    w.agent.answer(0, 250)
    stopping = w.scheduler.stopService()
    assert stopping.called, "the rest of the spool is read at the next start"
    assert feed.cancelled
    feed.feed(*listed[1:])  # a spool that reads on regardless
    assert len(w.agent.calls) == 1
    assert not [e for e in w.events if "left spooled" in e["log_format"] + str(e.get("outcome"))]
    assert [m.id for m in w.spool.messages.values()] == [m.id for m in listed[1:]]
    assert not w.clock.getDelayedCalls()



def test_what_recovery_read_is_frozen_out_of_the_garbage_collector_until_the_stop():
    """Full collector passes over a million queued messages stop the reactor for
    seconds: recovered batches are frozen (gc.freeze), and given back at a stop so
    nothing stays out of the collector's reach after the scheduler is gone."""
    gc.unfreeze()
    w = World()
    w.spool.add("default", "a@src.test", ["b@dst.test"])
    w.scheduler.startService()
    assert gc.get_freeze_count() > 0
    w.agent.answer(0, 250)
    w.scheduler.stopService()
    assert gc.get_freeze_count() == 0


def test_a_bulk_queue_action_freezes_what_it_made_between_its_slices():
    """A bulk ``hatwist queue`` action makes new objects for every message it touches:
    they are frozen between its slices too, as the read's were (at 300,000 queued, a
    bulk release otherwise ran two full collections of 255 ms each)."""
    from hatwist.scheduler._bulk import SLICE

    gc.unfreeze()
    w = World()
    for n in range(SLICE + 1):
        w.spool.add("default", "a@src.test", [f"u{n}@one.test"])
    w.scheduler.startService()
    frozen = gc.get_freeze_count()
    assert frozen > 0
    d = w.scheduler.stream_action("hold", domain="one.test", report=lambda _: None)
    made = [object() for _ in range(100)] + [[] for _ in range(100)]  # tracked ones
    w.clock.advance(0)
    assert d.called and gc.get_freeze_count() >= frozen + 100
    del made
    for _, call in w.agent.pending():
        call.cancel()
    w.scheduler.stopService()
    w.clock.advance(3600)
    assert gc.get_freeze_count() == 0


def test_a_message_that_cannot_be_taken_does_not_stop_the_rest_of_the_read():
    w = World()
    listed = [w.spool.add("default", "a@src.test", [f"u{i}@d{i}.test"]) for i in range(3)]
    broken = attrs.evolve(listed[1], recipients=None)  # nothing the scheduler can plan
    w.spool.messages[broken.id] = broken
    w.scheduler.startService()
    assert sorted(o.id for o, _ in w.agent.calls) == [listed[0].id, listed[2].id]
    assert [e for e in w.events if "recovering message" in e["log_format"]]
    assert broken.id in w.spool.messages, "it stays spooled"
    w.agent.answer(0, 250)
    w.agent.answer(1, 250)
    w.scheduler.stopService()
