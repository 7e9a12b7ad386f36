# -*- test-case-name: tests.test_scheduler -*-
"""
What an attempt, an expiry or a wait for a proxy does to a message's state.

Pure: each function takes a :class:`~hatwist.spool.SpooledMessage` and returns a
new one (and what to count), so the bookkeeping can be read and tested apart
from the timers and Deferreds of :mod:`hatwist.scheduler._service`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import attrs
from twisted.python.failure import Failure

from hatwist.spool import DELIVERED, FAILED, PENDING, RecipientState, SpooledMessage

#: The code recorded for recipients of an attempt that failed inside hatwist
#: (RFC 3463 4.3.0, "other or undefined mail system status").
INTERNAL_ERROR_CODE = 451

#: The code recorded (without counting an attempt) for recipients held for a proxy.
NO_PROXY_CODE = 451

#: A recipient's result: (reply code, reply text, kind), where kind is
#: ``delivered``, ``temporary`` or ``permanent``.
Result = tuple[int, str, str]

_NO_RESULT: Result = (INTERNAL_ERROR_CODE, "4.3.0 no result for this recipient", "temporary")
_STATUS_OF_KIND = {"delivered": DELIVERED, "permanent": FAILED}
_COUNTER_OF_STATUS = {DELIVERED: "delivered", FAILED: "bounced", PENDING: "deferred"}


def domain_of(address: str) -> str:
    """The lower-cased domain of an envelope address (everything after the last ``@``)."""
    return address.rpartition("@")[2].lower()


def expiry_start(message: SpooledMessage) -> float:
    """When the message's expiry clock started, as if it had arrived later by the
    time it spent held by the operator (held mail never expires while held)."""
    return message.received_at + message.held_for


def pending_at(message: SpooledMessage, domain: str) -> tuple[RecipientState, ...]:
    """The message's pending recipients at ``domain``."""
    return tuple(r for r in message.pending() if domain_of(r.address) == domain)


def results_of(outcome: Any, recipients: tuple[str, ...]) -> dict[str, Result]:
    """
    Per-recipient results of an attempt: the agent's own, or for a failure
    inside hatwist (a ``Failure``) a temporary 4.3.0 for every recipient.
    """
    if isinstance(outcome, Failure):
        reason = f"4.3.0 local error: {outcome.getErrorMessage()}"
        return {a: (INTERNAL_ERROR_CODE, reason, "temporary") for a in recipients}
    return {r.address: (r.code, r.response, r.kind) for r in outcome.recipients}


def apply_results(
    message: SpooledMessage, recipients: tuple[str, ...], results: dict[str, Result]
) -> tuple[SpooledMessage, dict[str, int]]:
    """
    The message after an attempt to ``recipients``, and how many recipients
    were ``delivered``, ``bounced`` and ``deferred``.  A recipient the result
    does not mention stays pending (it must never be dropped silently).
    """
    counts = dict.fromkeys(_COUNTER_OF_STATUS.values(), 0)
    wanted = set(recipients)
    updated = []
    for r in message.recipients:
        if r.status == PENDING and r.address in wanted:
            code, text, kind = results.get(r.address, _NO_RESULT)
            status = _STATUS_OF_KIND.get(kind, PENDING)
            counts[_COUNTER_OF_STATUS[status]] += 1
            r = attrs.evolve(r, status=status, code=code, reason=text, attempts=r.attempts + 1)
        updated.append(r)
    changed = attrs.evolve(message, recipients=tuple(updated), attempts=message.attempts + 1)
    return changed, counts


def expire(message: SpooledMessage, domain: str) -> tuple[SpooledMessage, int]:
    """Fail the pending recipients at ``domain``, keeping their last code and
    reason for the DSN; also return how many failed."""
    expired = 0
    updated = []
    for r in message.recipients:
        if r.status == PENDING and domain_of(r.address) == domain:
            expired += 1
            r = attrs.evolve(r, status=FAILED)
        updated.append(r)
    return attrs.evolve(message, recipients=tuple(updated)), expired


def note_wait(message: SpooledMessage, domain: str, reason: str) -> SpooledMessage:
    """Record why recipients at ``domain`` wait for a proxy (for an expiry DSN),
    without counting an attempt, unless a real reply was recorded already."""
    return attrs.evolve(message, recipients=tuple(
        attrs.evolve(r, code=NO_PROXY_CODE, reason=reason)
        if r.status == PENDING and r.reason is None and domain_of(r.address) == domain
        else r
        for r in message.recipients
    ))


def reason_of(result: Any) -> str:
    """Why an agent's "waiting for a proxy" result waits."""
    for r in getattr(result, "recipients", ()):
        return r.response
    return str(getattr(result, "error", None) or "no plumbed proxy")


def summary(results: dict[str, Result]) -> str:
    """``"1 delivered, 2 temporary"``: an attempt's outcome in a log line."""
    kinds = Counter(kind for _, _, kind in results.values())
    return ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
