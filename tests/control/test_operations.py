"""
Tests for hatwist.scheduler._operations: what ``hatwist queue`` asks of a running
scheduler (list, show, flush, hold, release, delete, bounce), on the scheduler tests'
World (task.Clock, in-memory spool, scripted agent).
"""

from __future__ import annotations

import pytest

from hatwist.spool import FAILED, PENDING
from tests.test_scheduler_support import START, World, delivery_status, parse, running


@pytest.fixture
def world():
    yield from running(World())


def defer_all(world, code=451, text="4.7.1 try later"):
    """Answer every attempt in flight with a temporary failure (retry in 60 s)."""
    for i, (_, d) in enumerate(world.agent.calls):
        if not d.called:
            world.agent.answer(i, code, text)


def fired(d):
    results = []
    d.addBoth(results.append)
    assert results, "the action's Deferred did not fire"
    return results[0]


# -- looking ----------------------------------------------------------------------------


def test_list_without_filter_stops_at_the_limit_and_counts_all(world):
    for i in range(5):
        world.submit(rcpt_to=(f"r{i}@dst.test",))
    defer_all(world)
    listing = fired(world.scheduler.list_messages(limit=3))
    assert listing.total == 5
    assert [r["id"] for r in listing.rows] == ["m1", "m2", "m3"]
    first = listing.rows[0]
    assert (first["binding"], first["from"], first["domains"]) == (
        "default", "alice@src.test", ["dst.test"])
    assert (first["pending"], first["recipients"], first["attempts"]) == (1, 1, 1)
    assert first["state"] == "backoff" and first["next_attempt_at"] == START + 60


def test_list_filters_by_domain_binding_and_state(world):
    world.submit(rcpt_to=("a@one.test",))
    world.submit(rcpt_to=("b@two.test", "c@one.test"))
    world.submit(binding="proxied", rcpt_to=("d@one.test",))
    defer_all(world)
    one = fired(world.scheduler.list_messages(domain="one.test"))
    assert sorted(r["id"] for r in one.rows) == ["m1", "m2", "m3"] and one.total == 3
    default_one = fired(world.scheduler.list_messages(binding="default", domain="one.test"))
    assert sorted(r["id"] for r in default_one.rows) == ["m1", "m2"]
    two = fired(world.scheduler.list_messages(domain="two.test"))
    assert [r["id"] for r in two.rows] == ["m2"]
    # A message with two matching queues is listed once.
    default = fired(world.scheduler.list_messages(binding="default"))
    assert sorted(r["id"] for r in default.rows) == ["m1", "m2"] and default.total == 2
    assert fired(world.scheduler.list_messages(state="active")).total == 0
    fired(world.scheduler.act_on_messages("hold", ("m1",), uid=0))
    held = fired(world.scheduler.list_messages(state="held"))
    assert [(r["id"], r["state"]) for r in held.rows] == [("m1", "held")]
    backoff = fired(world.scheduler.list_messages(state="backoff", binding="default"))
    assert [r["id"] for r in backoff.rows] == ["m2"]


def test_list_counts_a_message_in_flight_as_active(world):
    world.submit()
    listing = fired(world.scheduler.list_messages(domain="dst.test"))
    assert [(r["id"], r["state"]) for r in listing.rows] == [("m1", "active")]


def test_show_gives_envelope_recipients_last_reply_and_next_try(world):
    world.submit(rcpt_to=("bob@dst.test", "carol@dst.test"))
    world.agent.answer(0, 451, "4.7.1 later", codes={"carol@dst.test": 250})
    shown = world.scheduler.show_message("m1")
    assert (shown["id"], shown["from"], shown["binding"]) == ("m1", "alice@src.test", "default")
    assert shown["received_at"] == START and shown["attempts"] == 1
    bob, carol = shown["recipients"]
    assert (bob["address"], bob["status"], bob["code"], bob["reason"], bob["attempts"]) == (
        "bob@dst.test", PENDING, 451, "4.7.1 later", 1)
    assert (carol["status"], carol["code"]) == ("delivered", 250)
    [queue] = shown["queues"]
    assert queue["domain"] == "dst.test" and queue["next_attempt_at"] == START + 60
    assert queue["expires_at"] == START + 3600
    assert world.scheduler.show_message("m9") is None


