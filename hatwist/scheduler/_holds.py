# -*- test-case-name: tests.test_scheduler_proxy -*-
"""
What the scheduler decides when a queue must wait, and when it may go again.

:mod:`._waits` owns the timers of the three waits (a hold for a plumbed proxy, a
pause for an unreachable destination, a throttle window); this module makes the
decisions around them, which are logged per message and touch the ledger: a
hold remembers why (for an expiry DSN) without counting an attempt, and looks at
the message's delay warning since no pass ends while it waits; a binding_group's
part that found no path on its chosen binding goes again on another instead of
waiting; a queue that may run again first expires what ran out of time meanwhile.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from ._ledger import Entry, Ledger
from ._outcome import expiry_start, note_wait
from ._queues import Board, Part, Queue
from ._rules import Rules


class WaitDecisions:
    """
    :param waits: returns the board's :class:`._waits.Waits` (made after this, since
        its release callback is :meth:`resume`).
    :param expire: ``(entry, part)``: expire a part that ran out of time.
    :param decision_for: logs ``(part, outcome, **fields)`` per message.
    """

    def __init__(
        self,
        *,
        board: Board,
        ledger: Ledger,
        rules: Rules,
        waits: Callable[[], Any],
        notices: Any,
        counters: Counter[str],
        reactor: Any,
        log: Callable[[], Logger],
        pump: Callable[[], None],
        expire: Callable[[Entry, Part], None],
        decision_for: Callable[..., None],
    ) -> None:
        self._board = board
        self._ledger = ledger
        self._rules = rules
        self._waits = waits
        self._notices = notices
        self._counters = counters
        self._reactor = reactor
        self._log = log
        self._pump = pump
        self._expire = expire
        self._decision_for = decision_for
        self._rerouted: set[Part] = set()

    def throttle_wait(self, part: Part, queue: Queue, throttle: str, wait: float) -> None:
        """
        The queue's ``outbound_throttle_messages`` allows no start before ``wait``
        seconds: the queue starts nothing until then.  Not an attempt, not a
        failure: no counter, no backoff.
        """
        if self._waits().throttle(part, queue, wait):  # once, not at every message held back
            self._log().info(
                "binding {binding} domain {domain}: outbound_throttle_messages {throttle} "
                "reached; its queue waits {wait:.0f}s for the next start",
                binding=part.key[0], domain=part.key[1], throttle=throttle, wait=wait,
            )

    def slot_wait(self, part: Part, queue: Queue, wait: float) -> None:
        """
        Shared limits found every ``max_connections`` slot of the queue taken in
        the fleet (or too busy to answer): the queue starts nothing for ``wait``
        seconds, then asks again.  Not logged: slots come free all the time.
        """
        self._waits().throttle(part, queue, wait)

    def resume(self, queue: Queue) -> None:
        """Start a queue again after a wait (throttle, proxy hold, pause)."""
        if not self._board.is_live(queue):
            return
        # Only its head was tried during the wait: expire the rest here -- a pass
        # over the queue only when its oldest part may have run out of time.
        policy, now = self._rules.policy(queue.key), self._reactor.seconds()
        if policy.is_expired(queue.oldest, now):

            def keep(part: Part) -> bool:
                entry = self._ledger.current(part)
                if entry is None:
                    return False  # stale: nothing to send
                if policy.is_expired(expiry_start(entry.message), now):
                    self._expire(entry, part)
                    return False
                return True

            self._board.sweep(queue, keep)
        self._board.refresh(queue)
        self._pump()

    def hold(self, part: Part, entry: Entry, reason: str) -> None:
        """Put ``part`` back at the head of its queue and hold the queue for a proxy --
        unless it is a group's, and another of the group's bindings has a path now."""
        if self._rules.reroutable(part.key) and part not in self._rerouted:
            # Once per part and reactor turn: should the agent and the registry ever
            # disagree about a path, this must not become a loop that never yields.
            if not self._rerouted:
                self._reactor.callLater(0, self._rerouted.clear)
            self._rerouted.add(part)
            self._board.add(part, first=True)
            return
        self._counters["waiting"] += 1
        # Remember why, for an expiry DSN, without counting an attempt.
        self._ledger.change(entry, note_wait(entry.message, part.key[1], reason), recount=False)
        # No pass ends while it waits: its delay warning is looked at here instead.
        self._notices.after_pass(entry, part.key)
        if self._waits().hold(part, reason):  # when the wait begins, not at every re-check
            self._decision_for(part, "waiting for a plumbed proxy", reason=reason)

    def pause(self, queue: Queue, part: Part, reason: str) -> None:
        """
        No session answered for the destination at all (every MX unreachable,
        DNS failing): hold its queue for one ``retry_interval`` instead of
        spending an attempt -- and a connect timeout -- on each message queued
        for it.  The parts of the failed attempts keep their own backoff.
        """
        delay = self._waits().pause(queue, part, reason)
        if delay is not None:
            self._decision_for(part, f"destination unreachable: queue paused for {delay}s",
                               reason=reason)
