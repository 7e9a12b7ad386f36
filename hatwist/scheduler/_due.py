# -*- test-case-name: tests.test_scheduler_due -*-
"""
Parts waiting for their due time: one heap per queue, one timer for all of them.

A DelayedCall per waiting part costs the reactor a heap entry and an object of
several hundred bytes each, and makes every "when does this queue next try?"
a walk over all of them.  Here each queue keeps its own heap of
``(due, seq, part)``, a heap of queues orders them by their earliest part, and
one DelayedCall waits for the earliest of all.  So:

- adding a part is O(log n), taking one back (:meth:`DueHeap.discard`) is
  O(1): the entry is only marked dead (``part.heap_seq = None``) and dropped
  when it reaches the top of its heap;
- :meth:`DueHeap.head` -- a queue's next retry, for the status faces -- is
  amortised O(1);
- at most :data:`MAX_DUE_PER_TURN` parts are handed out per reactor turn, so
  a mass retry after an outage cannot stall the reactor; the rest follow in
  the next turns; a reload re-times :data:`RETIME_PER_TURN` a turn.

``seq`` keeps parts due at the same moment in the order they were added.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall

from ._queues import Part, QueueKey

#: Parts handed out in one reactor turn at most (the rest: in the next turns).
MAX_DUE_PER_TURN = 10_000
#: Parts a reload re-times per reactor turn (some 10 ms: bench_reload.py).
RETIME_PER_TURN = 1_000

_Item = tuple[float, int, Part]


def _alive(item: _Item) -> bool:
    return item[2].heap_seq == item[1]


class DueHeap:
    """
    :param reactor: ``IReactorTime``.
    :param on_due: called with the parts whose time has come (a list, in due
        order within each queue); they are no longer in the heap.
    """

    def __init__(self, reactor: Any, on_due: Callable[[list[Part]], None]) -> None:
        self._reactor = reactor
        self._on_due = on_due
        self._heaps: dict[QueueKey, list[_Item]] = {}
        # (time, key): the time of a queue's earliest part when it was pushed.
        # Entries whose time is no longer _top_at[key] are superseded, skipped.
        self._top: list[tuple[float, QueueKey]] = []
        self._top_at: dict[QueueKey, float] = {}
        self._seq = itertools.count(1)
        self._timer: IDelayedCall | None = None
        self._stopped = False
        self._pushed = 0  # the seq of the last part pushed
        self._retiming: defer.Deferred[None] | None = None
        self._retime_left: dict[QueueKey, None] = {}

    def __len__(self) -> int:
        """Heap entries held, dead ones included until they are dropped."""
        return sum(len(h) for h in self._heaps.values())

    def push(self, part: Part) -> None:
        """Wait for ``part.due`` (the part must not be in the heap already)."""
        seq = self._pushed = next(self._seq)
        part.heap_seq = seq
        heap = self._heaps.get(part.key)
        if heap is None:
            heap = self._heaps[part.key] = []
        else:
            self._clean(heap)
        item = (part.due, seq, part)
        heapq.heappush(heap, item)
        if heap[0] is item:
            self._announce(part.key, part.due)

    @staticmethod
    def discard(part: Part) -> None:
        """Take ``part`` out (O(1): its entry is dropped when it comes up)."""
        part.heap_seq = None

    @staticmethod
    def waiting(part: Part) -> bool:
        """Whether ``part`` waits in the heap."""
        return part.heap_seq is not None

    def head(self, key: QueueKey) -> Part | None:
        """The part of queue ``key`` that is due first, or None."""
        heap = self._heaps.get(key)
        if heap is None:
            return None
        self._clean(heap)
        if not heap:
            del self._heaps[key]
            return None
        return heap[0][2]

    def parts(self, key: QueueKey) -> Iterator[Part]:
        """The parts of queue ``key`` waiting here (in heap order, not sorted), for
        ``hatwist queue list``: one pass over that queue's heap, no other queue's."""
        return (item[2] for item in self._heaps.get(key, ()) if item[2].heap_seq == item[1])

    def take(self, key: QueueKey) -> list[Part]:
        """Take every part of queue ``key`` out (``hatwist queue flush``): they are
        no longer waiting, in due order.  One pass over that queue's heap."""
        heap = self._heaps.pop(key, None)
        self._top_at.pop(key, None)  # its entries in the top heap are superseded now
        if heap is None:
            return []
        parts = [item[2] for item in sorted(heap) if _alive(item)]
        for part in parts:
            part.heap_seq = None
        self._arm()
        return parts
    def retime(
        self, due_of: Callable[[Part], float], changed: Callable[[QueueKey], bool]
    ) -> defer.Deferred[None]:
        """
        Give every waiting part of each queue ``changed(key)`` names the due time
        ``due_of(part)`` (a reload changed its retry interval), keeping the order of
        parts due together, :data:`RETIME_PER_TURN` parts per reactor turn (9 us each:
        a million in one turn stopped the relay 9 s).  The other queues are not
        touched.  A queue's new times take effect together, when all its parts have
        them; until then it keeps the old ones.  Parts added meanwhile were timed by
        the new policy already.  A retime asked while one runs takes over its queues
        not done yet, with the newer ``due_of``.
        """
        keys = [key for key in self._heaps if changed(key)]
        if self._retiming is not None:
            self._retiming.cancel()  # its unfinished queues are ours now
            keys = [*self._retime_left, *(k for k in keys if k not in self._retime_left)]
        self._retime_left = dict.fromkeys(keys)
        job = defer.ensureDeferred(self._retime(due_of))
        self._retiming = job
        job.addErrback(lambda f: f.trap(defer.CancelledError))
        job.addBoth(self._retimed, job)
        return job

    def _retimed(self, result: object, job: defer.Deferred) -> object:
        if self._retiming is job:
            self._retiming = None
        return result

    async def _retime(self, due_of: Callable[[Part], float]) -> None:
        done = 0
        while self._retime_left:
            key = next(iter(self._retime_left))
            heap = self._heaps.get(key)
            if heap is None:
                del self._retime_left[key]
                continue
            since = self._pushed  # parts pushed after this were timed anew already
            live = [item for item in heap if _alive(item)]
            retimed: list[_Item] = []
            for start in range(0, len(live), RETIME_PER_TURN):
                if done >= RETIME_PER_TURN:
                    await task.deferLater(self._reactor, 0, lambda: None)
                    done = 0
                    if self._stopped:
                        return
                chunk = live[start:start + RETIME_PER_TURN]
                retimed.extend((due_of(part), seq, part) for _, seq, part in chunk)
                done += len(chunk)
            del self._retime_left[key]
            self._install(key, retimed, since)

    def _install(self, key: QueueKey, retimed: list[_Item], since: int) -> None:
        """Queue ``key``'s re-timed parts (those still waiting), with the parts
        added since the retime began, as its heap."""
        items = [item for item in retimed if _alive(item)]
        for due, _, part in items:
            part.due = due
        items += [item for item in self._heaps.get(key, ()) if item[1] > since and _alive(item)]
        if not items:
            self._heaps.pop(key, None)
            self._top_at.pop(key, None)
            self._arm()
            return
        heapq.heapify(items)
        self._heaps[key] = items
        # Entries of the old time in _top are superseded: _top_at says which counts.
        self._top_at[key] = items[0][0]
        heapq.heappush(self._top, (items[0][0], key))
        self._arm()

    def stop(self) -> None:
        """Cancel the timer (and a retime under way); nothing is handed out any more."""
        self._stopped = True
        if self._retiming is not None:
            self._retiming.cancel()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def timers(self) -> list[IDelayedCall]:
        """The one timer, if armed (for a stop)."""
        return [self._timer] if self._timer is not None else []

    # -- inside ---------------------------------------------------------------

    @staticmethod
    def _clean(heap: list[_Item]) -> None:
        while heap and not _alive(heap[0]):
            heapq.heappop(heap)

    def _announce(self, key: QueueKey, at: float) -> None:
        """Queue ``key``'s earliest part is now due at ``at``."""
        known = self._top_at.get(key)
        if known is not None and known <= at:
            return  # an earlier look is already planned; it finds this part then
        self._top_at[key] = at
        heapq.heappush(self._top, (at, key))
        if len(self._top) > 2 * len(self._top_at) + 64:  # superseded entries pile up
            self._top = [(t, k) for k, t in self._top_at.items()]
            heapq.heapify(self._top)
        self._arm()

    def _arm(self) -> None:
        top = self._top
        while top and self._top_at.get(top[0][1]) != top[0][0]:
            heapq.heappop(top)
        if self._stopped or not top:
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None
            return
        delay = max(0.0, top[0][0] - self._reactor.seconds())
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() != top[0][0]:
                self._timer.reset(delay)
        else:
            self._timer = self._reactor.callLater(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        now, due, budget = self._reactor.seconds(), [], MAX_DUE_PER_TURN
        top = self._top
        while top and top[0][0] <= now and budget > 0:
            at, key = heapq.heappop(top)
            if self._top_at.get(key) != at:
                continue  # superseded by an earlier look
            del self._top_at[key]
            heap = self._heaps.get(key)
            if heap is None:
                continue  # emptied meanwhile (head() drops empty heaps)
            while heap and budget > 0:
                item = heap[0]
                if not _alive(item):
                    heapq.heappop(heap)
                    continue
                if item[0] > now:
                    break
                heapq.heappop(heap)
                item[2].heap_seq = None
                due.append(item[2])
                budget -= 1
            self._clean(heap)
            if heap:
                # Not yet due, or the budget ran out: look again then (or next turn).
                self._top_at[key] = heap[0][0]
                heapq.heappush(top, (heap[0][0], key))
            else:
                del self._heaps[key]
        self._arm()
        if due:
            self._on_due(due)
