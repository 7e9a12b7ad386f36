"""Outbound message throttles: at most N starts in any window of S seconds.

(tests: tests/test_throttle.py)

``outbound_throttle_messages = "N/SECONDS"`` is how operators warm up a new source IP:
a receiver judges a new IP by its volume per period, so a burst of 2N in the seconds
around a window's edge would defeat the point. A token bucket allows exactly that burst;
a sliding log of the last N start times does not, and answers both questions the
scheduler asks exactly: may one more start now, and if not, when. Pure: times are
passed in, nothing here reads a clock or holds a timer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

from hatwist.config.values import Throttle

K = TypeVar("K", bound=Hashable)

#: Seconds between sweeps of windows nobody asked about since they emptied: a relay that
#: has sent to a million domains under a throttle must not keep their start times forever.
SWEEP_INTERVAL = 300.0


class ThrottleWindow:
    """The recent starts of one throttled queue: at most ``messages`` of them matter."""

    def __init__(self) -> None:
        self._starts: deque[float] = deque()
        self._seconds = 0.0  # of the throttle last applied, for sweeping

    def next_start(self, throttle: Throttle, now: float) -> float:
        """The earliest time, not before ``now``, at which one more may start.

        ``now`` itself when one may start at once. A throttle changed by a reload applies
        at once to the starts remembered (at most its new ``messages`` of them).
        """
        self._forget(throttle, now)
        if len(self._starts) < throttle.messages:
            return now
        # The window is full: the next start may come when the oldest of the last N
        # starts leaves it. The same sum decides _forget, so the two never disagree.
        return max(now, self._starts[-throttle.messages] + throttle.seconds)

    def record(self, throttle: Throttle, now: float) -> None:
        """One start at ``now``; the caller asked :meth:`next_start` first."""
        self._forget(throttle, now)
        self._starts.append(now)
        self._seconds = throttle.seconds

    def give_back(self, at: float) -> None:
        """Forget one start recorded at ``at``: it never reached an MX, so it must not
        count against the window (nothing happens if it was forgotten already)."""
        starts = self._starts
        for i in range(len(starts) - 1, -1, -1):
            if starts[i] == at:
                del starts[i]
                return

    def is_empty(self, now: float) -> bool:
        """Whether no remembered start still counts against any throttle at ``now``."""
        return not self._starts or self._starts[-1] + self._seconds <= now

    def _forget(self, throttle: Throttle, now: float) -> None:
        starts = self._starts
        while starts and (starts[0] + throttle.seconds <= now or len(starts) > throttle.messages):
            starts.popleft()


class Throttles(Generic[K]):
    """A :class:`ThrottleWindow` per key (a queue's (binding, domain)).

    The throttle is passed in at every question rather than stored, so a config reload
    takes effect at the next question; ``None`` means unthrottled and keeps nothing.
    """

    def __init__(self) -> None:
        self._windows: dict[K, ThrottleWindow] = {}
        self._next_sweep: float | None = None

    def next_start(self, key: K, throttle: Throttle | None, now: float) -> float:
        """When ``key`` may start one more: ``now`` when at once (or unthrottled)."""
        if throttle is None:
            self._windows.pop(key, None)
            return now
        window = self._windows.get(key)
        return now if window is None else window.next_start(throttle, now)

    def record(self, key: K, throttle: Throttle | None, now: float) -> None:
        """``key`` started one at ``now`` (nothing to remember when unthrottled)."""
        if throttle is None:
            return
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = ThrottleWindow()
        window.record(throttle, now)
        self._sweep(now)

    def give_back(self, key: K, at: float) -> None:
        """The start ``key`` recorded at ``at`` did not count (it never reached an MX)."""
        window = self._windows.get(key)
        if window is not None:
            window.give_back(at)

    def __len__(self) -> int:
        """Keys with a window kept (for tests of the sweep)."""
        return len(self._windows)

    def _sweep(self, now: float) -> None:
        if self._next_sweep is not None and now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_INTERVAL
        for key in [k for k, w in self._windows.items() if w.is_empty(now)]:
            del self._windows[key]
