"""
Tests for hatwist.scheduler: deliveries, retries, bounces, expiry, concurrency, pauses,
failures inside hatwist.  The World is in tests.test_scheduler_support.
"""

from __future__ import annotations

import attrs
import pytest

from hatwist.delivery import RecipientResult
from hatwist.scheduler import SAVE_RETRY_DELAY
from hatwist.spool import DELIVERED, PENDING
from tests.test_scheduler_support import (
    START,
    World,
    delivery_status,
    human_part,
    parse,
    result_for,
    running,
    unreachable,
)


@pytest.fixture
def world():
    yield from running(World())


def test_delivered_message_is_removed(world):
    message = world.submit()
    [(outbound, _)] = world.agent.calls
    assert outbound.envelope.mail_from == "alice@src.test"
    assert outbound.envelope.rcpt_to == ("bob@dst.test",)
    assert outbound.domain == "dst.test" and outbound.binding == "default"
    assert outbound.content == world.spool.contents[message.id]
    world.agent.answer(0, 250, "2.0.0 ok")
    assert world.spool.removed == [message.id]
    assert world.spool.stored == []
    assert world.scheduler.queue_depths() == {}
    assert world.scheduler.counters()["delivered"] == 1


def test_temporary_failure_retried_at_backoff_time_not_before(world):
    message = world.submit()
    world.agent.answer(0, 451, "4.7.1 try later")
    saved = world.spool.messages[message.id]
    [rcpt] = saved.recipients
    assert (rcpt.status, rcpt.code, rcpt.attempts) == (PENDING, 451, 1)
    assert saved.next_attempt_at == START + 60
    world.clock.advance(59.9)
    assert len(world.agent.calls) == 1
    world.clock.advance(0.1)
    assert len(world.agent.calls) == 2
    world.agent.answer(1, 451, "4.7.1 try later")
    # Doubling: the second retry comes 120 s after the second attempt.
    world.clock.advance(119.9)
    assert len(world.agent.calls) == 2
    world.clock.advance(0.1)
    assert len(world.agent.calls) == 3
    assert world.scheduler.counters()["deferred"] == 2
    assert world.scheduler.queue_depths() == {("default", "dst.test"): 1}


def test_permanent_failure_bounces_to_sender(world):
    message = world.submit(rcpt_to=("bob@dst.test", "carol@dst.test"))
    world.agent.answer(0, 250, "ok", codes={"carol@dst.test": 550})
    assert world.spool.removed == [message.id]
    [notice] = world.spool.stored
    assert (notice.binding, notice.mail_from) == ("default", "")
    assert [r.address for r in notice.recipients] == ["alice@src.test"]
    dsn = parse(world.spool.contents[notice.id])
    assert dsn.get_content_type() == "multipart/report"
    assert dsn["To"].addresses[0].addr_spec == "alice@src.test"
    report = delivery_status(dsn)
    assert "Final-Recipient: rfc822; carol@dst.test" in report
    assert "Action: failed" in report
    assert "bob@dst.test" not in report
    # The DSN itself is scheduled like any other message.
    outbound, _ = world.agent.calls[1]
    assert outbound.envelope.mail_from == ""
    assert outbound.envelope.rcpt_to == ("alice@src.test",)
    assert outbound.domain == "src.test"
    assert world.scheduler.counters()["bounced"] == 1


def test_null_sender_never_bounced(world):
    message = world.submit(mail_from="")
    world.agent.answer(0, 550, "5.1.1 no such user")
    assert world.spool.removed == [message.id]
    assert world.spool.stored == []
    assert len(world.agent.calls) == 1


def test_expiry_bounces_with_last_reason(world):
    message = world.submit()
    n = 0
    while message.id not in world.spool.removed:
        world.agent.answer(n, 451, f"4.4.1 mx busy #{n}")
        n += 1
        world.clock.advance(min(c.getTime() for c in world.clock.getDelayedCalls())
                            - world.clock.seconds())
    # Backoff 60, 120, 240, then 480 (the cap): none after the hour is up.
    calls = zip(world.agent.calls, world.agent.times, strict=True)
    times = [t for (o, _), t in calls if o.id == message.id]
    assert times == [
        START + t for t in (0, 60, 180, 420, 900, 1380, 1860, 2340, 2820, 3300)
    ]
    assert world.clock.seconds() == START + 3600
    [notice] = world.spool.stored
    dsn = parse(world.spool.contents[notice.id])
    report = delivery_status(dsn)
    assert "Action: failed" in report
    assert "Status: 5.4.7" in report
    # Programs reading the report see the last reply too, not only people.
    assert "Diagnostic-Code: smtp; 451 4.4.1 mx busy #9" in report
    assert "4.4.1 mx busy #9" in human_part(dsn)


