# -*- test-case-name: tests.test_scheduler -*-
"""
The end of a message: nothing is pending any more, so the failed recipients no
earlier pass reported get a DSN (never for a null sender; see ._notices), and only
then is it removed.

A crash between the two can repeat a bounce, never lose one.  A bounce or
removal that fails is tried again one ``FALLBACK_POLICY.retry_interval`` later;
the message stays in the ledger (and the spool) meanwhile.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from hatwist.spool import DELIVERED, MessageNotFound

from ._ledger import Entry, Ledger
from ._notices import Notices
from ._rules import FALLBACK_POLICY


class Finisher:
    """
    :param notices: spools the bounce of what no earlier notice reported.
    :param forgotten: told of every message that left the ledger.
    :param track: keeps a Deferred until it fires (the scheduler's stop waits).
    """

    def __init__(
        self,
        *,
        spool: Any,
        ledger: Ledger,
        notices: Notices,
        reactor: Any,
        counters: Counter[str],
        log: Callable[[], Logger],
        forgotten: Callable[[str], None],
        track: Callable[[defer.Deferred], None],
    ) -> None:
        self._spool = spool
        self._ledger = ledger
        self._notices = notices
        self._reactor = reactor
        self._counters = counters
        self._log = log
        self._forgotten = forgotten
        self._track = track
        self._retries: dict[Entry, IDelayedCall] = {}
        self.stopping = False

    def finish(self, entry: Entry) -> defer.Deferred[None]:
        """Nothing pending: bounce the failures not reported yet, then remove the message.

        The Deferred fires (never fails) once the bounce and the removal were tried, so
        a bulk ``hatwist queue bounce`` can wait for one slice's before the next; a
        failure is logged and retried here either way.
        """
        if entry.finishing:
            return defer.succeed(None)
        entry.finishing = True
        message = entry.message
        d = self._notices.final(entry)
        d.addCallback(lambda _: self._spool.remove(message.id))
        d.addErrback(lambda f: None if f.check(MessageNotFound) else f)
        d.addCallbacks(self._removed, self._failed, callbackArgs=(entry,), errbackArgs=(entry,))
        done: defer.Deferred[None] = defer.Deferred()
        d.addBoth(lambda result: (done.callback(None), result)[1])
        self._track(d)
        return done

    def forget(self, entry: Entry) -> None:
        """``entry`` leaves the ledger (removed, or gone from the spool)."""
        self._ledger.forget(entry)
        self._forgotten(entry.message.id)
        call = self._retries.pop(entry, None)
        if call is not None and call.active():
            call.cancel()

    def timers(self) -> list[IDelayedCall]:
        return list(self._retries.values())

    def _removed(self, _: object, entry: Entry) -> None:
        self.forget(entry)
        message = entry.message
        delivered = sum(r.status == DELIVERED for r in message.recipients)
        self._log().info(
            "message {message_id} binding {binding}: removed (all recipients done: "
            "{delivered} delivered, {bounced} bounced)",
            message_id=message.id, binding=message.binding, delivered=delivered,
            bounced=len(message.recipients) - delivered, outcome="removed",
        )

    def _failed(self, failure: Failure, entry: Entry) -> None:
        self._counters["errors"] += 1
        self._log().failure("message {message_id}: bounce or removal failed; retrying later",
                            failure, message_id=entry.message.id)
        entry.finishing = False
        if not self.stopping:
            self._retries[entry] = self._reactor.callLater(
                FALLBACK_POLICY.retry_interval, self._again, entry)

    def _again(self, entry: Entry) -> None:
        self._retries.pop(entry, None)
        self.finish(entry)
