"""Tests for hatwist.throttle: never more than N starts in a window, never idle when allowed."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hatwist.config.values import Throttle
from hatwist.throttle import SWEEP_INTERVAL, Throttles, ThrottleWindow

throttles = st.builds(Throttle, st.integers(1, 5), st.integers(1, 100))
# Gaps between the moments a sender wants to start: often zero (a backlog), sometimes long.
gaps = st.lists(
    st.one_of(st.just(0.0), st.floats(0, 250, allow_nan=False, allow_infinity=False)),
    max_size=60,
)


def starts_in_window(starts: list[float], begin: float, seconds: int) -> int:
    """Starts in the window [begin, begin + seconds)."""
    return sum(1 for s in starts if begin <= s < begin + seconds)


def greedy(throttle: Throttle, wants: list[float]) -> list[float]:
    """Start each wanted message at the first time the window allows, in order."""
    window = ThrottleWindow()
    starts: list[float] = []
    now = 0.0
    for want in wants:
        now = max(now, want)
        at = window.next_start(throttle, now)
        assert at >= now
        window.record(throttle, at)
        starts.append(at)
        now = at
    return starts


def wanted(steps: list[float]) -> list[float]:
    times, now = [], 0.0
    for step in steps:
        now += step
        times.append(now)
    return times


@given(throttles, gaps)
def test_never_more_than_n_starts_in_any_window(throttle, steps):
    starts = greedy(throttle, wanted(steps))
    # The fullest window of a set of points begins at one of them.
    for begin in starts:
        assert starts_in_window(starts, begin, throttle.seconds) <= throttle.messages


@given(throttles, gaps)
def test_never_idle_when_allowed(throttle, steps):
    """Each start is as early as the limit allows: a moment earlier, N starts were in
    the window ending then (or the message was not wanted yet)."""
    wants = wanted(steps)
    starts = greedy(throttle, wants)
    for i, (want, at) in enumerate(zip(wants, starts, strict=True)):
        earliest = max(want, starts[i - 1] if i else 0.0)
        if at == earliest:
            continue
        # Delayed: the start N back must have been exactly one window earlier.
        assert i >= throttle.messages
        assert at == starts[i - throttle.messages] + throttle.seconds


def test_n_start_at_once_then_the_next_when_the_first_leaves_the_window():
    hourly = Throttle(3, 3600)
    window = ThrottleWindow()
    for _ in range(3):
        assert window.next_start(hourly, 10.0) == 10.0
        window.record(hourly, 10.0)
    assert window.next_start(hourly, 10.0) == 3610.0
    assert window.next_start(hourly, 3609.9) == 3610.0
    assert window.next_start(hourly, 3610.0) == 3610.0


def test_a_tighter_throttle_after_a_reload_applies_to_the_starts_already_made():
    window = ThrottleWindow()
    for t in (0.0, 1.0, 2.0):
        window.record(Throttle(10, 60), t)
    assert window.next_start(Throttle(10, 60), 3.0) == 3.0
    assert window.next_start(Throttle(2, 60), 3.0) == 61.0


def test_keys_are_independent_and_unthrottled_keys_keep_nothing():
    per_queue: Throttles[tuple[str, str]] = Throttles()
    one = Throttle(1, 60)
    per_queue.record(("b1", "gmail.com"), one, 0.0)
    assert per_queue.next_start(("b1", "gmail.com"), one, 0.0) == 60.0
    assert per_queue.next_start(("b2", "gmail.com"), one, 0.0) == 0.0
    assert per_queue.next_start(("b1", "yahoo.com"), one, 0.0) == 0.0
    per_queue.record(("b1", "other.example"), None, 0.0)
    assert len(per_queue) == 1
    # A throttle removed by a reload forgets the window.
    assert per_queue.next_start(("b1", "gmail.com"), None, 0.0) == 0.0
    assert len(per_queue) == 0


def test_windows_that_emptied_are_swept():
    per_queue: Throttles[str] = Throttles()
    for n in range(100):
        per_queue.record(f"domain{n}", Throttle(5, 60), 0.0)
    assert len(per_queue) == 100
    per_queue.record("busy", Throttle(5, 3600), SWEEP_INTERVAL)
    assert len(per_queue) == 1
