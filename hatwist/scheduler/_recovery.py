# -*- test-case-name: tests.test_scheduler_recovery -*-
"""
The start-up read of the spool, in batches, so a relay with a million spooled
messages answers SMTP and /status within seconds and delivers while it reads.

The spool's ``recover_batches`` reads in id order off the reactor thread and
hands each batch to :meth:`Recovery.batch` in the reactor thread; a batch costs
constant work per message and one pump, then the reactor runs again.  Mail
accepted meanwhile goes straight to the scheduler; if it also finished
meanwhile, the listing may still name it, and it must not come back.

After each batch, what was read is frozen out of the cyclic garbage collector
(``gc.freeze``).  A million queued messages are some six million tracked
objects, and every full pass of the collector over them stops the reactor:
1.5 s at 300,000 messages and 3.8 s at 1,000,000 on the 2-core box
(bench_scheduler), more than the read itself costs.  Frozen objects are still
freed by reference counting as messages finish -- the scheduler keeps no
reference cycles of its own once a message is forgotten -- and
:meth:`Recovery.thaw` gives them back to the collector at a stop.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from hatwist.spool import SpooledMessage

#: Messages per batch of the start-up read: one reactor turn each.
RECOVERY_BATCH = 2_000


class Recovery:
    """
    :param spool: has ``recover_batches(on_batch, *, batch_size) -> Deferred[int]``.
    :param take: takes charge of one recovered message (False: known already).
    :param pump: starts what can start, once per batch.
    :param log: returns the scheduler's current ``Logger``.
    :param freeze: freeze each batch out of the garbage collector (see above).
    """

    def __init__(
        self,
        spool: Any,
        *,
        take: Callable[[SpooledMessage], bool],
        pump: Callable[[], None],
        log: Callable[[], Logger],
        batch_size: int = RECOVERY_BATCH,
        freeze: bool = True,
    ) -> None:
        self._spool = spool
        self._take = take
        self._pump = pump
        self._log = log
        self._batch_size = batch_size
        self._freeze = freeze
        self._frozen = False
        self._waiters: list[defer.Deferred] = []
        self._finished: set[str] = set()
        self._reading: defer.Deferred | None = None
        self._stopped = False
        self.done = False
        self.taken = 0
        """Messages taken in charge so far."""

    def start(self) -> defer.Deferred:
        """Read the spool; the Deferred fires when it is read (or stopped)."""
        d = defer.maybeDeferred(self._spool.recover_batches, self.batch,
                                batch_size=self._batch_size)
        self._reading = d
        d.addCallbacks(self._read, self._failed)
        d.addBoth(self._over)
        return d

    def when_done(self) -> defer.Deferred:
        """Fires once the messages found at start-up are scheduled."""
        if self.done:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._waiters.append(d)
        return d

    def finished(self, message_id: str) -> None:
        """``message_id`` finished while the spool was read: skip it if listed."""
        if not self.done:
            self._finished.add(message_id)

    def stop(self) -> None:
        """Take no more batches; the rest is read at the next start."""
        self._stopped = True
        if self._reading is not None:
            self._reading.cancel()

    def batch(self, messages: list[SpooledMessage]) -> None:
        """One batch of the read: constant work per message, then one pump."""
        if self._stopped:
            return
        finished = self._finished
        for message in messages:
            if message.id in finished:
                finished.discard(message.id)  # listed once: no need to remember it longer
                continue
            try:
                if self._take(message):
                    self.taken += 1
            except Exception:
                # One message must not stop the read of the rest; it stays spooled.
                self._log().failure("scheduler: recovering message {message_id} failed; "
                                    "it stays spooled", message_id=message.id)
        self._pump()
        if self._freeze:
            gc.freeze()
            self._frozen = True

    def refreeze(self) -> None:
        """Freeze what was made since, if the read froze what it read: a bulk
        ``hatwist queue`` action makes new objects for every message it touches (a
        release of 330,000 held messages: two full collections of 255 ms at 300,000
        queued), which would otherwise be scanned again and again (O(1) here)."""
        if self._frozen:
            gc.freeze()

    def thaw(self) -> None:
        """Give what :meth:`batch` froze back to the garbage collector (at a stop)."""
        if self._frozen:
            gc.unfreeze()
            self._frozen = False

    def _read(self, _: object) -> None:
        self._log().info("scheduler: {count} spooled messages recovered", count=self.taken)

    def _failed(self, failure: Failure) -> None:
        if self._stopped and failure.check(defer.CancelledError):
            self._log().info("scheduler: stopped while reading the spool ({count} messages "
                             "read); the rest waits for the next start", count=self.taken)
            return
        self._log().failure(
            "spool recovery failed: spooled mail waits for the next start", failure
        )

    def _over(self, _: object) -> None:
        self.done = True
        self._reading = None
        self._finished.clear()
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)
