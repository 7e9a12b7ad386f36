# -*- test-case-name: tests.test_scheduler_notices -*-
"""
What senders are told while their message is still queued: a bounce at the end
of each delivery pass for the recipients that failed in it, and one "delayed"
notice after ``delay_warning_time``.

Postfix and Exim bounce a recipient at the end of the pass in which it failed,
not when the last of its fellow recipients is done days later; so does this.
Each notice lists only what no earlier notice reported: the failed recipients
are marked ``bounced`` in the message's state (and the message
``delay_warned``) once the notice is durable in the spool.  The state is saved
after the notice, so a crash in between can repeat a notice, never lose one
(recovery owes it again: :meth:`Notices.after_pass` at take-over).  Never for a
null sender.  Notices about one message are made one after the other, so two
passes ending together cannot report one recipient twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from hatwist.dsn import DELAYED, FAILED, should_bounce
from hatwist.spool import SpooledMessage

from ._bounce import (
    mark_reported,
    owes_delay_warning,
    pending_lines,
    spool_notice,
    unreported_failures,
)
from ._ledger import Entry, Ledger
from ._queues import QueueKey


class Notices:
    """
    :param rules: asked for the ``delay_warning_time`` of a queue.
    :param submit: takes charge of a spooled DSN (the scheduler's ``submit``).
    :param track: keeps a Deferred until it fires (the scheduler's stop waits).
    """

    def __init__(
        self,
        *,
        spool: Any,
        ledger: Ledger,
        rules: Any,
        reactor: Any,
        reporting_mta: str,
        counters: Counter[str],
        log: Callable[[], Logger],
        submit: Callable[[SpooledMessage], None],
        track: Callable[[defer.Deferred], None],
    ) -> None:
        self._spool = spool
        self._ledger = ledger
        self._rules = rules
        self._reactor = reactor
        self._reporting_mta = reporting_mta
        self._counters = counters
        self._log = log
        self._submit = submit
        self._track = track
        self._busy: dict[Entry, defer.Deferred] = {}

    def after_pass(self, entry: Entry, key: QueueKey) -> None:
        """
        A delivery pass of ``entry`` at queue ``key`` ended (or the message was
        taken over at start): spool what it owes its sender now, then save the
        marks.  Cheap when nothing is owed (most passes).
        """
        if entry.finishing or not self._owes(entry, key):
            return

        def notify(_: object) -> defer.Deferred:
            d = self._notify(entry, key)
            return d.addCallback(self._save, entry)

        self._track(self._serial(entry, notify))

    def final(self, entry: Entry) -> defer.Deferred:
        """
        The message is finished: bounce whatever failure no notice reported yet
        (after any notice still under way).  Marks the entry's state in memory
        only: the message is removed next.
        """
        if entry not in self._busy and not unreported_failures(entry.message):
            return defer.succeed(None)  # most messages: delivered, nothing owed
        return self._serial(entry, lambda _: self._bounce(entry))

    # -- inside ----------------------------------------------------------------

    def _owes(self, entry: Entry, key: QueueKey) -> bool:
        message = entry.message
        if unreported_failures(message):
            return True
        # The cheap answers first: this runs for every message taken at recovery.
        if message.delay_warned or not should_bounce(message.mail_from):
            return False
        return owes_delay_warning(
            message, self._rules.delay_warning_time(key), self._reactor.seconds())

    def _serial(self, entry: Entry, step: Callable[[object], Any]) -> defer.Deferred:
        """Run ``step`` after the notices of ``entry`` already under way."""
        before = self._busy.get(entry)
        d = (defer.succeed(None) if before is None else before).addCallback(step)
        after = defer.Deferred()
        self._busy[entry] = after

        def done(result: object) -> object:
            if self._busy.get(entry) is after:
                del self._busy[entry]
            after.callback(None)  # the next notice runs whatever became of this one
            return result

        return d.addBoth(done)

    def _notify(self, entry: Entry, key: QueueKey) -> defer.Deferred:
        d = self._bounce(entry)
        d.addCallback(lambda _: self._warn(entry, key))
        return d

    def _bounce(self, entry: Entry) -> defer.Deferred:
        message = entry.message
        lines = unreported_failures(message)
        if not lines:
            return defer.succeed(False)

        def spooled(notice: SpooledMessage) -> bool:
            self._ledger.change(entry, mark_reported(entry.message, lines), recount=False)
            self._counters["dsns"] += 1
            self._log().info(
                "message {message_id} binding {binding}: DSN {dsn_id} spooled to <{sender}> "
                "({count} failed: {recipients})",
                message_id=message.id, binding=message.binding, dsn_id=notice.id,
                sender=message.mail_from, count=len(lines),
                recipients=", ".join(a for a, _, _ in lines), action=FAILED,
            )
            self._submit(notice)
            return True

        return self._spool_notice(message, lines, FAILED).addCallback(spooled)

    def _warn(self, entry: Entry, key: QueueKey) -> defer.Deferred | bool:
        message, now = entry.message, self._reactor.seconds()
        warn_after = self._rules.delay_warning_time(key)
        if entry.finishing or not owes_delay_warning(message, warn_after, now):
            return True  # the bounce (if any) still needs its save
        lines = pending_lines(message)

        def spooled(notice: SpooledMessage) -> bool:
            self._ledger.change(entry, attrs.evolve(entry.message, delay_warned=True),
                                recount=False)
            self._counters["dsns"] += 1
            self._log().info(
                "message {message_id} binding {binding}: delay warning DSN {dsn_id} spooled "
                "to <{sender}> ({count} still pending after {delay_warning_time}s)",
                message_id=message.id, binding=message.binding, dsn_id=notice.id,
                sender=message.mail_from, count=len(lines),
                delay_warning_time=warn_after, action=DELAYED,
            )
            self._submit(notice)
            return True

        return self._spool_notice(message, lines, DELAYED).addCallback(spooled)

    def _spool_notice(self, message: SpooledMessage, lines: list, action: Any) -> defer.Deferred:
        return spool_notice(self._spool, message, lines, reporting_mta=self._reporting_mta,
                            now=self._reactor.seconds(), action=action)

    def _save(self, _: object, entry: Entry) -> defer.Deferred | None:
        """Write the marks down, unless the message is being removed or is gone."""
        if entry.finishing or self._ledger.get(entry.message.id) is not entry:
            return None
        return self._ledger.write(entry)
