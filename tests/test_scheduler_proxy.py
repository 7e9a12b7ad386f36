"""
Tests for hatwist.scheduler's waits for a plumbed proxy (hatwist.scheduler._proxy and the
holds of ._waits): no attempt spent, logged once, released by the registry, recalled.
"""

from __future__ import annotations

import attrs
import pytest

from hatwist.config import parse_config
from hatwist.delivery import RecipientResult
from tests.test_scheduler_support import (
    CONFIG,
    START,
    World,
    delivery_status,
    human_part,
    parse,
    running,
)


@pytest.fixture
def world():
    yield from running(World())


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
