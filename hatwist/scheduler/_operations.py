# -*- test-case-name: tests.control.test_operations -*-
"""
What ``hatwist queue`` does to the running scheduler's queue: flush, hold,
release, delete and bounce, like Postfix's postqueue and postsuper.  Which
messages an action applies to, and what list and show print, come from
:mod:`hatwist.scheduler._queue_view`.

A held message is never attempted and never expires while held: its parts are
stale to the ledger, and the time it spent held is added to its ``held_for``,
which moves its expiry later (:func:`hatwist.scheduler._outcome.expiry_start`).
Both are written to the spool, so a hold outlives a restart.

Every action is logged as a decision about the message, naming the operator's
uid (the control socket's peer credentials).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from hatwist.spool import FAILED, PENDING, MessageNotFound, SpooledMessage

from ._bulk import BulkSummary, Pick, Report, act_in_slices
from ._dispatch import Dispatcher
from ._due import DueHeap
from ._finish import Finisher
from ._ledger import Entry, Ledger
from ._queue_view import key_matches
from ._queues import Board, Part
from ._waits import Waits

#: What a recipient returned by ``hatwist queue bounce`` says in its DSN.
BOUNCE_CODE = 550
BOUNCE_REASON = "5.0.0 returned to the sender by the relay's operator"


class Operations:
    """
    The actions of ``hatwist queue`` on the scheduler's parts.

    :param schedule: puts a part on the board or in the due heap.
    :param decision: logs one decision ``(message, domain, outcome, **fields)``.
    :param settle: called between the slices of a bulk action (the start-up
        read's ``refreeze``: see ``_recovery``).
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
        spool: Any,
        counters: Counter[str],
        reactor: Any,
        log: Callable[[], Logger],
        schedule: Callable[[Part], None],
        pump: Callable[[], None],
        decision: Callable[..., None],
        settle: Callable[[], None] = lambda: None,
    ) -> None:
        self._ledger = ledger
        self._board = board
        self._due = due
        self._dispatch = dispatch
        self._waits = waits
        self._finisher = finisher
        self._spool = spool
        self._counters = counters
        self._reactor = reactor
        self._log = log
        self._schedule = schedule
        self._pump = pump
        self._decision = decision
        self._settle = settle

    def flush(
        self, *, binding: str | None = None, domain: str | None = None, uid: int | None = None
    ) -> tuple[int, int]:
        """
        Retry now: every matching queue's pause or wait for a proxy ends, and its
        parts waiting for their retry time are due now (a throttle still applies:
        it is the operator's own rule).  Returns (queues, parts made due).
        """
        now = self._reactor.seconds()
        keys = [k for k in self._ledger.depths() if key_matches(k, binding, domain)]
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

    def stream(self, action: str, candidates: list[Any], pick: Pick, *, report: Report,
               uid: int | None, filters: tuple[str | None, str | None, str | None] | None
               ) -> defer.Deferred[BulkSummary]:  # fmt: skip
        """Run ``action`` (hold, release, delete, bounce) on what ``pick`` makes of
        ``candidates``, a slice at a time (see ``_bulk``); a filtered one
        (``filters``: binding, domain, state) also logs one line of what it did."""
        act = getattr(self, action)
        d = act_in_slices(lambda selected: act(selected, uid=uid), candidates, pick,
                          report=report, reactor=self._reactor, between=self._settle)
        if filters is not None:
            d.addCallback(self._bulk_done, action, uid, *filters)
        return d

    def _bulk_done(self, summary: BulkSummary, action: str, uid: int | None,
                   binding: str | None, domain: str | None, state: str | None
                   ) -> BulkSummary:  # fmt: skip
        done = ", ".join(f"{kind} {n}" for kind, n in sorted(summary.counts.items()))
        self._log().info(
            "queue {action} by the operator (uid {uid}): {matched} message(s) matched"
            "{stopped}: {done}", action=action, uid=uid, matched=summary.matched,
            stopped=(", then stopped (the client went away)" if summary.stopped else ""),
            done=done or "none",
            binding_filter=binding, domain_filter=domain, state_filter=state,
        )
        return summary

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
               ) -> defer.Deferred[list[tuple[str, str]]]:
        """Fail every pending recipient now and return the message to its sender,
        as an expiry would (no DSN for a null sender); then it is removed.  Fires
        once the DSNs are spooled and the messages removed (or those retried later)."""
        results: list[tuple[str, str]] = []
        finishing: list[defer.Deferred] = []
        for message_id, entry in selected:
            if entry is None:
                results.append((message_id, "not in the queue"))
            elif entry.finishing or not entry.parts:
                results.append((message_id, "already being removed"))
            elif any(self._dispatch.attempting(p) for p in entry.parts):
                results.append((message_id, "an attempt is in flight: not bounced (try "
                                "again when it ends)"))
            else:
                results.append((message_id, self._bounce_one(entry, uid, finishing)))
        return _after(finishing, results)

    def _bounce_one(self, entry: Entry, uid: int | None, finishing: list[defer.Deferred]
                    ) -> str:
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
        finishing.append(self._finisher.finish(entry))
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
