# -*- test-case-name: tests.shared.test_local -*-
"""Limits kept in this process: today's behaviour, and the fallback of shared ones.

Pure: the caller passes the time, nothing here reads a clock or holds a timer.
"""

from __future__ import annotations

import itertools

from zope.interface import implementer

from hatwist.config.values import Throttle
from hatwist.throttle import Throttles

from ._interfaces import ILimits
from ._values import Decision, Lease, QueueKey, Refusal


@implementer(ILimits)
class LocalLimits:
    """Connection slots counted per queue and a sliding log per throttled queue.

    Answers at once (a :class:`Decision`, never a Deferred).  A slot refusal carries no
    wait: the slot comes back here, at a :meth:`finish` the caller sees happen.
    """

    def __init__(self, lease_prefix: str = "local") -> None:
        self._throttles: Throttles[QueueKey] = Throttles()
        self._slots: dict[QueueKey, int] = {}
        self._ids = (f"{lease_prefix}:{n}" for n in itertools.count(1))

    def start(
        self, key: QueueKey, throttle: Throttle | None, max_connections: int, now: float
    ) -> Decision:
        if self._slots.get(key, 0) >= max_connections:
            return Decision.refuse(Refusal.SLOTS, None)
        allowed_at = self._throttles.next_start(key, throttle, now)
        if allowed_at > now:
            return Decision.refuse(Refusal.THROTTLE, allowed_at - now)
        return Decision.grant(self.take(key, throttle, now))

    def next_start(self, key: QueueKey, throttle: Throttle | None, now: float) -> float:
        """When the throttle of ``key`` allows one more start (for status pages)."""
        return self._throttles.next_start(key, throttle, now)

    def take(self, key: QueueKey, throttle: Throttle | None, now: float,
             lease_id: str | None = None, start: str | None = None) -> Lease:  # fmt: skip
        """Count a start decided elsewhere (by Redis), so that this process's own
        share is known if it ever has to decide alone (``start``: the id of the start
        in the fleet's window, when not the lease's)."""
        self._throttles.record(key, throttle, now)
        self._slots[key] = self._slots.get(key, 0) + 1
        return Lease(key, next(self._ids) if lease_id is None else lease_id,
                     at=None if throttle is None else now, start=start)

    def unstart(self, lease: Lease) -> None:
        if lease.at is not None:
            self._throttles.give_back(lease.key, lease.at)

    def finish(self, lease: Lease) -> None:
        held = self._slots.get(lease.key, 0) - 1
        if held > 0:
            self._slots[lease.key] = held
        else:
            self._slots.pop(lease.key, None)

    def in_flight(self, key: QueueKey) -> int:
        """Slots of ``key`` held in this process."""
        return self._slots.get(key, 0)
