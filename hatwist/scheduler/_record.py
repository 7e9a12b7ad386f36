# -*- test-case-name: tests.test_scheduler -*-
"""
What an attempt or an expiry does: per-recipient results applied to the message,
counted, written down, and the part retried, done with, or its queue paused.

Every result is per recipient and saved as soon as the attempt ends, so a restart
never delivers twice a recipient that was recorded as delivered.  A failure inside
hatwist is a temporary failure like any other, never a reason to drop mail.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from hatwist.spool import MessageNotFound

from ._finish import Finisher
from ._ledger import Entry, Ledger
from ._notices import Notices
from ._outcome import (
    apply_results,
    expire,
    expiry_start,
    pending_at,
    reason_of,
    results_of,
    summary,
)
from ._proxy import ProxyWatch
from ._queues import Part, Queue
from ._rules import Rules
from ._waits import Waits


def unreached(outcome: Any) -> bool:
    """
    Whether an attempt found its destination unreachable: no MX of the domain gave
    a TCP session and a greeting (or its MX lookup failed).  A session that greeted
    and then broke -- mid-transaction, after the final dot, at the attempt deadline
    -- says the destination answers: one message's trouble must not pause the queue.
    """
    return bool(getattr(outcome, "error", None)) and not getattr(outcome, "mx_reached", False)


class Recorder:
    """
    :param schedule: puts a part back on the board or in the due heap.
    :param hold: the scheduler's hold for a proxy (part, entry, reason).
    :param pause: the scheduler's pause of a queue (queue, part, reason).
    :param decision_for: logs one decision about a part.
    :param track: keeps a Deferred until it fires (the scheduler's stop waits).
    """

    def __init__(
        self,
        *,
        ledger: Ledger,
        rules: Rules,
        waits: Waits,
        proxy: ProxyWatch,
        finisher: Finisher,
        notices: Notices,
        counters: Counter[str],
        reactor: Any,
        log: Callable[[], Logger],
        schedule: Callable[[Part], None],
        hold: Callable[[Part, Entry, str], None],
        pause: Callable[[Queue, Part, str], None],
        decision_for: Callable[..., None],
        track: Callable[[defer.Deferred], None],
    ) -> None:
        self._ledger = ledger
        self._rules = rules
        self._waits = waits
        self._proxy = proxy
        self._finisher = finisher
        self._notices = notices
        self._counters = counters
        self._reactor = reactor
        self._log = log
        self._schedule = schedule
        self._hold = hold
        self._pause = pause
        self._decision_for = decision_for
        self._track = track

    def retry_later(self, part: Part) -> None:
        """After a failure inside hatwist: count it, and try ``part`` again in one
        ``retry_interval`` (never at once: the same failure would spin the loop)."""
        self._counters["errors"] += 1
        part.due = self._reactor.seconds() + self._rules.policy(part.key).retry_interval
        self._schedule(part)

    def record(
        self,
        entry: Entry,
        part: Part,
        queue: Queue,
        outcome: Any,
        recipients: tuple[str, ...],
    ) -> defer.Deferred | None:
        """Apply an attempt's per-recipient results to the message and spool them."""
        if isinstance(outcome, Failure) and outcome.check(MessageNotFound):
            # Someone removed it (an operator, or a finished duplicate): nothing to send.
            self._log().warn("message {message_id}: gone from the spool; forgotten",
                             message_id=part.message_id)
            self._finisher.forget(entry)
            return None
        if isinstance(outcome, Failure):
            self._counters["errors"] += 1
            self._log().failure(
                "message {message_id} binding {binding} domain {domain}: attempt failed "
                "inside hatwist; counted as a temporary failure",
                outcome, message_id=part.message_id, binding=part.key[0], domain=part.key[1],
            )
        elif getattr(outcome, "waiting_for_proxy", False):
            self._hold(part, entry, reason_of(outcome))
            return None
        results = results_of(outcome, recipients)
        self._counters["attempts"] += 1
        message, counts = apply_results(entry.message, recipients, results)
        self._ledger.settle(entry, message, part.key, counts["delivered"] + counts["bounced"])
        for name, count in counts.items():
            self._counters[name] += count
        still = pending_at(entry.message, part.key[1])
        if counts["delivered"] and queue.paused:
            self._waits.release(queue)  # the destination answers again
        elif still and not counts["delivered"] and unreached(outcome):
            self._pause(queue, part, outcome.error)
        outcome_text = summary(results)
        if not still:
            entry.drop(part)
        else:
            part.failed_at = now = self._reactor.seconds()
            part.due = self._rules.policy(part.key).retry_at(
                attempts=max(r.attempts for r in still),
                received_at=expiry_start(entry.message),
                now=now,
            )
            self._proxy.failed(part)
        return self.save(entry, part, outcome_text, reschedule=bool(still))

    def save(self, entry: Entry, part: Part, outcome: str, *, reschedule: bool) -> Any:
        """Spool the entry's state, log the decision, and schedule what comes next."""
        if entry.parts:
            next_at = min(p.due for p in entry.parts)
            self._ledger.change(
                entry, attrs.evolve(entry.message, next_attempt_at=next_at), recount=False
            )
        self._decision_for(part, outcome, next_attempt_at=part.due if reschedule else None)
        d = self._ledger.write(entry)
        if reschedule:
            self._schedule(part)
        if not entry.parts:
            self._finisher.finish(entry)
        else:
            # The end of a pass: its failures are bounced now, not days later when
            # the message's other recipients are done (and a delay warning may be due).
            self._notices.after_pass(entry, part.key)
        return d

    def expire(self, entry: Entry, part: Part) -> None:
        """The part ran out of time: its pending recipients fail, keeping their last reason."""
        message, expired = expire(entry.message, part.key[1])
        self._ledger.settle(entry, message, part.key, expired)
        self._counters["bounced"] += expired
        entry.drop(part)
        self._track(self.save(entry, part, "expired", reschedule=False))
