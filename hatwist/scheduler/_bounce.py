# -*- test-case-name: tests.test_scheduler_notices -*-
"""
What a message owes its sender, and turning that into a spooled DSN.

Pure questions first (:func:`unreported_failures`, :func:`owes_delay_warning`,
:func:`mark_reported`), then :func:`spool_notice`: a DSN is a message like any
other, stored in the spool (durable before the state that says it was sent, so
a crash can repeat a notice but never lose one) and then scheduled.  What it
says comes from :mod:`hatwist.dsn`.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs
from twisted.internet import defer

from hatwist.dsn import bounce_envelope, build_dsn, should_bounce
from hatwist.spool import FAILED, MessageNotFound, SpooledMessage

Line = tuple[str, int | None, str | None]
"""One recipient as ``hatwist.dsn.build_dsn`` wants it: (address, code, reason)."""


def unreported_failures(message: SpooledMessage) -> list[Line]:
    """
    The failed recipients no DSN has reported yet (none for a null sender).  One
    whose last code was temporary ran out of time: ``build_dsn`` reports it as
    expired (5.4.7) while still quoting that last reply.
    """
    if not should_bounce(message.mail_from):
        return []
    return [(r.address, r.code, r.reason) for r in message.recipients
            if r.status == FAILED and not r.bounced]


def owes_delay_warning(message: SpooledMessage, delay_warning_time: int, now: float) -> bool:
    """Whether ``message`` is due its one "delayed" DSN: the warning is on (not 0),
    the sender is not null, nothing was sent yet, recipients are still pending and
    the message has waited ``delay_warning_time`` seconds."""
    return (
        delay_warning_time > 0
        and not message.delay_warned
        and now - message.received_at >= delay_warning_time
        and should_bounce(message.mail_from)
        and bool(message.pending())
    )


def pending_lines(message: SpooledMessage) -> list[Line]:
    """The pending recipients, for a "delayed" DSN."""
    return [(r.address, r.code, r.reason) for r in message.pending()]


def mark_reported(message: SpooledMessage, reported: list[Line]) -> SpooledMessage:
    """``message`` with the failed recipients among ``reported`` marked bounced."""
    addresses = {address for address, _, _ in reported}
    if not addresses:
        return message
    return attrs.evolve(message, recipients=tuple(
        attrs.evolve(r, bounced=True)
        if r.status == FAILED and not r.bounced and r.address in addresses else r
        for r in message.recipients
    ))


def spool_notice(
    spool: Any, message: SpooledMessage, lines: list[Line], *, reporting_mta: str,
    now: float, action: Literal["failed", "delayed"] = "failed",
) -> defer.Deferred[SpooledMessage]:
    """
    Store a DSN about ``lines`` of ``message`` in ``spool`` (from the null path, to
    its sender, in its binding); fires with the spooled notice.  The original's
    headers are quoted when it is still there.
    """
    content = defer.maybeDeferred(spool.content, message.id)
    content.addErrback(lambda f: b"" if f.check(MessageNotFound) else f)

    def store(original: bytes) -> defer.Deferred[SpooledMessage]:
        dsn = build_dsn(
            reporting_mta=reporting_mta,
            original=message,
            failed=lines,
            original_headers=original,
            arrival_date=message.received_at,
            date=now,
            action=action,
        )
        envelope = bounce_envelope(message)
        return spool.store(message.binding, envelope.mail_from, envelope.rcpt_to, dsn)

    return content.addCallback(store)
