# -*- test-case-name: tests.test_scheduler_proxy -*-
"""
Why a queue starts nothing for a while, and when it may run again.

Three waits keep a queue off the board's line: a *hold* (its route has no
plumbed proxy; released when one comes back or after a health-check
interval), a *pause* (its destination answered no connection at all; released
after one ``retry_interval`` or by a delivery) and a *throttle* (its
``outbound_throttle_messages`` window is full; over at the next allowed
start).  :class:`Waits` owns their timers and reasons and says "this queue
may run again" through one callback; what the queue then does (expire what
ran out of time, start attempts) is the scheduler's business, and so is the
logging, since the decisions are logged per message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall

from ._queues import Board, Part, Queue, QueueKey
from ._rules import Rules

#: Longest wait, in seconds, before a queue waiting for its outbound throttle looks
#: again: a reload that raises the throttle (the next step of an IP's warm-up) and a
#: message's expiry take effect within this, not only when an hour-long window opens.
THROTTLE_RECHECK = 60.0


def cancel(call: IDelayedCall | None) -> None:
    """Cancel ``call`` unless it is None, has run or was cancelled already."""
    if call is not None and call.active():
        call.cancel()


class Waits:
    """
    The hold, pause and throttle timers of the queues on one board.

    :param board: the scheduler's :class:`Board` (a new one, and new
        ``Waits``, after each stop).
    :param rules: asked for the health-check and retry intervals.
    :param reactor: ``IReactorTime``.
    :param resume: called with a queue whose wait is over; the queue may be
        stale (from before a stop), which the callee checks.
    """

    def __init__(
        self, board: Board, rules: Rules, reactor: Any, resume: Callable[[Queue], None]
    ) -> None:
        self._board = board
        self._rules = rules
        self._reactor = reactor
        self._resume = resume

    def hold(self, part: Part, reason: str) -> bool:
        """
        Put ``part`` back at the head of its queue and hold the queue for a
        proxy.  True when the wait begins now (to be logged once, not at every
        re-check).
        """
        queue = self._board.add(part, first=True)
        queue.held = True
        if not queue.paused:  # a pause keeps its own reason and release time
            queue.reason = reason
        self._board.refresh(queue)
        if queue.release is None or not queue.release.active():
            interval = self._rules.health_interval()
            queue.release = self._reactor.callLater(interval, self.release, queue)
        if queue.waiting:
            return False
        queue.waiting = True
        return True

    def pause(self, queue: Queue, part: Part, reason: str) -> float | None:
        """
        Hold ``queue`` for one ``retry_interval`` of ``part``'s queue because its
        destination answered nothing; the delay, or None when it was not paused
        (stale, or already held).
        """
        if not self._board.is_live(queue) or queue.held:
            return None
        delay = self._rules.policy(part.key).retry_interval
        queue.held = queue.paused = True
        queue.paused_at = self._reactor.seconds()
        queue.reason = reason
        queue.release = self._reactor.callLater(delay, self.release, queue)
        return delay

    def retime_pauses(self, changed: Callable[[QueueKey], bool]) -> None:
        """
        A reload changed the ``retry_interval`` of the queues ``changed`` names:
        each of their running pauses ends one
        new interval after it began (at once if that is past), so a shorter interval
        shortens it.
        """
        now = self._reactor.seconds()
        for queue in self._board:
            if not queue.paused or queue.paused_at is None or not changed(queue.key):
                continue
            if queue.release is None or not queue.release.active():
                continue
            ends = queue.paused_at + self._rules.policy(queue.key).retry_interval
            if ends <= now:
                self.release(queue)
            else:
                queue.release.reset(ends - now)

    def release(self, queue: Queue) -> None:
        """End a hold or pause now (a proxy came back, the destination answers)."""
        cancel(queue.release)
        queue.release = None
        queue.held = queue.paused = False
        queue.paused_at = queue.reason = None
        self._resume(queue)

    def throttle(self, part: Part, queue: Queue, wait: float) -> bool:
        """
        The queue's throttle allows no start before ``wait`` seconds: put
        ``part`` back at its head and let the queue start nothing until then
        (looking again within :data:`THROTTLE_RECHECK`).  True the first time
        the queue waits for its throttle (to be logged once, until it drains).
        """
        queue.throttled = True
        self._board.add(part, first=True)
        cancel(queue.unthrottle)
        queue.unthrottle = self._reactor.callLater(
            min(wait, THROTTLE_RECHECK), self._unthrottle, queue
        )
        if queue.throttle_noted:
            return False
        queue.throttle_noted = True
        return True

    def _unthrottle(self, queue: Queue) -> None:
        queue.unthrottle = None
        queue.throttled = False
        self._resume(queue)

    def timers(self) -> list[IDelayedCall]:
        """Every timer of a wait, to cancel at a stop."""
        return [c for q in self._board for c in (q.release, q.unthrottle) if c is not None]
