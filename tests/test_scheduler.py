"""
Tests for hatwist.scheduler: queues, retries, bounces, holds and shutdown.

Time is a task.Clock; the agent is scripted (its Deferreds are held open until a
test answers them); the spool is in memory, except in the last tests, which use
the real Spool in a temporary directory.  Config and proxy registry are real.
"""

from __future__ import annotations

import email
import email.policy
from collections import Counter

import attrs
import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.logger import Logger

from hatwist.config import parse_config
from hatwist.delivery import RecipientResult
from hatwist.delivery.attempt import AttemptResult
from hatwist.health import ServerRegistry
from hatwist.scheduler import SAVE_RETRY_DELAY, THROTTLE_RECHECK, Scheduler
from hatwist.spool import DELIVERED, FAILED, PENDING, MessageNotFound, Spool, SpooledMessage
from hatwist.spool._values import new_recipients

CONFIG = """
retry_interval = 60
message_expiration = 3600
max_connections = 2
shutdown_grace = 10
ha_proxy_client {
  health_check_interval = 5
}
binding proxied {
  ha_proxy_server = 127.0.0.1:5000
  ha_proxy_src_addr = 127.0.0.9
}
"""
START = 1_000_000.0


class MemorySpool:
    """The Spool's interface over a dict; calls succeed at once unless told to fail."""

    def __init__(self, clock):
        self.clock = clock
        self.messages: dict[str, SpooledMessage] = {}
        self.contents: dict[str, bytes] = {}
        self.removed: list[str] = []
        self.stored: list[SpooledMessage] = []
        self.fail_updates = 0
        self._n = 0

    def add(self, binding, mail_from, rcpt_to, content=b"Subject: hi\r\n\r\nbody\r\n", **kw):
        self._n += 1
        now = self.clock.seconds()
        message = SpooledMessage(
            id=f"m{self._n}", binding=binding, mail_from=mail_from,
            recipients=new_recipients(rcpt_to), received_at=now, attempts=0,
            next_attempt_at=now, size=len(content),
        )
        message = attrs.evolve(message, **kw)
        self.messages[message.id] = message
        self.contents[message.id] = content
        return message

    def store(self, binding, mail_from, rcpt_to, content):
        message = self.add(binding, mail_from, rcpt_to, content)
        self.stored.append(message)
        return defer.succeed(message)

    def content(self, message_id):
        if message_id not in self.contents:
            return defer.fail(MessageNotFound(message_id))
        return defer.succeed(self.contents[message_id])

    def update(self, message):
        if self.fail_updates:
            self.fail_updates -= 1
            return defer.fail(OSError(28, "No space left on device"))
        self.messages[message.id] = message
        return defer.succeed(None)

    def remove(self, message_id):
        self.removed.append(message_id)
        del self.messages[message_id]
        del self.contents[message_id]
        return defer.succeed(None)

    def recover(self):
        return defer.succeed(sorted(self.messages.values(), key=lambda m: m.id))

    def recover_batches(self, on_batch, *, batch_size=10_000):
        """Like the Spool's: ``recover()`` handed out in batches (here with no
        reactor turn in between)."""

        def feed(messages):
            for start in range(0, len(messages), batch_size):
                on_batch(messages[start:start + batch_size])
            return len(messages)

        return self.recover().addCallback(feed)


class HeldAgent:
    """Every deliver() call waits until the test answers it."""

    def __init__(self, clock):
        self.clock = clock
        self.calls: list[tuple[object, defer.Deferred]] = []
        self.times: list[float] = []
        self.cancelled = 0

    def deliver(self, outbound):
        d = defer.Deferred(lambda _: self._cancelled())
        self.calls.append((outbound, d))
        self.times.append(self.clock.seconds())
        return d

    def _cancelled(self):
        self.cancelled += 1

    def pending(self):
        return [(o, d) for o, d in self.calls if not d.called]

    def answer(self, index, code, text="", codes=None):
        """Fire call ``index``: every recipient gets ``code`` (or its entry in ``codes``)."""
        outbound, d = self.calls[index]
        d.callback(result_for(outbound, code, text, codes))


def result_for(outbound, code, text="", codes=None):
    codes = codes or {}
    return AttemptResult(
        message_id=outbound.id,
        recipients=tuple(
            RecipientResult(a, codes.get(a, code), text) for a in outbound.envelope.rcpt_to
        ),
        route="direct", mx_host="mx.test", mx_address="192.0.2.1", duration=0.1,
    )