def test_max_connections_respected(world):
    for i in range(5):
        world.submit(rcpt_to=(f"u{i}@dst.test",))
    assert len(world.agent.pending()) == 2
    world.agent.answer(0, 250)
    assert len(world.agent.pending()) == 2
    assert len(world.agent.calls) == 3
    world.agent.answer(1, 250)
    world.agent.answer(2, 250)
    world.agent.answer(3, 250)
    world.agent.answer(4, 250)
    assert world.spool.messages == {}


def test_attempts_in_flight_are_capped_across_all_queues():
    """Thousands of domains must not mean thousands of connections at once."""
    w = World(max_in_flight=3)
    w.scheduler.startService()
    for i in range(2):
        for domain in ("a.test", "b.test", "c.test"):
            w.submit(rcpt_to=(f"u{i}@{domain}",))
    assert len(w.agent.pending()) == 3
    assert sorted(o.domain for o, _ in w.agent.pending()) == ["a.test", "b.test", "c.test"]
    w.agent.answer(0, 250)
    assert len(w.agent.pending()) == 3
    assert w.scheduler.in_flight() == 3
    for i in range(1, 6):
        w.agent.answer(i, 250)
    assert w.spool.messages == {}
    w.scheduler.stopService()


def test_unreachable_destination_pauses_its_queue_instead_of_trying_every_message(world):
    """One dead destination must not cost an attempt (and a connect timeout) per
    queued message per retry: after a connection-level failure its queue waits one
    retry_interval, then probes again with at most max_connections attempts."""
    messages = [world.submit(rcpt_to=(f"u{i}@dst.test",)) for i in range(6)]
    other = world.submit(rcpt_to=("v@other.test",))
    assert len(world.agent.pending()) == 3  # 2 for dst.test (max_connections), 1 other
    for outbound, d in world.agent.pending():
        if outbound.domain == "dst.test":
            d.callback(unreachable(outbound))
    assert [o.domain for o, _ in world.agent.pending()] == ["other.test"]
    world.clock.advance(59)
    assert len(world.agent.calls) == 3, "the other 4 messages wait without an attempt"
    assert all(world.spool.messages[m.id].recipients[0].attempts == 0 for m in messages[2:])
    world.clock.advance(1)
    probes = [o for o, _ in world.agent.pending() if o.domain == "dst.test"]
    assert len(probes) == 2
    # The destination is back: everything queued for it goes.
    while waiting := [i for i, (o, d) in enumerate(world.agent.calls)
                      if not d.called and o.domain == "dst.test"]:
        world.agent.answer(waiting[0], 250)
    assert all(m.id in world.spool.removed for m in messages)
    assert other.id not in world.spool.removed


def test_a_delivery_to_a_paused_destination_resumes_its_queue_at_once(world):
    for i in range(4):
        world.submit(rcpt_to=(f"u{i}@dst.test",))
    (first, d0), _ = world.agent.pending()
    d0.callback(unreachable(first))  # paused: nothing new starts
    assert len(world.agent.calls) == 2
    world.agent.answer(1, 250)  # the other session got through after all
    assert len(world.agent.pending()) == 2


def test_queues_take_turns(world):
    for i in range(4):
        world.submit(rcpt_to=(f"u{i}@busy.test",))
    world.submit(rcpt_to=("v@quiet.test",))
    # busy.test is limited to 2; quiet.test gets its slot at once.
    assert sorted(o.domain for o, _ in world.agent.pending()) == [
        "busy.test", "busy.test", "quiet.test"
    ]


