"""
Tests for hatwist.scheduler's queue states (why a queue is not moving), as queue_states()
reports them to /status, /metrics and the page.
"""

from __future__ import annotations

import pytest

from hatwist.config import parse_config
from hatwist.scheduler import THROTTLE_RECHECK
from tests.test_scheduler_support import (
    START,
    THROTTLED,
    World,
    answer_all,
    running,
    states,
    unreachable,
)


@pytest.fixture
def world():
    yield from running(World())


@pytest.fixture
def throttled():
    yield from running(World(THROTTLED))


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