class World:
    def __init__(self, config_text=CONFIG, **options):
        self.clock = task.Clock()
        self.clock.advance(START)
        self.config = parse_config(config_text)
        self.spool = MemorySpool(self.clock)
        self.agent = HeldAgent(self.clock)
        self.registry = ServerRegistry(
            self.config.proxy_servers, success_threshold=1, failure_threshold=1
        )
        self.events: list[dict] = []
        self.scheduler = Scheduler(
            spool=self.spool, agent=self.agent, config_provider=lambda: self.config,
            registry=self.registry, reactor=self.clock, reporting_mta="relay.test",
            **options,
        )
        self.scheduler.log = Logger(observer=self.events.append)

    def submit(self, binding="default", mail_from="alice@src.test",
               rcpt_to=("bob@dst.test",), **kw):
        message = self.spool.add(binding, mail_from, rcpt_to, **kw)
        self.scheduler.submit(message)
        return message

    def proxy(self, up):
        server = self.config.proxy_servers[0]
        if up:
            self.registry.record_success(server, at=self.clock.seconds())
        else:
            self.registry.record_failure(server, at=self.clock.seconds(), error="refused")


def running(w):
    """Start ``w``'s scheduler; afterwards stop it and check that no timer is left."""
    w.scheduler.startService()
    yield w
    if w.scheduler.running:
        stopping = w.scheduler.stopService()
        for _, d in w.agent.pending():
            d.cancel()
        w.clock.advance(3600)
        assert stopping.called
    assert not w.clock.getDelayedCalls()


@pytest.fixture
def world():
    yield from running(World())


def parse(content):
    return email.message_from_bytes(content, policy=email.policy.default)


def delivery_status(dsn):
    report = next(p for p in dsn.walk() if p.get_content_type() == "message/delivery-status")
    return report.as_string()


def human_part(dsn):
    return next(p for p in dsn.walk() if p.get_content_type() == "text/plain").get_content()


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


def unreachable(outbound):
    """What the agent reports when no MX of the domain answered at all."""
    error = "no MX of dst.test answered: connection refused"
    return attrs.evolve(result_for(outbound, 451, f"4.4.1 {error}"), error=error)


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


def test_no_plumbed_proxy_waits_without_spending_attempts(world):
    world.proxy(up=False)
    message = world.submit(binding="proxied")
    world.clock.advance(5 * 20)  # twenty health-check intervals
    assert world.agent.calls == []
    saved = world.spool.messages[message.id]
    assert saved.recipients[0].attempts == 0 and saved.attempts == 0
    assert world.scheduler.counters()["attempts"] == 0
    assert world.scheduler.queue_depths() == {("proxied", "dst.test"): 1}
    world.proxy(up=True)  # the registry's StateChange releases the queue at once
    [(outbound, _)] = world.agent.calls
    assert outbound.binding == "proxied"


def test_proxy_wait_is_logged_once_per_queue_not_at_every_recheck(world):
    world.proxy(up=False)
    world.submit(binding="proxied")
    world.submit(binding="proxied")
    world.clock.advance(5 * 20)  # twenty health-check re-checks
    waits = [e for e in world.events if e.get("outcome") == "waiting for a plumbed proxy"]
    assert len(waits) == 1


def test_a_proxy_unplumbed_only_from_the_bindings_source_holds_the_queue(world):
    """The smtp health check failed from 127.0.0.9 only: the server stays plumbed for
    other sources, but this binding's mail waits instead of spending attempts."""
    server = world.config.proxy_servers[0]
    world.registry.record_sources(
        server, {"127.0.0.9": "no banner", "127.0.0.99": None}, at=world.clock.seconds()
    )
    world.submit(binding="proxied")
    world.clock.advance(5 * 20)
    assert world.registry.is_plumbed(server)
    assert world.agent.calls == []
    world.registry.record_sources(server, {"127.0.0.9": None}, at=world.clock.seconds())
    [(outbound, _)] = world.agent.calls
    assert outbound.binding == "proxied"


