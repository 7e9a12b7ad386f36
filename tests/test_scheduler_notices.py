"""
Tests for hatwist.scheduler's notices to senders (._notices, ._bounce): a bounce at the
end of the pass in which a recipient failed, one "delayed" DSN after delay_warning_time,
never for a null sender, repeated after a crash rather than lost.  The World is in
tests.test_scheduler_support; the same on the real Spool and agent is in
tests/test_scheduler_rig.py.
"""

from __future__ import annotations

import attrs
import pytest
from twisted.internet import defer

from hatwist.spool import FAILED, PENDING
from tests.test_scheduler_support import (
    CONFIG,
    World,
    answer_all,
    delivery_status,
    parse,
    running,
)

WARNING = CONFIG.replace("retry_interval = 60", "retry_interval = 60\ndelay_warning_time = 100")


@pytest.fixture
def world():
    yield from running(World())


@pytest.fixture
def warned():
    yield from running(World(WARNING))


def reports(w):
    """The delivery-status part of every DSN spooled so far, in order."""
    return [delivery_status(parse(w.spool.contents[n.id])) for n in w.spool.stored]


def test_a_refused_recipient_is_bounced_at_the_end_of_its_pass_not_with_the_message(world):
    message = world.submit(rcpt_to=("bob@dst.test", "carol@dst.test"))
    world.agent.answer(0, 451, "4.2.0 busy", codes={"carol@dst.test": 550})
    # The DSN is out at once, although bob is still being retried (for days, maybe).
    [report] = reports(world)
    assert "Final-Recipient: rfc822; carol@dst.test" in report and "Action: failed" in report
    assert "bob@dst.test" not in report
    saved = world.spool.messages[message.id]
    assert [(r.status, r.bounced) for r in saved.recipients] == [
        (PENDING, False), (FAILED, True)]
    assert world.scheduler.counters()["dsns"] == 1
    # The DSN went to the sender like any other message; bob's retry follows.
    [dsn_attempt] = [o for o, _ in world.agent.calls if o.envelope.mail_from == ""]
    assert dsn_attempt.envelope.rcpt_to == ("alice@src.test",)
    world.clock.advance(60)
    [retry] = [o for o, _ in world.agent.calls[2:]]
    assert retry.envelope.rcpt_to == ("bob@dst.test",)
    world.agent.answer(2, 250)
    # Finished: carol was reported already, so no second DSN.
    assert message.id in world.spool.removed
    assert len(world.spool.stored) == 1


def test_one_dsn_per_pass_listing_the_recipients_that_failed_in_it(world):
    message = world.submit(rcpt_to=("a@dst.test", "b@dst.test", "c@dst.test"))
    world.agent.answer(0, 451, codes={"a@dst.test": 550, "b@dst.test": 552})
    world.clock.advance(60)
    retry = next(i for i, (o, _) in enumerate(world.agent.calls) if o.id == message.id and i)
    world.agent.answer(retry, 554, "5.7.1 no")
    first, second = reports(world)
    assert "a@dst.test" in first and "b@dst.test" in first and "c@dst.test" not in first
    assert "c@dst.test" in second and "a@dst.test" not in second
    assert message.id in world.spool.removed


def test_a_failure_at_one_domain_bounces_while_another_domain_defers(world):
    message = world.submit(rcpt_to=("bob@dst.test", "eve@other.test"))
    by_domain = {o.domain: i for i, (o, _) in enumerate(world.agent.calls)}
    world.agent.answer(by_domain["other.test"], 451)
    assert world.spool.stored == []
    world.agent.answer(by_domain["dst.test"], 550, "5.1.1 no such user")
    [report] = reports(world)
    assert "bob@dst.test" in report and "eve@other.test" not in report
    assert message.id not in world.spool.removed


def test_a_null_sender_is_never_bounced_even_in_a_pass(world):
    message = world.submit(mail_from="", rcpt_to=("bob@dst.test", "carol@dst.test"))
    world.agent.answer(0, 451, codes={"carol@dst.test": 550})
    assert world.spool.stored == []
    assert world.spool.messages[message.id].recipients[1].bounced is False


def test_a_failure_a_crash_kept_from_being_bounced_is_bounced_at_the_next_start():
    """The state was saved with carol failed but the DSN never made it: recovery owes it."""
    w = World()
    message = w.spool.add("default", "a@src.test", ["bob@dst.test", "carol@dst.test"])
    bob, carol = message.recipients
    carol = attrs.evolve(carol, status=FAILED, code=550, reason="5.1.1 gone")
    w.spool.messages[message.id] = attrs.evolve(message, recipients=(bob, carol))
    w.scheduler.startService()
    [report] = reports(w)
    assert "carol@dst.test" in report and "bob@dst.test" not in report
    assert w.spool.messages[message.id].recipients[1].bounced is True
    w.scheduler.stopService()
    w.clock.advance(10)


def test_a_failure_already_bounced_is_not_bounced_again_after_a_restart():
    w = World()
    message = w.spool.add("default", "a@src.test", ["bob@dst.test", "carol@dst.test"])
    bob, carol = message.recipients
    carol = attrs.evolve(carol, status=FAILED, code=550, reason="5.1.1 gone", bounced=True)
    w.spool.messages[message.id] = attrs.evolve(message, recipients=(bob, carol))
    w.scheduler.startService()
    w.agent.answer(0, 250)
    assert message.id in w.spool.removed
    assert w.spool.stored == []
    w.scheduler.stopService()
    w.clock.advance(10)