# -- flush ------------------------------------------------------------------------------


def test_flush_retries_a_backing_off_queue_at_once(world):
    world.submit()
    world.submit(rcpt_to=("x@other.test",))
    defer_all(world)
    assert len(world.agent.calls) == 2
    queues, parts = world.scheduler.flush_queues(domain="dst.test", uid=1000)
    assert (queues, parts) == (1, 1)
    assert len(world.agent.calls) == 3, "the flushed queue tried at once"
    assert world.agent.calls[2][0].domain == "dst.test"
    assert any("queue flush by the operator (uid 1000)" in str(e.get("log_format"))
               or e.get("uid") == 1000 for e in world.events)


def test_flush_ends_a_pause(world):
    from tests.test_scheduler_support import unreachable

    world.submit()
    outbound, d = world.agent.calls[0]
    d.callback(unreachable(outbound))
    [state] = world.scheduler.queue_states()
    assert state.state == "paused"
    world.scheduler.flush_queues()
    assert len(world.agent.calls) == 2
    assert world.scheduler.queue_states()[0].state == "active"


# -- hold and release -------------------------------------------------------------------


def test_held_mail_is_never_attempted_and_never_expires_while_held(world):
    message = world.submit()
    defer_all(world)
    [(_, outcome)] = fired(world.scheduler.act_on_messages("hold", (message.id,), uid=7))
    assert outcome == "held"
    assert world.spool.messages[message.id].held_at == START
    world.clock.advance(7200)  # past the retry time and past message_expiration (3600)
    assert len(world.agent.calls) == 1, "held mail is never attempted"
    assert world.spool.removed == [] and world.spool.stored == [], "nor expired"
    assert world.scheduler.queue_depths() == {("default", "dst.test"): 1}

    [(_, outcome)] = fired(world.scheduler.act_on_messages("release", (message.id,), uid=7))
    assert outcome == "released"
    assert len(world.agent.calls) == 2, "a released message is due at once"
    saved = world.spool.messages[message.id]
    assert (saved.held_at, saved.held_for) == (None, 7200)
    shown = world.scheduler.show_message(message.id)
    assert shown["queues"][0]["expires_at"] == START + 3600 + 7200
    # Its expiry moved by the time held: not expired 3000 s later ...
    for _ in range(30):
        defer_all(world)
        world.clock.advance(100)
    assert world.spool.removed == []
    # ... but at received + expiration + held.
    for _ in range(6):
        defer_all(world)
        world.clock.advance(100)
    assert world.spool.removed == [message.id]


def test_holding_an_attempt_in_flight_lets_it_finish_and_retries_nothing(world):
    message = world.submit()
    [(_, outcome)] = fired(world.scheduler.act_on_messages("hold", (message.id,)))
    assert outcome.startswith("held")
    world.agent.answer(0, 451, "4.7.1 later")
    world.clock.advance(600)
    assert len(world.agent.calls) == 1
    assert world.spool.messages[message.id].recipients[0].attempts == 1
    fired(world.scheduler.act_on_messages("release", (message.id,)))
    assert len(world.agent.calls) == 2


def test_a_hold_outlives_a_restart():
    w = World()
    message = w.spool.add("default", "alice@src.test", ("bob@dst.test",), held_at=START - 10)
    w.scheduler.startService()
    w.clock.advance(1)
    assert w.agent.calls == []
    assert [r["id"] for r in fired(w.scheduler.list_messages(state="held")).rows] == [message.id]
    fired(w.scheduler.act_on_messages("release", (message.id,)))
    assert len(w.agent.calls) == 1
    assert w.spool.messages[message.id].held_for == pytest.approx(11)
    w.agent.answer(0, 250)
    w.scheduler.stopService()


def test_hold_by_filter_and_unknown_ids(world):
    world.submit(rcpt_to=("a@one.test",))
    world.submit(rcpt_to=("b@two.test",))
    defer_all(world)
    results = fired(world.scheduler.act_on_messages("hold", domain="one.test"))
    assert results == [("m1", "held")]
    results = fired(world.scheduler.act_on_messages("release", ("m2", "nope")))
    assert results == [("m2", "not held"), ("nope", "not in the queue")]


