# -*- test-case-name: tests.test_scheduler -*-
"""
Queues per (binding, domain) and how they take turns.

A *part* is one message's pending recipients at one domain: what one attempt
sends.  Due parts wait in the queue of their (binding, domain); the
:class:`Board` knows which queues could start an attempt now and hands them out
round robin, so a busy domain cannot starve a quiet one.  No reactor, no I/O:
the scheduler owns the timers and the attempts.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from typing import Any

import attrs
from twisted.internet.interfaces import IDelayedCall

QueueKey = tuple[str, str]
"""(binding, domain)."""


@attrs.define(eq=False, weakref_slot=False)
class Part:
    """
    One message's pending recipients at one domain: what one attempt sends.

    A part is current while its entry holds it (``part in entry.parts``); one
    that was replaced or whose message finished is stale, and whatever still
    refers to it (a queue's line, the due heap) skips it.  Slots and nothing
    optional allocated: a million of them wait in a large queue.
    """

    entry: Any
    """The scheduler's entry of its message (``hatwist.scheduler._ledger.Entry``)."""
    key: QueueKey
    """(binding, domain), shared by every part of the queue."""
    due: float
    failed_at: float | None = None
    """When its last attempt ended in a temporary failure (None: none since)."""
    heap_seq: int | None = None
    """Its live entry in the due heap while it waits there (None: not waiting)."""

    @property
    def message_id(self) -> str:
        return self.entry.message.id


@attrs.define(eq=False)
class Queue:
    """The parts for one (binding, domain) that are due, and what is running."""

    key: QueueKey
    ready: deque[Part] = attrs.Factory(deque)
    in_flight: int = 0
    held: bool = False
    """Held for a plumbed proxy: starts nothing until released."""
    waiting: bool = False
    """Held for a proxy since the last attempt that ran (for logging once)."""
    paused: bool = False
    """Held because its destination answered no connection at all."""
    paused_at: float | None = None
    """When the pause began (a reload re-times it from there)."""
    release: IDelayedCall | None = None
    reason: str | None = None
    """Why it is held or paused (for the status faces); None when it is not."""
    throttled: bool = False
    """Its outbound throttle is exhausted: starts nothing until ``unthrottle`` runs."""
    throttle_noted: bool = False
    """Its throttle wait was logged; a queue logs that once, until it drains."""
    unthrottle: IDelayedCall | None = None
    oldest: float = float("inf")
    """No part in ``ready`` was received before this (a lower bound): a queue
    that waits need not look for expired parts before it could hold one."""


class Board:
    """
    The live queues, and the round-robin line of those that could start an
    attempt now.

    :param max_connections: ``(binding, domain) -> int``, asked at every
        change, so a config reload takes effect at once.
    """

    def __init__(self, max_connections: Callable[[QueueKey], int]) -> None:
        self._max_connections = max_connections
        self._queues: dict[QueueKey, Queue] = {}
        self._startable: OrderedDict[QueueKey, None] = OrderedDict()

    def __iter__(self) -> Iterator[Queue]:
        return iter(list(self._queues.values()))

    def get(self, key: QueueKey) -> Queue | None:
        """The live queue of ``key``, if it has one."""
        return self._queues.get(key)

    def is_live(self, queue: Queue) -> bool:
        """Whether ``queue`` is still on the board (not one from before a stop)."""
        return self._queues.get(queue.key) is queue

    def add(self, part: Part, *, first: bool = False) -> Queue:
        """Put a due part in its queue, at the back (or the front: a held part)."""
        queue = self._queues.get(part.key)
        if queue is None:
            queue = self._queues[part.key] = Queue(part.key)
        if first:
            queue.ready.appendleft(part)
        else:
            queue.ready.append(part)
        received_at = part.entry.message.received_at
        if received_at < queue.oldest:
            queue.oldest = received_at
        if queue.key not in self._startable:  # one more part cannot make it unstartable
            self.refresh(queue)
        return queue

    def refresh(self, queue: Queue) -> None:
        """Keep the line true to whether ``queue`` could start an attempt; drop
        a queue with nothing left to do."""
        if not self.is_live(queue):
            return
        if (
            queue.ready
            and not queue.held
            and not queue.throttled
            and queue.in_flight < self._max_connections(queue.key)
        ):
            if queue.key not in self._startable:
                self._startable[queue.key] = None
        else:
            self._startable.pop(queue.key, None)
            idle = not queue.ready and not queue.in_flight
            if idle and not queue.held and not queue.throttled:  # no timer left behind
                del self._queues[queue.key]

    def sweep(self, queue: Queue, keep: Callable[[Part], bool]) -> None:
        """Keep only the parts of ``queue``'s line that ``keep`` says to (one pass,
        in order), and make ``queue.oldest`` exact again."""
        kept: deque[Part] = deque()
        oldest = float("inf")
        for part in queue.ready:
            if keep(part):
                kept.append(part)
                oldest = min(oldest, part.entry.message.received_at)
        queue.ready, queue.oldest = kept, oldest
        self.refresh(queue)

    def next(self) -> tuple[Queue, Part] | None:
        """The next queue in line and its first part (taken off the queue), or
        None.  Call :meth:`refresh` on the queue afterwards to put it back in line."""
        if not self._startable:
            return None
        key, _ = self._startable.popitem(last=False)
        queue = self._queues[key]
        return queue, queue.ready.popleft()