def test_attempt_that_failed_as_the_proxy_went_down_goes_when_it_is_back_not_at_backoff(world):
    """The attempt ran in the window before the health check saw the proxy go (the
    registry still said plumbed) and failed because of the proxy.  Once the check
    sees it go, that part waits for the proxy like one that never ran, and goes as
    soon as the proxy is plumbed again, not a whole backoff later."""
    early = world.submit(binding="proxied", rcpt_to=("early@dst.test",))
    world.agent.answer(0, 451, "4.4.1 mx busy")  # long before the proxy went
    world.clock.advance(30)
    message = world.submit(binding="proxied")
    world.agent.answer(1, 451, "4.4.0 no MX of dst.test took the message")
    world.clock.advance(2)
    world.proxy(up=False)
    world.clock.advance(30)  # past the 60 s retry of `early`: held now, not tried
    assert len(world.agent.calls) == 2
    assert world.spool.messages[message.id].recipients[0].attempts == 1
    world.proxy(up=True)
    assert sorted(o.id for o, _ in world.agent.pending()) == [early.id, message.id]
    assert world.clock.seconds() < START + 32 + 60, "before the backoff of `message`"


def test_message_waiting_for_proxy_expires_with_that_reason(world):
    world.proxy(up=False)
    message = world.submit(binding="proxied")
    world.clock.advance(3600)
    assert message.id in world.spool.removed
    assert world.agent.calls == []
    [notice] = world.spool.stored
    assert notice.binding == "proxied"
    dsn = parse(world.spool.contents[notice.id])
    report = delivery_status(dsn)
    assert "Status: 5.4.7" in report
    assert "Diagnostic-Code: smtp; 451 4.4.0 no plumbed ha_proxy_server for binding" in report
    assert "no plumbed ha_proxy_server for binding proxied" in human_part(dsn)


def test_message_behind_a_younger_one_in_a_held_queue_still_expires_on_time(world):
    old = world.submit(binding="proxied", rcpt_to=("old@dst.test",))
    world.agent.answer(0, 451, "4.4.1 mx busy")
    world.clock.advance(50)
    world.proxy(up=False)
    young = world.submit(binding="proxied", rcpt_to=("young@dst.test",))  # heads the queue
    world.clock.advance(3550 + 5)  # the hour of `old` is up; `young` has 45 s left
    assert old.id in world.spool.removed
    assert young.id not in world.spool.removed
    assert len(world.agent.calls) == 1


def test_held_queue_is_rechecked_after_health_interval(world):
    world.proxy(up=False)
    world.submit(binding="proxied")
    # A reload turns the proxy off for this binding; no StateChange is sent.
    world.config = parse_config(CONFIG.replace("ha_proxy_src_addr", "ha_proxy_bypass = true\n#"))
    world.clock.advance(4.9)
    assert world.agent.calls == []
    world.clock.advance(0.1)
    assert len(world.agent.calls) == 1


def test_waiting_result_from_agent_does_not_spend_attempt(world):
    message = world.submit()

    @attrs.frozen
    class Waiting:
        recipients: tuple
        waiting_for_proxy: bool = True

    _, d = world.agent.calls[0]
    d.callback(Waiting((RecipientResult("bob@dst.test", 451, "4.4.0 no plumbed proxy"),)))
    assert world.spool.messages[message.id].recipients[0].attempts == 0
    world.clock.advance(5)
    assert len(world.agent.calls) == 2


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


def test_message_removed_behind_our_back_is_forgotten(world):
    message = world.submit()
    world.agent.answer(0, 451, "4.0.0 later")
    world.spool.remove(message.id)
    world.clock.advance(60)
    assert len(world.agent.calls) == 1
    assert world.scheduler.queue_depths() == {}


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


def test_decisions_are_structured_log_events(world):
    message = world.submit()
    world.agent.answer(0, 451, "4.0.0 later")
    [event] = [e for e in world.events if e.get("next_attempt_at")]
    assert event["message_id"] == message.id
    assert (event["binding"], event["domain"]) == ("default", "dst.test")
    assert event["outcome"] == "1 temporary"
    assert event["next_attempt_at"] == START + 60


# -- with the real Spool --------------------------------------------------------------------


class InstantAgent:
    def __init__(self, code):
        self.code = code
        self.calls = []

    def deliver(self, outbound):
        self.calls.append(outbound)
        return defer.succeed(result_for(outbound, self.code, "4.0.0 later"))


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


def test_a_recipient_missing_from_the_agents_result_stays_pending_and_is_retried(world):
    message = world.submit(rcpt_to=("bob@dst.test", "carol@dst.test"))
    outbound, d = world.agent.calls[0]
    d.callback(attrs.evolve(result_for(outbound, 250), recipients=(
        RecipientResult("bob@dst.test", 250, "ok"),)))
    saved = world.spool.messages[message.id]
    assert [(r.status, r.code) for r in saved.recipients] == [(DELIVERED, 250), (PENDING, 451)]
    world.clock.advance(60)
    assert world.agent.calls[1][0].envelope.rcpt_to == ("carol@dst.test",)


