# -*- test-case-name: tests.test_scheduler_semantics -*-
"""
When a waiting part is due after a reload changed ``retry_interval``.

A reload (SIGHUP) must not leave messages waiting out backoffs computed from the
old interval: a part that failed since the start is due one backoff step of the
*new* policy after its failure (never in the past, never after its expiry).  A
part read from the spool has no failure time here and keeps its due time until
its next attempt.  Pure: the caller passes the entry, the policy and the time.
"""

from __future__ import annotations

from typing import Any

from hatwist.schedule import RetryPolicy

from ._outcome import pending_at
from ._queues import Part


def retimed_due(part: Part, entry: Any, policy: RetryPolicy, now: float) -> float:
    """``part``'s due time by ``policy``; its old one when it cannot be re-timed
    (stale, no failure recorded since the start, nothing pending)."""
    if entry is None or part.failed_at is None:
        return part.due
    still = pending_at(entry.message, part.key[1])
    if not still:
        return part.due
    due = policy.retry_at(attempts=max(r.attempts for r in still),
                          received_at=entry.message.received_at, now=part.failed_at)
    return max(due, now)