# -- delete and bounce ------------------------------------------------------------------


def test_delete_removes_without_dsn_and_logs_the_uid(world):
    message = world.submit()
    defer_all(world)
    [(_, outcome)] = fired(world.scheduler.act_on_messages("delete", (message.id,), uid=1234))
    assert outcome == "deleted"
    assert world.spool.removed == [message.id] and world.spool.stored == []
    assert world.scheduler.queue_depths() == {}
    world.clock.advance(600)
    assert len(world.agent.calls) == 1
    [event] = [e for e in world.events if "deleted by the operator" in str(e.get("outcome"))]
    assert event["uid"] == 1234 and event["message_id"] == message.id


def test_delete_cancels_the_attempt_in_flight_and_records_nothing(world):
    message = world.submit()
    fired(world.scheduler.act_on_messages("delete", (message.id,)))
    assert world.agent.cancelled == 1
    assert world.spool.removed == [message.id]
    assert world.scheduler.counters()["errors"] == 0


def test_bounce_spools_a_dsn_to_the_sender_and_removes_the_message(world):
    message = world.submit(rcpt_to=("bob@dst.test", "carol@dst.test"))
    world.agent.answer(0, 250, "ok", codes={"carol@dst.test": 451})
    [(_, outcome)] = fired(world.scheduler.act_on_messages("bounce", (message.id,), uid=5))
    assert outcome == "bounced (DSN to <alice@src.test>)"
    assert world.spool.removed == [message.id]
    [notice] = world.spool.stored
    assert [r.address for r in notice.recipients] == ["alice@src.test"]
    report = delivery_status(parse(world.spool.contents[notice.id]))
    assert "Final-Recipient: rfc822; carol@dst.test" in report
    assert "Action: failed" in report and "bob@dst.test" not in report
    assert world.scheduler.counters()["bounced"] == 1


def test_bounce_of_a_null_sender_removes_it_without_dsn(world):
    message = world.submit(mail_from="")
    defer_all(world)
    [(_, outcome)] = fired(world.scheduler.act_on_messages("bounce", (message.id,)))
    assert outcome == "bounced (null sender: no DSN)"
    assert world.spool.removed == [message.id] and world.spool.stored == []


def test_bounce_refuses_a_message_with_an_attempt_in_flight(world):
    message = world.submit()
    [(_, outcome)] = fired(world.scheduler.act_on_messages("bounce", (message.id,)))
    assert outcome.startswith("an attempt is in flight")
    world.agent.answer(0, 451)
    [(_, outcome)] = fired(world.scheduler.act_on_messages("bounce", (message.id,)))
    assert outcome.startswith("bounced")
    assert world.spool.removed == [message.id]
    assert FAILED  # the state names come from the spool


def _state(world, domain="dst.test"):
    [state] = [s for s in world.scheduler.queue_states() if s.domain == domain]
    return state


def test_a_queue_of_only_held_mail_says_held_and_partly_held_says_how_much(world):
    first = world.submit()
    second = world.submit()
    defer_all(world)
    fired(world.scheduler.act_on_messages("hold", (first.id,)))
    state = _state(world)
    assert (state.state, state.depth, state.held) == ("backoff", 2, 1)  # second retries
    fired(world.scheduler.act_on_messages("hold", (second.id,)))
    state = _state(world)
    assert (state.state, state.until, state.held) == ("held", None, 2)
    assert state.reason == "2 held by the operator (hatwist queue release)"
    fired(world.scheduler.act_on_messages("release", (first.id,)))
    assert (_state(world).state, _state(world).held) == ("active", 1)
    fired(world.scheduler.act_on_messages("bounce", (second.id,)))
    # Nothing held is left counted: the bounced one's recipients went with it.
    assert [s.held for s in world.scheduler.queue_states()] == [0] * len(
        world.scheduler.queue_states())
    assert world.scheduler._ledger.held_depths() == {}