# -- outbound throttles (IP warm-up) --------------------------------------------------------

THROTTLED = CONFIG + """
binding warm {
  max_connections = 10
  message_expiration = 86400
  outbound_throttle_messages = 3/3600
  domain gmail.test {
    outbound_throttle_messages = 2/600
  }
}
binding warm2 {
  max_connections = 10
  message_expiration = 86400
  outbound_throttle_messages = 3/3600
}
binding free {
  max_connections = 10
}
"""


@pytest.fixture
def throttled():
    yield from running(World(THROTTLED))


def answer_all(w, code=250):
    for i, (_, d) in enumerate(w.agent.calls):
        if not d.called:
            w.agent.answer(i, code)


def test_throttle_starts_n_at_once_and_the_next_only_when_the_window_allows(throttled):
    w = throttled
    messages = [w.submit("warm", rcpt_to=(f"u{i}@dst.test",)) for i in range(5)]
    assert w.agent.times == [START] * 3
    answer_all(w)
    # Waiting is not an attempt: no counter, no backoff, the message is not touched.
    assert w.scheduler.counters()["attempts"] == 3
    assert w.scheduler.counters()["waiting"] == 0
    assert w.spool.messages[messages[3].id] == messages[3]
    assert w.scheduler.queue_depths() == {("warm", "dst.test"): 2}
    w.clock.advance(3599.9)
    assert len(w.agent.calls) == 3
    w.clock.advance(0.1)
    assert w.agent.times == [START] * 3 + [START + 3600] * 2
    rcpts = [o.envelope.rcpt_to for o, _ in w.agent.calls[3:]]
    assert rcpts == [("u3@dst.test",), ("u4@dst.test",)]
    answer_all(w)
    assert w.spool.messages == {}


def test_a_message_counts_when_its_attempt_starts_even_if_it_fails(throttled):
    w = throttled
    for i in range(4):
        w.submit("warm", rcpt_to=(f"u{i}@dst.test",))
    answer_all(w, 451)
    w.clock.advance(60)  # the three retries are due, but the window is still full
    assert len(w.agent.calls) == 3
    w.clock.advance(3540)
    assert len(w.agent.calls) == 6
    assert w.agent.times[3:] == [START + 3600] * 3


def test_throttles_are_per_binding_and_domain_and_leave_unthrottled_queues_alone(throttled):
    w = throttled
    for binding, domain in [("warm", "dst.test"), ("warm", "gmail.test"),
                            ("warm2", "dst.test"), ("free", "dst.test")]:  # fmt: skip
        for i in range(4):
            w.submit(binding, rcpt_to=(f"u{i}@{domain}",))
    started = Counter((o.binding, o.domain) for o, _ in w.agent.calls)
    assert started == {
        ("warm", "dst.test"): 3,
        ("warm", "gmail.test"): 2,
        ("warm2", "dst.test"): 3,
        ("free", "dst.test"): 4,
    }
    answer_all(w)
    w.clock.advance(600)  # gmail.test's window (600 s) opened; dst.test's (an hour) did not
    started = Counter((o.binding, o.domain) for o, _ in w.agent.calls[12:])
    assert started == {("warm", "gmail.test"): 2}


def test_throttle_wait_is_logged_once_per_queue_not_per_message(throttled):
    w = throttled
    for i in range(6):
        w.submit("warm", rcpt_to=(f"u{i}@dst.test",))
    w.clock.advance(600)  # rechecks in between find the window still full
    waits = [e for e in w.events if "outbound_throttle_messages" in e["log_format"]]
    assert len(waits) == 1
    assert (waits[0]["binding"], waits[0]["domain"], waits[0]["throttle"]) == (
        "warm", "dst.test", "3/3600",
    )
    assert waits[0]["wait"] == 3600


def test_a_reload_that_raises_the_throttle_lets_a_waiting_queue_go(throttled):
    w = throttled
    for i in range(5):
        w.submit("warm", rcpt_to=(f"u{i}@dst.test",))
    assert len(w.agent.calls) == 3
    w.config = parse_config(THROTTLED.replace("3/3600", "10/3600"))  # the next warm-up step
    w.clock.advance(THROTTLE_RECHECK)
    assert w.agent.times[3:] == [START + THROTTLE_RECHECK] * 2


