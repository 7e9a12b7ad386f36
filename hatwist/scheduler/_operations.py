# -*- test-case-name: tests.control.test_operations -*-
"""
What ``hatwist queue`` asks of the running scheduler: look at the queue (list,
show) and act on it (flush, hold, release, delete, bounce), like Postfix's
postqueue and postsuper.

An operator gets the answer within a second at a million queued messages:

- one message by id (show, hold, release, delete, bounce) is O(1): the ledger
  is a dict by id;
- a list without a filter walks the ledger from its start and stops at the
  limit; its total is the ledger's length;
- a filter picks the queues first, from per-queue facts (binding, domain and
  the queue's state, O(queues)), and then reads only their parts: the queue's
  line, its due heap, the attempts running, and the held messages (kept apart
  by the ledger).  So ``--domain quiet.test`` costs what that queue holds, not
  what the whole spool holds.

A held message is never attempted and never expires while held: its parts are
stale to the ledger, and the time it spent held is added to its ``held_for``,
which moves its expiry later (:func:`hatwist.scheduler._outcome.expiry_start`).
Both are written to the spool, so a hold outlives a restart.

Every action is logged as a decision about the message, naming the operator's
uid (the control socket's peer credentials).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from hatwist.spool import FAILED, PENDING, MessageNotFound, SpooledMessage

from ._dispatch import Dispatcher
from ._due import DueHeap
from ._finish import Finisher
from ._ledger import Entry, Ledger
from ._outcome import domain_of, expiry_start
from ._queues import Board, Part, QueueKey
from ._rules import Rules
from ._states import QueueState
from ._waits import Waits

#: The state of a message held by the operator (beside the queue states).
HELD = "held"
#: The state of a message whose bounce and removal are under way.
FINISHING = "finishing"

#: What a recipient returned by ``hatwist queue bounce`` says in its DSN.
BOUNCE_CODE = 550
BOUNCE_REASON = "5.0.0 returned to the sender by the relay's operator"

Filter = tuple[str | None, str | None, str | None]
"""(binding, domain, state); None matches everything."""


@attrs.frozen
class Listing:
    """At most ``limit`` rows of ``hatwist queue list``, and how many matched."""

    rows: tuple[dict[str, Any], ...]
    total: int


def _key_matches(key: QueueKey, binding: str | None, domain: str | None) -> bool:
    return (binding is None or key[0] == binding) and (domain is None or key[1] == domain)


def _first_part(entry: Entry, binding: str | None, domain: str | None) -> Part | None:
    """The first of the entry's parts in a matching queue (a message with two
    matching domains is listed once, from its first)."""
    for part in entry.parts:
        if _key_matches(part.key, binding, domain):
            return part
    return None


def _listed_here(part: Part, binding: str | None, domain: str | None) -> bool:
    """Whether ``part`` is current and the one its message is listed by."""
    entry = part.entry
    return not entry.held and part in entry.parts and _first_part(entry, binding, domain) is part


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


class Operations:
    """
    The scheduler's parts that ``hatwist queue`` reads and acts on.

    :param states: the scheduler's ``queue_states`` (O(queues)).
    :param schedule: puts a part on the board or in the due heap.
    :param decision: logs one decision ``(message, domain, outcome, **fields)``.
    """

    def __init__(
        self,
        *,
        ledger: Ledger,
        board: Board,
        due: DueHeap,
        dispatch: Dispatcher,
        waits: Waits,
        finisher: Finisher,
        rules: Rules,
        spool: Any,
        counters: Counter[str],
        reactor: Any,
        log: Callable[[], Logger],
        states: Callable[[], list[QueueState]],
        schedule: Callable[[Part], None],
        pump: Callable[[], None],
        decision: Callable[..., None],
    ) -> None:
        self._ledger = ledger
        self._board = board
        self._due = due
        self._dispatch = dispatch
        self._waits = waits
        self._finisher = finisher
        self._rules = rules
        self._spool = spool
        self._counters = counters
        self._reactor = reactor
        self._log = log
        self._states = states
        self._schedule = schedule
        self._pump = pump
        self._decision = decision

    # -- looking ---------------------------------------------------------------

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
                if _key_matches(key, binding, domain) and state in (None, queue_state)]

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
              queues: list[tuple[QueueKey, str]] | None = None) -> int:
        """How many messages :meth:`matching` yields, in one tight pass per queue."""
        if binding is None and domain is None and state is None:
            return len(self._ledger)
        total = 0
        if state in (None, HELD):
            total += sum(1 for e in self._ledger.held()
                         if _first_part(e, binding, domain) is not None)
        if state == HELD:
            return total
        if queues is None:
            queues = self._queues(binding, domain, state)
        for key, _ in queues:
            for part in self._parts(key):
                parts = part.entry.parts
                if parts and parts[0] is part:  # the usual: one domain, current
                    if not part.entry.held:
                        total += 1
                elif len(parts) > 1 and _listed_here(part, binding, domain):
                    total += 1
        return total

    def list(
        self, *, binding: str | None = None, domain: str | None = None,
        state: str | None = None, limit: int = 1000,
    ) -> Listing:
        """The first ``limit`` matching messages, and how many match in all."""
        filtered = any(v is not None for v in (binding, domain, state))
        queues = self._queues(binding, domain, state) if filtered else None
        rows = []
        for entry, entry_state in self.matching(binding, domain, state, queues):
            if len(rows) >= limit:
                break
            rows.append(row(entry, entry_state))
        return Listing(tuple(rows), self.count(binding, domain, state, queues))

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
    ) -> list[tuple[str, Entry | None]]:
        """The messages an action applies to: by id (None: not queued), or every
        message matching the filter."""
        if ids:
            return [(message_id, self._ledger.get(message_id)) for message_id in ids]
        return [(e.message.id, e) for e, _ in self.matching(binding, domain, state)]

    def flush(
        self, *, binding: str | None = None, domain: str | None = None, uid: int | None = None
    ) -> tuple[int, int]:
        """
        Retry now: every matching queue's pause or wait for a proxy ends, and its
        parts waiting for their retry time are due now (a throttle still applies:
        it is the operator's own rule).  Returns (queues, parts made due).
        """
        now = self._reactor.seconds()
        keys = [k for k in self._ledger.depths() if _key_matches(k, binding, domain)]
        made_due = 0
        for key in keys:
            queue = self._board.get(key)
            if queue is not None and queue.held:  # paused, or waiting for a proxy
                self._waits.release(queue)
            for part in self._due.take(key):
                if self._ledger.current(part) is None:
                    continue
                part.due = now
                self._board.add(part)
                made_due += 1
        self._log().info(
            "queue flush by the operator (uid {uid}): {queues} queue(s), {parts} message(s) "
            "made due", uid=uid, queues=len(keys), parts=made_due,
            binding_filter=binding, domain_filter=domain,
        )
        self._pump()
        return len(keys), made_due

    def hold(self, selected: list[tuple[str, Entry | None]], *, uid: int | None = None
             ) -> defer.Deferred[list[tuple[str, str]]]:
        """Hold each message: never attempted, never expiring, until released."""
        now = self._reactor.seconds()
        results, writes = [], []
        for message_id, entry in selected:
            if entry is None:
                results.append((message_id, "not in the queue"))
            elif entry.held:
                results.append((message_id, "already held"))
            elif entry.finishing or not entry.parts:
                results.append((message_id, "being removed: not held"))
            else:
                self._ledger.set_held(entry, True)
                self._ledger.change(entry, attrs.evolve(entry.message, held_at=now),
                                    recount=False)
                writes.append(self._ledger.write(entry))
                running = any(self._dispatch.attempting(p) for p in entry.parts)
                self._decision(entry.message, "", f"held by the operator (uid {uid})", uid=uid)
                results.append((message_id, "held (its attempt in flight ends first)"
                                if running else "held"))
        return _after(writes, results)

    def release(self, selected: list[tuple[str, Entry | None]], *, uid: int | None = None
                ) -> defer.Deferred[list[tuple[str, str]]]:
        """Release each held message: due now, its expiry later by the time it was held."""
        now = self._reactor.seconds()
        results, writes, fresh = [], [], []
        for message_id, entry in selected:
            if entry is None:
                results.append((message_id, "not in the queue"))
                continue
            if not entry.held:
                results.append((message_id, "not held"))
                continue
            m = entry.message
            held_for = m.held_for + (max(0.0, now - m.held_at) if m.held_at is not None else 0.0)
            self._ledger.set_held(entry, False)
            parts = []
            for part in entry.parts:
                if self._dispatch.attempting(part):
                    parts.append(part)  # the end of its attempt schedules it
                    continue
                part.heap_seq = None  # any copy on a line or in the heap is stale now
                parts.append(Part(entry, part.key, now))
            entry.parts = tuple(parts)
            fresh.extend(p for p in parts if not self._dispatch.attempting(p))
            self._ledger.change(
                entry, attrs.evolve(m, held_at=None, held_for=held_for, next_attempt_at=now),
                recount=False,
            )
            writes.append(self._ledger.write(entry))
            self._decision(entry.message, "", f"released by the operator (uid {uid})", uid=uid,
                           held_seconds=round(now - m.held_at, 3) if m.held_at else 0)
            results.append((message_id, "released"))
        for part in fresh:
            self._schedule(part)
        self._pump()
        return _after(writes, results)

    def delete(self, selected: list[tuple[str, Entry | None]], *, uid: int | None = None
               ) -> defer.Deferred[list[tuple[str, str]]]:
        """Remove each message from the queue and the spool, with no DSN."""
        results: list[tuple[str, str]] = []
        removals = []
        for message_id, entry in selected:
            if entry is None:
                results.append((message_id, "not in the queue"))
                continue
            if entry.finishing:
                results.append((message_id, "already being removed"))
                continue
            entry.finishing = True
            running = [p for p in entry.parts if self._dispatch.attempting(p)]
            self._finisher.forget(entry)  # first: a cancelled attempt then records nothing
            for part in running:
                self._dispatch.cancel(part)
            self._decision(entry.message, "", f"deleted by the operator (uid {uid}): no DSN",
                           uid=uid)
            removals.append(self._remove(message_id, results))
        return _after(removals, results)

    def _remove(self, message_id: str, results: list[tuple[str, str]]) -> defer.Deferred:
        def removed(_: object) -> None:
            results.append((message_id, "deleted"))

        def failed(failure: Any) -> None:
            if failure.check(MessageNotFound):
                results.append((message_id, "deleted"))
                return
            self._counters["errors"] += 1
            self._log().failure("message {message_id}: removing it from the spool failed",
                                failure, message_id=message_id)
            results.append((message_id, "out of the queue, but removing it from the spool "
                            f"failed ({failure.getErrorMessage()}): it is back at the next "
                            "start"))

        d = defer.maybeDeferred(self._spool.remove, message_id)
        return d.addCallbacks(removed, failed)

    def bounce(self, selected: list[tuple[str, Entry | None]], *, uid: int | None = None
               ) -> list[tuple[str, str]]:
        """Fail every pending recipient now and return the message to its sender,
        as an expiry would (no DSN for a null sender); then it is removed."""
        results = []
        for message_id, entry in selected:
            if entry is None:
                results.append((message_id, "not in the queue"))
            elif entry.finishing or not entry.parts:
                results.append((message_id, "already being removed"))
            elif any(self._dispatch.attempting(p) for p in entry.parts):
                results.append((message_id, "an attempt is in flight: not bounced (try "
                                "again when it ends)"))
            else:
                results.append((message_id, self._bounce_one(entry, uid)))
        return results

    def _bounce_one(self, entry: Entry, uid: int | None) -> str:
        if entry.held:
            self._ledger.set_held(entry, False)
        message, failed = _returned(entry.message)
        self._ledger.change(entry, message)
        for part in entry.parts:
            part.heap_seq = None
        entry.parts = ()
        self._counters["bounced"] += failed
        dsn = f"DSN to <{message.mail_from}>" if message.mail_from else "null sender: no DSN"
        self._decision(message, "", f"bounced by the operator (uid {uid}): {dsn}", uid=uid)
        self._finisher.finish(entry)
        return f"bounced ({dsn})"


def _returned(message: SpooledMessage) -> tuple[SpooledMessage, int]:
    """``message`` with every pending recipient failed by the operator, and how many."""
    failed = 0
    recipients = []
    for r in message.recipients:
        if r.status == PENDING:
            failed += 1
            r = attrs.evolve(r, status=FAILED, code=BOUNCE_CODE, reason=BOUNCE_REASON)
        recipients.append(r)
    return attrs.evolve(message, recipients=tuple(recipients), held_at=None), failed


def _after(work: list[defer.Deferred], results: list[tuple[str, str]]
           ) -> defer.Deferred[list[tuple[str, str]]]:
    """Fire with ``results`` once every spool write of an action is done."""
    done = defer.DeferredList(work, consumeErrors=True)
    return done.addCallback(lambda _: results)
