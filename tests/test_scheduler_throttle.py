"""
Tests for hatwist.scheduler's outbound throttles (IP warm-up): a message counts when its
attempt starts; waiting is no attempt.
"""

from __future__ import annotations

from collections import Counter

import pytest

from hatwist.config import parse_config
from hatwist.scheduler import THROTTLE_RECHECK
from tests.test_scheduler_support import (
    START,
    THROTTLED,
    World,
    answer_all,
    delivery_status,
    parse,
    running,
)


@pytest.fixture
def throttled():
    yield from running(World(THROTTLED))


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
