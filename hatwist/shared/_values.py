# -*- test-case-name: tests.shared.test_values -*-
"""The answers of the limits and the arithmetic of degraded mode.

A start of a delivery attempt needs two things at once: a connection slot of its queue
(``max_connections`` per (binding, domain)) and room in its queue's outbound throttle
(``outbound_throttle_messages``).  :class:`Decision` is the one answer to "may this
attempt start?": granted with a :class:`Lease` to give back at its end, or refused with
how long to wait before asking again.  Pure: nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import enum
from urllib.parse import quote

import attrs

from hatwist.config.values import Throttle

QueueKey = tuple[str, str]
"""(binding, destination domain): the scope of both limits."""


class Refusal(enum.Enum):
    """Why an attempt may not start now."""

    SLOTS = "slots"
    """All ``max_connections`` slots of the queue are taken (somewhere in the fleet)."""
    THROTTLE = "throttle"
    """The queue's throttle window is full until ``wait`` has passed."""
    BUSY = "busy"
    """Too many questions to Redis are already waiting for an answer: ask again soon."""


@attrs.frozen
class Lease:
    """One connection slot held by one attempt; give it back with ``finish``.

    ``id`` is unique in the fleet (the node's id and a counter), so a lease left by a
    node that died is told apart from every live one and simply expires.
    """

    key: QueueKey
    id: str
    at: float | None = attrs.field(default=None, eq=False)
    """When its start was written into this process's throttle window (None: the
    queue was unthrottled), so :meth:`ILimits.unstart` can take that start out."""
    start: str | None = attrs.field(default=None, eq=False)
    """The id of its start in the fleet's throttle window when not ``id`` (a start
    made from a credit, see :mod:`hatwist.shared._credits`)."""

    @property
    def start_id(self) -> str:
        return self.start or self.id


@attrs.frozen
class Decision:
    """May one attempt of ``key`` start now: a lease when granted, else why not and
    how many seconds to wait before asking again (``None``: until a slot is given
    back here, which the caller hears about by itself)."""

    lease: Lease | None
    refusal: Refusal | None = None
    wait: float | None = None

    @property
    def granted(self) -> bool:
        return self.lease is not None

    @classmethod
    def grant(cls, lease: Lease) -> Decision:
        return cls(lease)

    @classmethod
    def refuse(cls, refusal: Refusal, wait: float | None) -> Decision:
        return cls(None, refusal, wait)


def divided_slots(max_connections: int, nodes: int) -> int:
    """A node's share of a fleet-wide ``max_connections`` while Redis is away.

    Rounded down, so the shares of ``nodes`` nodes never add up to more than the
    fleet-wide value: with more nodes than slots, a node gets none (and waits for
    Redis) rather than letting the fleet open more connections than configured.
    """
    return max_connections // max(1, nodes)


def divided_throttle(throttle: Throttle | None, nodes: int) -> Throttle | int | None:
    """A node's share of a fleet-wide throttle while Redis is away.

    ``N/S`` becomes ``(N // nodes)/S`` (the same window, a rounded-down share, so the
    fleet starts at most N in any window that lies within the outage).  ``0`` when the
    share rounds down to nothing: no start until Redis returns; ``None`` stays None.
    """
    if throttle is None:
        return None
    share = throttle.messages // max(1, nodes)
    return Throttle(share, throttle.seconds) if share else 0


def redis_key(prefix: str, kind: str, key: QueueKey) -> str:
    """The Redis key of one queue's ``kind`` ("slots" or "throttle") sorted set.

    Binding and domain are percent-quoted so a ``:`` in either cannot make two
    queues share a key.
    """
    binding, domain = key
    return f"{prefix}:{kind}:{quote(binding, safe='')}:{quote(domain, safe='')}"
