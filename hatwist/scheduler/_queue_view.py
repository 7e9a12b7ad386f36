# -*- test-case-name: tests.control.test_operations -*-
"""
What ``hatwist queue list`` and ``show`` read from the running scheduler, and which
messages an action picks.

Costs, so an answer comes within a second at a million queued messages: one
message by id is O(1) (the ledger is a dict by id); a list without a filter
walks the ledger from its start and stops at the limit, its total the ledger's
length; a filter picks the queues first, from per-queue facts (binding, domain
and the queue's state, O(queues)), and then reads only their parts -- the
queue's line, its due heap, the attempts running -- and the held messages,
which the ledger keeps apart.  So ``--domain quiet.test`` costs what that queue
holds, not what the whole spool holds.  A filter's total, which reads every part of
the matching queues, and an action's choice (``select``, for ``_bulk``) are spread
over reactor turns, so neither stops the relay at a million.  Reads only.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs
from twisted.internet import defer, task

from hatwist.spool import PENDING

from ._dispatch import Dispatcher
from ._due import DueHeap
from ._ledger import Entry, Ledger
from ._outcome import domain_of, expiry_start
from ._queues import Board, Part, QueueKey
from ._rules import Rules
from ._states import QueueState

#: Messages (held ones, or a queue's parts) a filtered list's total counts per
#: reactor turn: some 10 ms.
COUNT_SLICE = 20_000

#: Rows of ``hatwist queue list`` made per reactor turn: some 10 ms.
ROW_SLICE = 2_000

#: The state of a message held by the operator (beside the queue states).
HELD = "held"
#: The state of a message whose bounce and removal are under way.
FINISHING = "finishing"


@attrs.frozen
class Listing:
    """At most ``limit`` rows of ``hatwist queue list``, and how many matched."""

    rows: tuple[dict[str, Any], ...]
    total: int


def key_matches(key: QueueKey, binding: str | None, domain: str | None) -> bool:
    """Whether queue ``key`` passes the (binding, domain) filter (None: any)."""
    return (binding is None or key[0] == binding) and (domain is None or key[1] == domain)


def _first_part(entry: Entry, binding: str | None, domain: str | None) -> Part | None:
    """The first of the entry's parts in a matching queue (a message with two
    matching domains is listed once, from its first)."""
    for part in entry.parts:
        if key_matches(part.key, binding, domain):
            return part
    return None


def _listed_here(part: Part, binding: str | None, domain: str | None) -> bool:
    """Whether ``part`` is current and the one its message is listed by."""
    entry = part.entry
    return not entry.held and part in entry.parts and _first_part(entry, binding, domain) is part


def _count_held(entries: list[Entry], binding: str | None, domain: str | None) -> int:
    """How many of these (once held) messages are held and match the filter."""
    return sum(1 for e in entries if e.held and _first_part(e, binding, domain) is not None)


def _count_parts(parts: list[Part], binding: str | None, domain: str | None) -> int:
    """How many of these parts (of one matching queue) their messages are listed by."""
    total = 0
    for part in parts:
        entry = part.entry
        listed = entry.parts
        if listed and listed[0] is part:  # the usual: one domain, current
            if not entry.held:
                total += 1
        elif len(listed) > 1 and _listed_here(part, binding, domain):
            total += 1
    return total


def row(entry: Entry, state: str) -> dict[str, Any]:
    """One line of ``hatwist queue list``, as JSON-ready values."""
    m = entry.message
    return {
        "id": m.id,
        "binding": m.binding,
        "from": m.mail_from,
        "recipients": len(m.recipients),
        "pending": sum(1 for r in m.recipients if r.status == PENDING),
        "domains": [p.key[1] for p in entry.parts],
        "state": state,
        "received_at": m.received_at,
        "next_attempt_at": min((p.due for p in entry.parts), default=None),
        "size": m.size,
        "attempts": m.attempts,
    }


class QueueView:
    """
    The scheduler's parts as ``hatwist queue`` sees them.

    :param states: the scheduler's ``queue_states`` (O(queues)).
    """

    def __init__(
        self,
        *,
        ledger: Ledger,
        board: Board,
        due: DueHeap,
        dispatch: Dispatcher,
        rules: Rules,
        states: Callable[[], list[QueueState]],
        reactor: Any,
    ) -> None:
        self._ledger = ledger
        self._board = board
        self._due = due
        self._dispatch = dispatch
        self._rules = rules
        self._states = states
        self._reactor = reactor

    def _state_by_queue(self) -> dict[QueueKey, str]:
        return {(s.binding, s.domain): s.state for s in self._states()}

    def _state_of(self, entry: Entry, states: dict[QueueKey, str]) -> str:
        if entry.held:
            return HELD
        if entry.finishing or not entry.parts:
            return FINISHING
        return states.get(entry.parts[0].key, "active")

    def _queues(self, binding: str | None, domain: str | None, state: str | None
                ) -> list[tuple[QueueKey, str]]:
        """The queues a filter picks, with their states, sorted (O(queues))."""
        return [(key, queue_state) for key, queue_state in sorted(self._state_by_queue().items())
                if key_matches(key, binding, domain) and state in (None, queue_state)]

    def _parts(self, key: QueueKey) -> Iterator[Part]:
        """Every part of queue ``key``: in flight, on its line, in its due heap (stale
        ones included: the callers skip them)."""
        queue = self._board.get(key)
        return itertools.chain(
            (p for p in self._dispatch.parts_in_flight() if p.key == key),
            queue.ready if queue is not None else (),
            self._due.parts(key),
        )

    def matching(
        self, binding: str | None, domain: str | None, state: str | None,
        queues: list[tuple[QueueKey, str]] | None = None,
    ) -> Iterator[tuple[Entry, str]]:
        """Every message with a pending part in a matching queue, once, with its state
        (``queues``: what :meth:`_queues` says, when the caller has it already)."""
        if binding is None and domain is None and state is None:
            states = self._state_by_queue()
            for entry in self._ledger.entries():
                yield entry, self._state_of(entry, states)
            return
        if state in (None, HELD):
            for entry in self._ledger.held():
                if _first_part(entry, binding, domain) is not None:
                    yield entry, HELD
        if state == HELD:
            return
        if queues is None:
            queues = self._queues(binding, domain, state)
        for key, queue_state in queues:
            for part in self._parts(key):
                if _listed_here(part, binding, domain):
                    yield part.entry, queue_state

    def count(self, binding: str | None, domain: str | None, state: str | None,
              queues: list[tuple[QueueKey, str]] | None = None) -> defer.Deferred[int]:
        """How many messages :meth:`matching` yields: a tight pass over copies of
        the held messages and of each matching queue's parts, :data:`COUNT_SLICE` of
        them per reactor turn (counting every queued message in one turn took 0.9 to
        1.9 s at a million).  Exact when nothing changes meanwhile; a message that
        changes queues while it is counted may be counted twice or not at all."""
        if binding is None and domain is None and state is None:
            return defer.succeed(len(self._ledger))
        return defer.ensureDeferred(self._count(binding, domain, state, queues))

    async def _count(self, binding: str | None, domain: str | None, state: str | None,
                     queues: list[tuple[QueueKey, str]] | None) -> int:
        total = done = 0
        batches: list[tuple[bool, list[Any]]] = []
        if state in (None, HELD):
            batches.append((True, self._ledger.held()))
        if state != HELD:
            batches.extend((False, [key]) for key, _ in (
                queues if queues is not None else self._queues(binding, domain, state)))
        for held, items in batches:
            if done >= COUNT_SLICE:
                await task.deferLater(self._reactor, 0, lambda: None)
                done = 0
            if not held:  # a queue: its parts now, in one turn (references only)
                items = list(self._parts(items[0]))
            for start in range(0, len(items), COUNT_SLICE):
                if start:
                    await task.deferLater(self._reactor, 0, lambda: None)
                    done = 0
                chunk = items[start:start + COUNT_SLICE]
                total += (_count_held(chunk, binding, domain) if held
                          else _count_parts(chunk, binding, domain))
                done += len(chunk)
        return total

    def list(
        self, *, binding: str | None = None, domain: str | None = None,
        state: str | None = None, limit: int = 1000,
    ) -> defer.Deferred[Listing]:
        """The first ``limit`` matching messages, and how many match in all (counted
        over the next turns: see :meth:`count`).

        Which messages, is decided in this turn (references only); their rows are
        made :data:`ROW_SLICE` a turn (100,000 rows in one turn took some 0.4 s), and
        one that left the queue meanwhile is left out."""
        filtered = any(v is not None for v in (binding, domain, state))
        queues = self._queues(binding, domain, state) if filtered else None
        chosen = list(itertools.islice(self.matching(binding, domain, state, queues), limit))
        return defer.ensureDeferred(self._list(chosen, binding, domain, state, queues))

    async def _list(self, chosen: list[tuple[Entry, str]], binding: str | None,
                    domain: str | None, state: str | None,
                    queues: list[tuple[QueueKey, str]] | None) -> Listing:
        rows = []
        for start in range(0, len(chosen), ROW_SLICE):
            if start:
                await task.deferLater(self._reactor, 0, lambda: None)
            rows.extend(row(entry, entry_state)
                        for entry, entry_state in chosen[start:start + ROW_SLICE]
                        if self._ledger.get(entry.message.id) is entry)
        total = await self.count(binding, domain, state, queues)
        return Listing(tuple(rows), total)

    def show(self, message_id: str) -> dict[str, Any] | None:
        """Everything about one queued message, or None when it is not queued (O(1)
        but for the queue states, O(queues))."""
        entry = self._ledger.get(message_id)
        if entry is None:
            return None
        m = entry.message
        states = self._state_by_queue()
        start = expiry_start(m)
        queues = []
        for part in entry.parts:
            attempting = self._dispatch.attempting(part)
            queues.append({
                "domain": part.key[1],
                "state": HELD if entry.held else "attempting" if attempting
                else states.get(part.key, "active"),
                "next_attempt_at": part.due,
                "expires_at": self._rules.policy(part.key).expires_at(start),
            })
        return {
            **row(entry, self._state_of(entry, states)),
            "held_at": m.held_at,
            "held_for": m.held_for,
            "recipients": [
                {"address": r.address, "domain": domain_of(r.address), "status": r.status,
                 "code": r.code, "reason": r.reason, "attempts": r.attempts}
                for r in m.recipients
            ],
            "queues": queues,
        }

    # -- acting ----------------------------------------------------------------

    def select(
        self, ids: tuple[str, ...], binding: str | None, domain: str | None, state: str | None
    ) -> tuple[list[Any], Callable[[Sequence[Any]], list[tuple[str, Entry | None]]]]:
        """What an action applies to, for ``_bulk``: candidates copied now, and the
        pick that checks a slice of them when it runs (see there).

        By id: each id, queued or not.  By filter: the held messages and the parts of
        the queues that match now; a slice keeps those that still match, each message
        once (a release gives a message new parts; one of two domains may finish).
        """
        ledger = self._ledger
        if ids:
            return list(ids), lambda chunk: [(i, ledger.get(i)) for i in chunk]
        if binding is None and domain is None and state is None:
            return list(ledger.entries()), lambda chunk: [
                (e.message.id, e) for e in chunk if ledger.get(e.message.id) is e]
        candidates: list[Any] = []
        if state in (None, HELD):
            candidates += ledger.held()
        if state != HELD:
            for key, _ in self._queues(binding, domain, state):
                candidates += self._parts(key)
        seen: set[str] = set()

        def pick(chunk: Sequence[Any]) -> list[tuple[str, Entry | None]]:
            chosen: list[tuple[str, Entry | None]] = []
            for item in chunk:
                if isinstance(item, Part):
                    entry = item.entry
                    if not _listed_here(item, binding, domain):
                        continue
                else:
                    entry = item
                    if not entry.held or _first_part(entry, binding, domain) is None:
                        continue
                message_id = entry.message.id
                if message_id in seen or ledger.get(message_id) is not entry:
                    continue
                seen.add(message_id)
                chosen.append((message_id, entry))
            return chosen

        return candidates, pick
