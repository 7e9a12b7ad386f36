# -*- test-case-name: tests.shared.test_idle -*-
"""Slots given back a moment ago, kept for the next start of the same queue.

Asking Redis costs a thread hand-off and a round trip; on a busy unthrottled queue the
slot an attempt just gave back is wanted again within milliseconds by the next one.  So
a finished lease lingers here for ``linger`` seconds: a start of its queue that needs no
throttle check takes it back without asking (the fleet's count never changed: the
lease stayed in Redis), and one still unused after ``linger`` is released for real.
Another node may wait that long for the slot; ``linger`` is kept short for that.
Pure: times are passed in.
"""

from __future__ import annotations

from collections import deque

from ._values import Lease, QueueKey

#: Seconds a given-back slot waits for the next start of its queue.
LINGER = 0.5


class IdleLeases:
    """Idle leases per queue, newest last; at most as many as were ever held at once."""

    def __init__(self, linger: float = LINGER) -> None:
        self.linger = linger
        self._idle: dict[QueueKey, deque[tuple[float, Lease]]] = {}
        self._count = 0

    def add(self, lease: Lease, now: float) -> None:
        self._idle.setdefault(lease.key, deque()).append((now, lease))
        self._count += 1

    def take(self, key: QueueKey) -> Lease | None:
        """The most recently given-back lease of ``key``, if any (no longer idle)."""
        idle = self._idle.get(key)
        if not idle:
            return None
        _, lease = idle.pop()
        self._count -= 1
        if not idle:
            del self._idle[key]
        return lease

    def expired(self, now: float) -> list[Lease]:
        """Take every lease idle for ``linger`` or more: to be released for real."""
        out: list[Lease] = []
        for key in list(self._idle):
            idle = self._idle[key]
            while idle and idle[0][0] + self.linger <= now:
                out.append(idle.popleft()[1])
            if not idle:
                del self._idle[key]
        self._count -= len(out)
        return out

    def take_all(self) -> list[Lease]:
        out = [lease for idle in self._idle.values() for _, lease in idle]
        self._idle.clear()
        self._count = 0
        return out

    def next_expiry(self) -> float | None:
        """When the oldest idle lease expires, or None when none is idle."""
        if not self._idle:
            return None
        return min(idle[0][0] for idle in self._idle.values()) + self.linger

    def __len__(self) -> int:
        return self._count