def test_message_waiting_for_its_throttle_still_expires(throttled):
    w = throttled
    slower = THROTTLED.replace("3/3600", "1/86400")
    w.config = parse_config(slower.replace("expiration = 86400", "expiration = 3600"))
    first = w.submit("warm", rcpt_to=("first@dst.test",))
    late = w.submit("warm", rcpt_to=("late@dst.test",))
    w.agent.answer(0, 250)
    assert first.id in w.spool.removed
    w.clock.advance(3600 + THROTTLE_RECHECK)
    assert late.id in w.spool.removed
    assert [o for o, _ in w.agent.calls if o.id == late.id] == []
    [notice] = w.spool.stored
    assert "Status: 5.4.7" in delivery_status(parse(w.spool.contents[notice.id]))


# -- queue states (why a queue is not moving) -----------------------------------------------


def states(w):
    """{(binding, domain): QueueState} from ``queue_states()``."""
    return {(s.binding, s.domain): s for s in w.scheduler.queue_states()}


def test_a_queue_with_attempts_running_or_startable_is_active(world):
    for i in range(3):  # max_connections = 2: two run, one waits for a slot
        world.submit(rcpt_to=(f"u{i}@dst.test",))
    [state] = world.scheduler.queue_states()
    assert (state.binding, state.domain, state.depth, state.in_flight) == (
        "default", "dst.test", 3, 2,
    )
    assert (state.state, state.until, state.reason) == ("active", None, None)


def test_a_queue_whose_messages_all_wait_for_their_retry_is_in_backoff_until_the_first(world):
    world.submit(rcpt_to=("a@dst.test",))
    world.agent.answer(0, 451, "4.7.1 try later")
    world.clock.advance(30)
    world.submit(rcpt_to=("b@dst.test",))
    world.agent.answer(1, 452, "4.2.2 mailbox full")
    state = states(world)[("default", "dst.test")]
    assert (state.state, state.depth, state.in_flight) == ("backoff", 2, 0)
    assert state.until == START + 60, "the first message's retry, not the second's"
    assert state.reason == "451 4.7.1 try later"
    world.clock.advance(30)  # the first retry starts: active again
    assert states(world)[("default", "dst.test")].state == "active"


def test_a_queue_held_for_a_proxy_says_so_with_the_holds_reason(world):
    world.proxy(up=False)
    world.submit(binding="proxied")
    state = states(world)[("proxied", "dst.test")]
    assert (state.state, state.depth, state.in_flight) == ("waiting_for_proxy", 1, 0)
    assert state.reason.startswith("4.4.0 no plumbed ha_proxy_server for binding proxied")
    assert state.until == START + 5, "the next look: one health-check interval"
    world.proxy(up=True)
    assert states(world)[("proxied", "dst.test")].state == "active"


def test_a_paused_destination_says_paused_until_its_retry_interval_is_over(world):
    for i in range(3):
        world.submit(rcpt_to=(f"u{i}@dst.test",))
    (first, d0), _ = world.agent.pending()
    d0.callback(unreachable(first))
    state = states(world)[("default", "dst.test")]
    assert (state.state, state.depth, state.in_flight) == ("paused", 3, 1)
    assert state.until == START + 60
    assert state.reason == "no MX of dst.test answered: connection refused"


def test_a_throttled_queue_says_when_its_window_allows_the_next_start(throttled):
    w = throttled
    for i in range(5):
        w.submit("warm", rcpt_to=(f"u{i}@dst.test",))
    answer_all(w)
    w.clock.advance(THROTTLE_RECHECK + 1)  # past the first recheck: still the window's end
    state = states(w)[("warm", "dst.test")]
    assert (state.state, state.depth, state.in_flight) == ("throttled", 2, 0)
    assert state.until == START + 3600
    assert state.reason == "outbound_throttle_messages 3/3600"


def test_queue_states_agree_with_queue_depths_and_list_only_queues_with_mail(world):
    world.submit(rcpt_to=("a@x.test", "b@x.test", "c@y.test"))
    world.agent.answer(0, 250)  # x.test delivered
    assert [s.domain for s in world.scheduler.queue_states()] == ["y.test"]
    assert {(s.binding, s.domain): s.depth for s in world.scheduler.queue_states()} == (
        world.scheduler.queue_depths()
    )


def test_a_throttled_queue_whose_window_a_reload_opened_says_when_it_looks_again(throttled):
    w = throttled
    for i in range(5):
        w.submit("warm", rcpt_to=(f"u{i}@dst.test",))
    w.config = parse_config(THROTTLED.replace("3/3600", "10/3600"))
    state = states(w)[("warm", "dst.test")]
    assert (state.state, state.until) == ("throttled", START + THROTTLE_RECHECK)
    assert state.reason == "outbound_throttle_messages 10/3600"
