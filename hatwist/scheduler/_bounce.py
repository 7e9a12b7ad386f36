# -*- test-case-name: tests.test_scheduler -*-
"""
Turning a finished message's failed recipients into a spooled DSN.

The DSN is a message like any other: stored in the spool (durable before the
original is removed, so a crash can repeat a bounce but never lose one) and
then scheduled.  What it says comes from :mod:`hatwist.dsn`.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from hatwist.dsn import bounce_envelope, build_dsn, should_bounce
from hatwist.spool import FAILED, MessageNotFound, SpooledMessage

from ._outcome import bounce_lines


def needs_bounce(message: SpooledMessage) -> bool:
    """Whether a finished message owes its sender a DSN (never for a null sender)."""
    return should_bounce(message.mail_from) and any(
        r.status == FAILED for r in message.recipients)


def spool_bounce(
    spool: Any, message: SpooledMessage, *, reporting_mta: str, now: float
) -> defer.Deferred[SpooledMessage]:
    """
    Store the DSN for ``message`` in ``spool`` (from the null path, to its
    sender, in its binding); fires with the spooled notice.  The original's
    headers are quoted when it is still there.
    """
    content = defer.maybeDeferred(spool.content, message.id)
    content.addErrback(lambda f: b"" if f.check(MessageNotFound) else f)

    def store(original: bytes) -> defer.Deferred[SpooledMessage]:
        dsn = build_dsn(
            reporting_mta=reporting_mta,
            original=message,
            failed=bounce_lines(message),
            original_headers=original,
            arrival_date=message.received_at,
            date=now,
        )
        envelope = bounce_envelope(message)
        return spool.store(message.binding, envelope.mail_from, envelope.rcpt_to, dsn)

    return content.addCallback(store)
