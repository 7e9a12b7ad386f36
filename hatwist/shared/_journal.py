# -*- test-case-name: tests.shared.test_journal -*-
"""This node's own recent starts, to tell a Redis that comes back about them.

While Redis is away a node starts attempts alone; when Redis returns (perhaps restarted
empty) the fleet-wide windows must count those starts, or the fleet could start a whole
window's worth more within the same window.  The journal keeps, per throttled queue,
the last ``messages`` starts (time and id) that still count: the same bound as the
throttle itself, so a hostile volume cannot grow it.  Pure: times are passed in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from hatwist.config.values import Throttle

from ._values import QueueKey

#: Seconds between sweeps of queues whose starts all left their window.
SWEEP_INTERVAL = 300.0


class Journal:
    """(time, id) of this node's starts that still count, per throttled queue."""

    def __init__(self) -> None:
        self._starts: dict[QueueKey, tuple[Throttle, deque[tuple[float, str]]]] = {}
        self._next_sweep = 0.0

    def record(self, key: QueueKey, throttle: Throttle | None, now: float, start_id: str) -> None:
        if throttle is None:
            self._starts.pop(key, None)
            return
        _, starts = self._starts.get(key, (throttle, None))
        if starts is None:
            starts = deque()
        starts.append((now, start_id))
        while len(starts) > throttle.messages:
            starts.popleft()
        self._starts[key] = (throttle, starts)
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_INTERVAL
            for old in [k for k in self._starts if not self._live(k, now)]:
                del self._starts[old]

    def recent(self, now: float) -> Iterator[tuple[QueueKey, Throttle, list[tuple[float, str]]]]:
        """Every queue's starts still inside its window at ``now``, oldest first."""
        for key, (throttle, starts) in list(self._starts.items()):
            live = [(t, i) for t, i in starts if t + throttle.seconds > now]
            if live:
                yield key, throttle, live

    def __len__(self) -> int:
        return len(self._starts)

    def _live(self, key: QueueKey, now: float) -> bool:
        throttle, starts = self._starts[key]
        return bool(starts) and starts[-1][0] + throttle.seconds > now