def test_a_dsn_that_could_not_be_spooled_is_owed_at_the_next_pass(world):
    message = world.submit(rcpt_to=("bob@dst.test", "carol@dst.test"))
    store = world.spool.store
    world.spool.store = lambda *a: defer.fail(OSError(28, "No space left on device"))
    world.agent.answer(0, 451, codes={"carol@dst.test": 550})
    assert world.spool.stored == []
    assert world.spool.messages[message.id].recipients[1].bounced is False
    world.spool.store = store
    world.clock.advance(60)
    world.agent.answer(1, 250)
    [report] = reports(world)
    assert "carol@dst.test" in report
    assert message.id in world.spool.removed


# -- "delayed" DSNs (delay_warning_time) ----------------------------------------------


def test_no_delay_warning_by_default(world):
    message = world.submit()
    for n in range(4):
        world.agent.answer(n, 451)
        world.clock.advance(480)
    assert world.spool.stored == []
    assert world.spool.messages[message.id].delay_warned is False


def test_one_delay_warning_after_delay_warning_time_listing_the_pending_recipients(warned):
    w = warned
    message = w.submit(rcpt_to=("bob@dst.test", "carol@dst.test", "dan@dst.test"))
    w.agent.answer(0, 451, "4.2.0 busy", codes={"dan@dst.test": 250})
    w.clock.advance(60)  # the retry at 60 s is before delay_warning_time (100 s)
    w.agent.answer(1, 451, "4.2.0 busy")
    assert w.spool.stored == []
    w.clock.advance(120)  # the retry at 180 s: the first pass to end after 100 s
    w.agent.answer(2, 451, "4.2.0 still busy")
    [notice] = w.spool.stored
    dsn = parse(w.spool.contents[notice.id])
    assert dsn["Subject"] == "Delayed Mail (still being retried)"
    assert (notice.mail_from, [r.address for r in notice.recipients]) == ("", ["alice@src.test"])
    report = delivery_status(dsn)
    assert report.count("Action: delayed") == 2
    assert "bob@dst.test" in report and "carol@dst.test" in report
    assert "dan@dst.test" not in report  # delivered
    assert "Status: 4.2.0" in report
    assert w.spool.messages[message.id].delay_warned is True
    # Once per message: later passes send no more.
    for _ in range(3):
        w.clock.advance(480)
        w.agent.answer(len(w.agent.calls) - 1, 451)
    assert [n.id for n in w.spool.stored] == [notice.id]


def test_no_delay_warning_for_a_null_sender(warned):
    w = warned
    w.submit(mail_from="")
    w.agent.answer(0, 451)
    w.clock.advance(300)
    w.agent.answer(len(w.agent.calls) - 1, 451)
    assert w.spool.stored == []


def test_delay_warning_time_is_a_domain_scope_key(world):
    from hatwist.config import parse_config

    world.config = parse_config(CONFIG + "domain dst.test { delay_warning_time = 30 }\n")
    world.submit(rcpt_to=("bob@dst.test",))
    world.submit(rcpt_to=("eve@other.test",))
    world.clock.advance(10)
    answer_all(world, 451)
    world.clock.advance(60)
    answer_all(world, 451)
    [notice] = world.spool.stored
    report = delivery_status(parse(world.spool.contents[notice.id]))
    assert "bob@dst.test" in report and "eve@other.test" not in report


def test_a_message_delivered_after_its_warning_is_removed_with_no_bounce(warned):
    w = warned
    message = w.submit()
    w.clock.advance(100)
    w.agent.answer(0, 451)
    [warning] = w.spool.stored
    w.clock.advance(60)
    [retry] = [i for i, (o, _) in enumerate(w.agent.calls) if o.id == message.id and i]
    w.agent.answer(retry, 250)
    assert message.id in w.spool.removed
    assert w.spool.stored == [warning]


def test_a_message_waiting_for_a_proxy_gets_its_delay_warning_too(warned):
    w = warned
    w.proxy(up=False)
    message = w.submit(binding="proxied")
    w.clock.advance(95)  # re-checked every health-check interval (5 s)
    assert w.spool.stored == []
    w.clock.advance(5)
    [notice] = w.spool.stored
    report = delivery_status(parse(w.spool.contents[notice.id]))
    assert "Action: delayed" in report and "bob@dst.test" in report
    assert w.agent.calls == []  # still no attempt for the message itself
    assert w.spool.messages[message.id].delay_warned is True


def test_two_passes_ending_together_report_each_failure_once(world):
    """The first pass's DSN is still being stored when the second pass ends the message:
    the final bounce waits for it and lists only what it did not."""
    message = world.submit(rcpt_to=("bob@dst.test", "eve@other.test"))
    held = []
    store = world.spool.store

    def slow_store(*args):
        d = defer.Deferred()
        held.append((d, args))
        return d

    world.spool.store = slow_store
    by_domain = {o.domain: i for i, (o, _) in enumerate(world.agent.calls)}
    world.agent.answer(by_domain["dst.test"], 550, "5.1.1 no bob")
    world.agent.answer(by_domain["other.test"], 550, "5.1.1 no eve")
    assert len(held) == 1  # the final bounce waits for the first pass's
    world.spool.store = store
    d, args = held[0]
    store(*args).chainDeferred(d)
    first, second = reports(world)
    assert "bob@dst.test" in first and "eve@other.test" not in first
    assert "eve@other.test" in second and "bob@dst.test" not in second
    assert message.id in world.spool.removed
