# -*- test-case-name: tests.control.test_bulk -*-
"""
A ``hatwist queue`` action on many messages, a slice per reactor turn.

``hatwist queue hold --binding b1`` may name a third of a million queued messages.
Acting on all of them in one reactor turn stopped the relay for as long
(bench/bench_queue.py: 1.2 s for 33,000 holds, 1.7 s for their release: every SMTP
session, attempt and health check waited), kept one spool write per message in
flight at once, and sent every outcome in one answer line the CLI could not read
past 16 MiB.  So the action runs on :data:`SLICE` messages at a time: their spool
writes (or bounces and removals) are done before the next slice, each slice's
outcomes go to the client as they are known, and the reactor turns in between.

The candidates are copied at the start (references to the matching queues' parts
and the held messages: a few milliseconds at a million), and each slice checks its
own against the filter when it runs: choosing a third of a million queued messages
up front took 0.6 to 1.2 s of one reactor turn.  So a message that was delivered,
removed or released before its slice is left out (one named by id says "not in
the queue"), and none is acted on twice.

The client paces the action: a slice waits until the client has read what was sent
(``report`` returns a Deferred), and a client that went away stops it between two
slices (what was done is done and logged, message by message).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet import defer, task

from ._ledger import Entry

#: Messages acted on per reactor turn: about 10 ms of holds (bench_queue.py).
SLICE = 256

#: One slice's outcomes: (message id, what was done to it).
Outcomes = list[tuple[str, str]]
#: Acts on one slice: (id, entry or None) pairs in, their outcomes out (at once, or
#: when the slice's spool work is done).
Act = Callable[[list[tuple[str, Entry | None]]], "Outcomes | defer.Deferred[Outcomes]"]
#: Takes one slice's outcomes; returns whether to go on (False: the client is gone),
#: at once or when the client is ready for more.
Report = Callable[[Outcomes], "bool | defer.Deferred[bool] | None"]


#: Turns one slice of candidates into the messages to act on: (id, entry or None)
#: pairs, fewer when some no longer match (see QueueView.select).
Pick = Callable[[Sequence[Any]], list[tuple[str, Entry | None]]]


@attrs.frozen
class BulkSummary:
    """What a bulk action did: how many messages it acted on, the outcomes' counts,
    and whether it stopped early (the client went away)."""

    matched: int
    counts: dict[str, int]
    stopped: bool = False


def kind(outcome: str) -> str:
    """An outcome without its details: "bounced (DSN to <a@b>)" counts as "bounced"."""
    return outcome.split(" (", 1)[0]


def act_in_slices(act: Act, candidates: Sequence[Any], pick: Pick, *,
                  report: Report, reactor: Any, size: int = SLICE,
                  between: Callable[[], None] = lambda: None,
                  ) -> defer.Deferred[BulkSummary]:  # fmt: skip
    """Run ``act`` over what ``pick`` makes of ``candidates``, ``size`` candidates
    a slice, yielding the reactor between slices (after calling ``between``); fires
    with the summary (a lone slice runs in the caller's turn)."""
    return defer.ensureDeferred(_run(act, candidates, pick, report, reactor, size, between))


async def _run(act: Act, candidates: Sequence[Any], pick: Pick, report: Report,
               reactor: Any, size: int, between: Callable[[], None]) -> BulkSummary:
    counts: Counter[str] = Counter()
    matched = 0
    for start in range(0, len(candidates), size):
        if start:
            between()
            await task.deferLater(reactor, 0, lambda: None)  # the reactor's turn
        selected = pick(candidates[start:start + size])
        if not selected:
            continue
        outcomes = await defer.maybeDeferred(act, selected)
        matched += len(selected)
        counts.update(kind(outcome) for _, outcome in outcomes)
        if await defer.maybeDeferred(report, outcomes) is False:
            return BulkSummary(matched, dict(counts), stopped=True)
    return BulkSummary(matched, dict(counts))