def test_two_domains_of_one_message_go_to_two_queues(world):
    message = world.submit(rcpt_to=("a@X.test", "b@y.test", "c@x.test"))
    calls = {o.domain: o for o, _ in world.agent.calls}
    assert set(calls) == {"x.test", "y.test"}
    assert calls["x.test"].envelope.rcpt_to == ("a@X.test", "c@x.test")
    assert calls["y.test"].envelope.rcpt_to == ("b@y.test",)
    assert world.scheduler.queue_depths() == {("default", "x.test"): 2, ("default", "y.test"): 1}
    x = next(i for i, (o, _) in enumerate(world.agent.calls) if o.domain == "x.test")
    world.agent.answer(x, 250)
    world.agent.answer(1 - x, 451, "4.2.0 later")
    saved = world.spool.messages[message.id]
    assert [r.status for r in saved.recipients] == [DELIVERED, PENDING, DELIVERED]
    world.clock.advance(60)
    [(retry, _)] = world.agent.pending()
    assert retry.envelope.rcpt_to == ("b@y.test",)


def test_agent_that_raises_does_not_kill_scheduler(world):
    real = world.agent.deliver
    raised = []

    def broken(outbound):
        if not raised:
            raised.append(outbound)
            raise RuntimeError("boom")
        return real(outbound)

    world.agent.deliver = broken
    message = world.submit()
    saved = world.spool.messages[message.id]
    assert saved.recipients[0].status == PENDING
    assert "boom" in saved.recipients[0].reason
    other = world.submit(rcpt_to=("x@other.test",))
    assert [o.id for o, _ in world.agent.calls] == [other.id]
    world.clock.advance(60)
    assert [o.id for o, _ in world.agent.calls] == [other.id, message.id]
    assert world.scheduler.counters()["errors"] == 1


def test_agent_failure_is_a_temporary_failure(world):
    message = world.submit()
    world.agent.calls[0][1].errback(ValueError("broken session"))
    assert world.spool.messages[message.id].recipients[0].status == PENDING
    world.clock.advance(60)
    assert len(world.agent.calls) == 2


def test_spool_update_failure_keeps_the_message(world):
    world.spool.fail_updates = 1
    message = world.submit()
    world.agent.answer(0, 451, "4.0.0 later")
    assert world.spool.messages[message.id].recipients[0].attempts == 0  # not saved
    world.clock.advance(60)
    world.agent.answer(1, 250)
    assert world.spool.removed == [message.id]


def test_state_that_failed_to_save_is_saved_again_without_waiting_for_the_next_attempt(world):
    """A delivered recipient whose state only lives in memory is delivered twice
    after a crash: the scheduler keeps trying to write it down on its own."""
    world.spool.fail_updates = 2
    message = world.submit(rcpt_to=("bob@dst.test", "carol@other.test"))
    world.agent.answer(0, 250)  # bob delivered; carol's attempt still running
    assert world.spool.messages[message.id].recipients[0].status == PENDING  # not saved
    world.clock.advance(SAVE_RETRY_DELAY)  # the first retry fails too
    assert world.spool.messages[message.id].recipients[0].status == PENDING
    world.clock.advance(SAVE_RETRY_DELAY)
    saved = world.spool.messages[message.id]
    assert [r.status for r in saved.recipients] == [DELIVERED, PENDING]
    assert len(world.agent.calls) == 2, "saving again is not another attempt"
    world.agent.answer(1, 250)
    assert world.spool.removed == [message.id]


def test_message_removed_behind_our_back_is_forgotten(world):
    message = world.submit()
    world.agent.answer(0, 451, "4.0.0 later")
    world.spool.remove(message.id)
    world.clock.advance(60)
    assert len(world.agent.calls) == 1
    assert world.scheduler.queue_depths() == {}


def test_decisions_are_structured_log_events(world):
    message = world.submit()
    world.agent.answer(0, 451, "4.0.0 later")
    [event] = [e for e in world.events if e.get("next_attempt_at")]
    assert event["message_id"] == message.id
    assert (event["binding"], event["domain"]) == ("default", "dst.test")
    assert event["outcome"] == "1 temporary"
    assert event["next_attempt_at"] == START + 60


def test_a_recipient_missing_from_the_agents_result_stays_pending_and_is_retried(world):
    message = world.submit(rcpt_to=("bob@dst.test", "carol@dst.test"))
    outbound, d = world.agent.calls[0]
    d.callback(attrs.evolve(result_for(outbound, 250), recipients=(
        RecipientResult("bob@dst.test", 250, "ok"),)))
    saved = world.spool.messages[message.id]
    assert [(r.status, r.code) for r in saved.recipients] == [(DELIVERED, 250), (PENDING, 451)]
    world.clock.advance(60)
    assert world.agent.calls[1][0].envelope.rcpt_to == ("carol@dst.test",)
