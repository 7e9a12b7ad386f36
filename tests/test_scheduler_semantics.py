"""
Tests for hatwist.scheduler's smaller promises of issue 12 and its neighbours: an attempt
held for a proxy spends no throttle slot, the removal line names its binding and counts,
a large message is read by the session that sends it, a queue pauses only when no MX
answered at all, and a reload re-times pauses and backoffs.  The World is in
tests.test_scheduler_support.
"""

from __future__ import annotations

import attrs
import pytest
from twisted.logger import formatEvent

from hatwist.config import parse_config
from tests.test_scheduler_support import (
    CONFIG,
    START,
    THROTTLED,
    World,
    answer_all,
    result_for,
    running,
    unreachable,
)

#: Messages over this many bytes are read by the session (the brief's 256 KiB).
LOAD_CONTENT_ABOVE = 256 * 1024


@pytest.fixture
def world():
    yield from running(World())


@pytest.fixture
def throttled():
    yield from running(World(THROTTLED))


def waiting_for_proxy(outbound):
    """The agent's answer when every MX address was skipped for want of a plumbed proxy."""
    result = result_for(outbound, 451, "4.4.4 no plumbed ha_proxy_server")
    return attrs.evolve(result, error="no usable route", waiting_for_proxy=True,
                        route=None, mx_host=None, mx_address=None)


# -- 5. a held attempt spends no throttle slot -------------------------------------------


def test_an_attempt_held_for_a_proxy_gives_its_throttle_slot_back(throttled):
    w = throttled
    for i in range(3):
        w.submit("warm", rcpt_to=(f"u{i}@dst.test",))
    assert len(w.agent.calls) == 3  # 3/3600: the window is full
    outbound, d = w.agent.calls[0]
    d.callback(waiting_for_proxy(outbound))
    w.agent.answer(1, 250)
    w.agent.answer(2, 250)
    w.clock.advance(5)  # the hold is re-checked after one health-check interval
    # It never reached an MX, so it did not count: it starts now, not in an hour.
    assert len(w.agent.calls) == 4
    assert w.agent.calls[3][0].id == outbound.id
    assert w.agent.times[3] == START + 5


# -- 6. the removal line ---------------------------------------------------------------------


def test_the_removal_line_names_the_binding_and_what_became_of_the_recipients(world):
    message = world.submit(rcpt_to=("bob@dst.test", "carol@dst.test", "dan@dst.test"))
    world.agent.answer(0, 250, codes={"carol@dst.test": 550})
    [line] = [formatEvent(e) for e in world.events if e.get("outcome") == "removed"]
    assert line == (f"message {message.id} binding default: removed "
                    "(all recipients done: 2 delivered, 1 bounced)")


# -- 7. content read per session for large messages -----------------------------------------


def test_a_large_message_is_read_by_the_session_not_before_the_attempt(world):
    big = b"Subject: big\r\n\r\n" + b"x" * LOAD_CONTENT_ABOVE
    small = world.submit(rcpt_to=("a@dst.test",))
    large = world.submit(rcpt_to=("b@dst.test",), content=big, size=len(big))
    by_id = {o.id: o for o, _ in world.agent.calls}
    assert by_id[small.id].content == world.spool.contents[small.id]
    assert by_id[small.id].load_content is None
    assert by_id[large.id].content == b""  # an attempt still connecting holds none of it
    assert by_id[large.id].load_content().result == big
    answer_all(world)
    assert world.spool.messages == {}


def test_a_large_message_removed_while_its_attempt_runs_is_forgotten_not_retried(world):
    big = b"x" * (LOAD_CONTENT_ABOVE + 1)
    message = world.submit(content=big, size=len(big))
    [(outbound, d)] = world.agent.calls
    world.spool.remove(message.id)  # e.g. `hatwist queue delete`
    failed = outbound.load_content()
    failed.addErrback(lambda f: None)  # the agent turns this into a 451 of its own
    d.callback(result_for(outbound, 451, "4.3.0 internal error: MessageNotFound"))
    assert world.scheduler.queue_depths() == {}
    world.clock.advance(3600)
    assert len(world.agent.calls) == 1
    assert world.spool.stored == []


# -- 3. a queue pauses only when no MX of the domain was reached ------------------------------


def lost_after_greeting(outbound):
    """A session that greeted and then broke (mid-transaction, after the dot, or at the
    attempt deadline during DATA): the agent's error, with ``mx_reached``."""
    error = "mx.dst.test [192.0.2.1] via direct: connection lost after the final dot"
    return attrs.evolve(result_for(outbound, 451, f"4.4.1 {error}"), error=error,
                        mx_reached=True)


def test_a_session_lost_after_greeting_does_not_pause_the_queue_but_no_mx_at_all_does(world):
    for i in range(5):
        world.submit(rcpt_to=(f"u{i}@dst.test",))
    assert len(world.agent.calls) == 2  # max_connections = 2
    outbound, d = world.agent.calls[0]
    d.callback(lost_after_greeting(outbound))
    # The next message starts at once: this MX answers; one session broke.
    assert len(world.agent.calls) == 3
    assert world.scheduler.queue_states()[0].state != "paused"
    outbound, d = world.agent.calls[1]
    d.callback(unreachable(outbound))  # no MX greeted: the queue pauses
    assert len(world.agent.calls) == 3
    assert world.scheduler.queue_states()[0].state == "paused"


def test_a_reload_with_a_shorter_retry_interval_shortens_a_running_pause(world):
    for i in range(3):
        world.submit(rcpt_to=(f"u{i}@dst.test",))
    outbound, d = world.agent.calls[0]
    d.callback(unreachable(outbound))  # paused for retry_interval = 60 s
    world.clock.advance(10)
    world.config = parse_config(CONFIG.replace("retry_interval = 60", "retry_interval = 20"))
    world.scheduler.config_changed()
    world.clock.advance(9.9)
    assert len(world.agent.calls) == 2
    world.clock.advance(0.1)  # 20 s after the pause began
    assert len(world.agent.calls) == 3


def test_a_reload_re_times_waiting_backoffs_to_the_new_retry_interval(world):
    message = world.submit()
    world.agent.answer(0, 451)  # the retry is due at START + 60
    world.clock.advance(5)
    world.config = parse_config(CONFIG.replace("retry_interval = 60", "retry_interval = 10"))
    world.scheduler.config_changed()
    world.clock.advance(4.9)
    assert len(world.agent.calls) == 1
    world.clock.advance(0.1)  # 10 s after the failure
    assert [o.id for o, _ in world.agent.calls] == [message.id, message.id]
    # A longer interval lengthens the wait the same way.
    world.agent.answer(1, 451)  # second failure: 2 x 10 s
    world.config = parse_config(CONFIG.replace("retry_interval = 60", "retry_interval = 30"))
    world.scheduler.config_changed()
    world.clock.advance(59.9)
    assert len(world.agent.calls) == 2
    world.clock.advance(0.1)
    assert len(world.agent.calls) == 3
    assert world.agent.times == [START, START + 10, START + 10 + 60]
