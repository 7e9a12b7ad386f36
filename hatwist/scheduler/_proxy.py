# -*- test-case-name: tests.test_scheduler_proxy -*-
"""
What the scheduler does when the proxy registry reports a server's state change.

A server that comes back releases the queues held for it at once.  A server
that goes takes back the retries that probably failed because of it: attempts
through it that ended in a temporary failure since shortly before the health
check saw it go (the registry said plumbed until the checks caught up) wait for
a plumbed proxy now, like parts that never ran, instead of a full backoff.

The recent failures are kept in the order they happened, so a state change
looks at the failures of the last window only -- never at every queued message.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from hatwist.health import ServerState, StateChange

from ._due import DueHeap
from ._ledger import Entry, Ledger
from ._queues import Board, Part
from ._rules import Rules
from ._waits import Waits


class ProxyWatch:
    """
    :param hold: the scheduler's hold (part, entry, reason).
    :param pump: starts what can start.
    """

    def __init__(
        self,
        *,
        board: Board,
        ledger: Ledger,
        due: DueHeap,
        rules: Rules,
        waits: Waits,
        reactor: Any,
        hold: Callable[[Part, Entry, str], None],
        pump: Callable[[], None],
    ) -> None:
        self._board = board
        self._ledger = ledger
        self._due = due
        self._rules = rules
        self._waits = waits
        self._reactor = reactor
        self._hold = hold
        self._pump = pump
        self._failures: deque[Part] = deque()

    def failed(self, part: Part) -> None:
        """``part`` just failed temporarily (``part.failed_at`` is set) and waits
        for its retry: a proxy seen unplumbed soon may take it back."""
        self._trim(self._reactor.seconds() - self._rules.failure_window())
        self._failures.append(part)

    def _trim(self, since: float) -> None:
        failures = self._failures
        while failures and (failures[0].failed_at is None or failures[0].failed_at < since):
            failures.popleft()

    def changed(self, change: StateChange) -> None:
        """The registry's observer (the scheduler filters out stops)."""
        if change.new is ServerState.PLUMBED:
            for queue in [q for q in self._board if q.held]:
                unknown = self._rules.settings(queue.key) is None
                if unknown or self._rules.uses(queue.key, change.server):
                    self._waits.release(queue)
        else:
            self._recall(change.server)

    def _recall(self, server: Any) -> None:
        since = self._reactor.seconds() - self._rules.failure_window()
        self._trim(since)
        recalled = []
        for part in self._failures:
            if not self._due.waiting(part) or part.failed_at is None or part.failed_at < since:
                continue  # went already, or recalled by an earlier change
            if self._ledger.current(part) is None or not self._rules.uses(part.key, server):
                continue
            recalled.append(part)
        for part in recalled:
            self._due.discard(part)
            part.failed_at = None
            why = self._rules.no_plumbed_proxy(part.key)
            if why is None:
                self._board.add(part)
            else:
                self._hold(part, part.entry, why)
        self._pump()
