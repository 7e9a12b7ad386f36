# -*- test-case-name: tests.test_spool -*-
"""
L{Spool}: the durable message store as the reactor sees it.

Every file operation runs in an injected thread pool, never in the reactor
thread, and each returned Deferred fires only once the change is on disk.
Operations on one message run in the order they were asked for (a later
L{Spool.update} never lands before an earlier one); different messages proceed
in parallel, as many at once as the pool has threads.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from ._disk import Disk
from ._layout import SpoolDirectory
from ._values import SpooledMessage, make_message_id, new_recipients

T = TypeVar("T")
MICROSECONDS = 1_000_000
ENTROPY_BITS = 40


class Spool:
    """Messages and their per-recipient state under one directory.

    @param reactor: provides L{IReactorTime} (ids and C{received_at}) and
        L{IReactorFromThreads} (to come back from the pool).
    @param threadpool: a started L{twisted.python.threadpool.ThreadPool}, or
        anything with its C{callInThreadWithCallback}.
    @param disk: the file-system seam; tests wrap it to watch or break writes.
    """

    log = Logger()

    def __init__(self, directory: str, *, reactor: Any, threadpool: Any,
                 disk: Disk | None = None) -> None:
        self.directory = directory
        self._reactor: IReactorTime | IReactorFromThreads = reactor
        self._pool = threadpool
        self._files = SpoolDirectory(directory, disk if disk is not None else Disk())
        self._last_micros = 0
        self._locks: dict[str, DeferredLock] = {}

    def _new_id(self, now: float) -> str:
        # Strictly increasing within this process even if the clock steps back.
        micros = max(int(now * MICROSECONDS), self._last_micros + 1)
        self._last_micros = micros
        return make_message_id(micros, secrets.randbits(ENTROPY_BITS))

    def _in_thread(self, f: Callable[..., T], *args: object) -> Deferred[T]:
        return deferToThreadPool(self._reactor, self._pool, f, *args)

    def _in_order(self, message_id: str, f: Callable[..., T], *args: object) -> Deferred[T]:
        lock = self._locks.setdefault(message_id, DeferredLock())

        def forget(result: object) -> object:
            if not lock.locked and self._locks.get(message_id) is lock:
                del self._locks[message_id]
            return result

        return lock.run(self._in_thread, f, *args).addBoth(forget)

    def store(self, binding: str, mail_from: str, rcpt_to: Sequence[str],
              content: bytes, *, smtputf8: bool = False) -> Deferred[SpooledMessage]:
        """Spool a new message; fires with it once durable, or fails with
        L{SpoolWriteError} having left nothing behind."""
        if not rcpt_to:
            raise ValueError("a message needs at least one recipient")
        now = self._reactor.seconds()
        message = SpooledMessage(
            id=self._new_id(now), binding=binding, mail_from=mail_from,
            recipients=new_recipients(rcpt_to), received_at=now, attempts=0,
            next_attempt_at=now, size=len(content), smtputf8=smtputf8,
        )
        return self._in_order(message.id, self._files.store, message, content).addCallback(
            lambda _: message)

    def content(self, message_id: str) -> Deferred[bytes]:
        """The message content as received; L{MessageNotFound} if it is gone."""
        return self._in_order(message_id, self._files.content, message_id)

    def update(self, message: SpooledMessage) -> Deferred[None]:
        """Replace the stored state of C{message} (same id) atomically."""
        return self._in_order(message.id, self._files.update, message)

    def remove(self, message_id: str) -> Deferred[None]:
        """Delete a finished message; L{MessageNotFound} if it was not there."""
        return self._in_order(message_id, self._files.remove, message_id)

    def recover(self) -> Deferred[list[SpooledMessage]]:
        """At start-up: every valid message, oldest first.

        Debris in tmp/ is deleted; corrupt or half-written files are moved to
        corrupt/ and logged, never raised.  Messages stored or changed while it
        runs are left alone: their owner (the listener, the scheduler) has them.
        """

        def report(found: tuple[list[SpooledMessage], list]) -> list[SpooledMessage]:
            messages, problems = found
            for problem in problems:
                self.log.warn("spool {directory}: set aside {name}: {reason}",
                              directory=self.directory, name=problem.name,
                              reason=problem.reason)
            if messages:
                self._last_micros = max(self._last_micros,
                                        int(messages[-1].id.split("-")[0], 16))
            return messages

        # Ids with an operation queued or running are this process's own work in
        # progress, not debris (read from the pool thread: membership only).
        return self._in_thread(self._files.recover, self._locks).addCallback(report)
