# -*- test-case-name: tests.test_spool -*-
"""
L{Spool}: the durable message store as the reactor sees it.

Writes (store, update, remove) go to one writer thread that commits everything
pending in one SQLite transaction (L{hatwist.spool._writer}); each returned
Deferred fires, back in the reactor thread, only once its transaction
committed, so a 250 still means "fsynced".  Operations run in the order they
were asked for (one queue), so a later L{Spool.update} never lands before an
earlier one.  Reads (content, recovery) run in the injected thread pool on
their own connections, beside the writer (WAL).  Nothing here blocks the
reactor thread except L{Spool.open}, the one start-up step made to.
"""

from __future__ import annotations

import secrets
import sqlite3
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.threads import deferToThread, deferToThreadPool
from twisted.logger import Logger

from . import _db
from ._db import Remove, SetAside, SpoolDatabase, Store, Update
from ._disk import Disk
from ._errors import CorruptEntry, SpoolError, SpoolWriteError, as_os_error
from ._legacy import has_old_layout, import_old_layout
from ._lock import SpoolLock
from ._values import SpooledMessage, Strings, decode, make_message_id, new_recipients
from ._writer import DEFAULT_LIMITS, Limits, Outcome, Writer

T = TypeVar("T")
MICROSECONDS = 1_000_000
ENTROPY_BITS = 40
RECOVERY_BATCH = 10_000


class Spool:
    """Messages and their per-recipient state under one directory.

    @param reactor: provides C{seconds} (ids and C{received_at}) and
        C{callFromThread} (results come back through it).
    @param threadpool: a started L{twisted.python.threadpool.ThreadPool} for
        reads (content, recovery), or anything with its C{callInThreadWithCallback}.
    @param disk: the file-system seam of the old-layout import.
    @param database: makes the L{SpoolDatabase} for a directory (tests wrap it to
        watch or break commits).
    """

    log = Logger()

    def __init__(self, directory: str, *, reactor: Any, threadpool: Any,
                 disk: Disk | None = None,
                 database: Callable[[str], SpoolDatabase] = SpoolDatabase,
                 limits: Limits = DEFAULT_LIMITS) -> None:
        self.directory = directory
        self._reactor = reactor
        self._pool = threadpool
        self._disk = disk if disk is not None else Disk()
        self._database = database(directory)
        self._limits = limits
        self._last_micros = 0
        self._lock: SpoolLock | None = None
        self._writer: Writer | None = None  # set once open
        self._next_writer = Writer(self._database, self._from_writer, limits)
        self._opening: list[Deferred[None]] | None = None
        self._in_flight: dict[str, int] = {}  # message id -> writes not yet committed
        self._idle: dict[str, list[Deferred[None]]] = {}  # waiting for those writes
        self._readers = threading.local()
        self._reader_connections: list[Any] = []

    # -- opening and closing ------------------------------------------------------

    def open(self) -> None:
        """Lock the directory, open (or create) the database, import an old file
        layout once, and start the writer.  Blocks; idempotent.

        Raises L{SpoolUnavailable} (C{spool DIR in use by pid N}, or why the
        spool cannot be written) or L{SpoolError}: the relay must not start then.
        """
        self._bump(self._open())

    def _open(self) -> int:
        if self._writer is not None:
            return 0
        lock = SpoolLock.acquire(self.directory)
        try:
            self._database.open()
            if has_old_layout(self.directory, self._disk):
                self._import()
            newest = self._database.max_id()
        except BaseException:
            self._database.close()
            lock.release()
            raise
        self._lock = lock
        self._writer = self._next_writer
        self._writer.start()
        return int(newest.split("-")[0], 16) if newest else 0

    def _import(self) -> None:
        try:
            report = import_old_layout(self.directory, self._database, self._disk)
        except OSError as e:
            raise SpoolError(f"spool {self.directory}: importing the old file layout failed, "
                             f"nothing lost, it is retried at the next start: "
                             f"{e.strerror or e}: {getattr(e, 'filename', '')}") from e
        for problem in report.set_aside:
            self.log.warn("spool {directory}: set aside {name}: {reason}",
                          directory=self.directory, name=problem.name, reason=problem.reason)
        self.log.info(
            "spool {directory}: imported {imported} messages from the old file layout "
            "({set_aside} files set aside in corrupt/, {debris} unacknowledged or finished "
            "files removed)", directory=self.directory, imported=report.imported,
            set_aside=len(report.set_aside), debris=report.debris)

    def start_writer(self) -> None:
        """Start the writer thread now, before L{open} (it touches no file): a
        process then has all its threads from the start, which tools attached to
        it early (C{perf stat -p}) rely on."""
        self._next_writer.start()

    def _bump(self, micros: int) -> None:
        # New ids sort after every stored one, even if the clock stepped back.
        self._last_micros = max(self._last_micros, micros)

    def _ready(self) -> Deferred[None]:
        """Fires once the spool is open (opening it in the pool on first use, so
        a spool that nobody called L{open} on still works)."""
        # While a lazy open finishes, everything queues behind it, in order.
        if self._writer is not None and self._opening is None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        if self._opening is None:
            self._opening = []
            deferToThreadPool(self._reactor, self._pool, self._open).addBoth(self._opened)
        self._opening.append(d)
        return d

    def _opened(self, result: Any) -> None:
        waiting, self._opening = self._opening or [], None
        if isinstance(result, int):
            self._bump(result)
            for d in waiting:
                d.callback(None)
        else:  # every waiting operation fails; the next one tries to open again
            for d in waiting:
                d.errback(result)

    def close(self) -> Deferred[None]:
        """Commit what is queued, stop the writer, release the lock."""
        writer, self._writer = self._writer, None
        if writer is None:
            idle, self._next_writer = self._next_writer, Writer(
                self._database, self._from_writer, self._limits)
            # Started early (start_writer) but never opened: end its thread.
            return deferToThread(idle.close) if idle.started else succeed(None)
        self._next_writer = Writer(self._database, self._from_writer, self._limits)

        def closed() -> None:
            writer.close()
            for connection in self._reader_connections:
                connection.close()
            self._reader_connections.clear()
            self._readers = threading.local()  # a reopened spool makes new ones
            self._database.close()
            if self._lock is not None:
                self._lock.release()
                self._lock = None

        # The reactor's own pool, not ours: the caller may stop ours right after.
        return deferToThread(closed)

    # -- writes -------------------------------------------------------------------

    def _new_id(self, now: float) -> str:
        # Strictly increasing within this process even if the clock steps back.
        micros = max(int(now * MICROSECONDS), self._last_micros + 1)
        self._last_micros = micros
        return make_message_id(micros, secrets.randbits(ENTROPY_BITS))

    def _write(self, operation: Any) -> Deferred[None]:
        message_id = operation.message_id
        self._in_flight[message_id] = self._in_flight.get(message_id, 0) + 1
        d: Deferred[None] = Deferred()
        if self._writer is not None and self._opening is None:
            self._submit(operation, d)
        else:
            self._ready().addCallbacks(lambda _: self._submit(operation, d),
                                       lambda f: self._finished(message_id, d, f.value))
        return d

    def _submit(self, operation: Any, d: Deferred[None]) -> None:
        writer = self._writer
        try:
            if writer is None:
                raise SpoolWriteError(self.directory, OSError(0, "the spool is closed"))
            writer.submit(operation, (operation.message_id, d))
        except SpoolWriteError as e:
            self._finished(operation.message_id, d, e)

    def _from_writer(self, outcomes: list[Outcome]) -> None:
        """In the writer thread: one hop to the reactor per transaction."""
        self._reactor.callFromThread(self._results, outcomes)

    def _results(self, outcomes: list[Outcome]) -> None:
        for (message_id, d), error in outcomes:
            self._finished(message_id, d, error)

    def _finished(self, message_id: str, d: Deferred[None], error: BaseException | None
                  ) -> None:
        left = self._in_flight.get(message_id, 1) - 1
        if left:
            self._in_flight[message_id] = left
        else:
            self._in_flight.pop(message_id, None)
            for waiter in self._idle.pop(message_id, ()):
                waiter.callback(None)
        if error is None:
            d.callback(None)
        else:
            d.errback(error)

    def store(self, binding: str, mail_from: str, rcpt_to: Sequence[str],
              content: bytes, *, smtputf8: bool = False) -> Deferred[SpooledMessage]:
        """Spool a new message; fires with it once committed (fsynced), or fails
        with L{SpoolWriteError} having written nothing of it.  C{smtputf8}: the
        submitter asked for SMTPUTF8 (RFC 6531), so delivery must too."""
        if not rcpt_to:
            raise ValueError("a message needs at least one recipient")
        now = self._reactor.seconds()
        message = SpooledMessage(
            # One copy of each binding name however many messages the scheduler holds.
            id=self._new_id(now), binding=sys.intern(binding), mail_from=mail_from,
            recipients=new_recipients(rcpt_to), received_at=now, attempts=0,
            next_attempt_at=now, size=len(content), smtputf8=smtputf8,
        )
        return self._write(Store(message, bytes(content))).addCallback(lambda _: message)

    def update(self, message: SpooledMessage) -> Deferred[None]:
        """Replace the stored state of C{message} (same id) atomically.

        Fires once committed; fails (L{SpoolWriteError}, L{MessageNotFound}) only
        if nothing changed."""
        return self._write(Update(message))

    def remove(self, message_id: str) -> Deferred[None]:
        """Delete a finished message; L{MessageNotFound} if it was not there."""
        return self._write(Remove(message_id))

    # -- reads ---------------------------------------------------------------------

    def _reader(self) -> Any:
        """This pool thread's read connection."""
        connection = getattr(self._readers, "connection", None)
        if connection is None:
            connection = self._readers.connection = self._database.reader()
            self._reader_connections.append(connection)
        return connection

    def _read(self, f: Callable[..., T], *args: object) -> Deferred[T]:
        def run() -> T:
            try:
                return f(self._reader(), *args)
            except sqlite3.Error as e:
                raise SpoolError(f"spool {self._database.path}: read failed: "
                                 f"{as_os_error(e).strerror}") from e

        return self._ready().addCallback(
            lambda _: deferToThreadPool(self._reactor, self._pool, run))

    def content(self, message_id: str) -> Deferred[bytes]:
        """The message content as received; L{MessageNotFound} if it is gone.
        Waits for this message's writes asked for before (a store still in its
        transaction, a removal)."""
        if message_id in self._in_flight:
            waiter: Deferred[None] = Deferred()
            self._idle.setdefault(message_id, []).append(waiter)
            return waiter.addCallback(lambda _: self._read(_db.read_content, message_id))
        return self._read(_db.read_content, message_id)

    def set_aside(self) -> Deferred[list[tuple[str, str]]]:
        """(id, reason) of every row recovery set aside, oldest first."""
        return self._read(_db.read_corrupt)

    # -- recovery ------------------------------------------------------------------

    def recover_batches(self, on_batch: Callable[[list[SpooledMessage]], object], *,
                        batch_size: int = RECOVERY_BATCH) -> Deferred[int]:
        """Read every valid message in id (= age) order, in batches of at most
        C{batch_size}, off the reactor thread; call C{on_batch} with each batch in
        the reactor thread, and read the next one only after it returned (if it
        returns a Deferred, after that fired), so the reactor gets its turns in
        between.  Fires with the number of messages reported.

        What it promises about the spool changing while it runs: each message is
        reported at most once (the read goes forward by id).  Messages this
        spool object was asked to store, update or remove and that were not yet
        committed when the call started, and every message stored after it
        started, are never reported: their owner (the listener, the scheduler)
        holds them already.  Every other message is reported unless it was
        removed before the read reached it.  Nothing is lost either way: what is
        not reported here is in a caller's hands, and in the spool for the next
        start.

        A row that cannot be decoded is set aside (moved, whole, to the
        C{corrupt} table) and logged, never dropped.  A read error (EIO, EMFILE,
        a locked or unreadable file) fails the recovery with L{SpoolError} and
        sets nothing aside: every message stays, and the next recovery retries.
        """
        return Deferred.fromCoroutine(self._recover(on_batch, batch_size))

    async def _recover(self, on_batch: Callable[[list[SpooledMessage]], object],
                       batch_size: int) -> int:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        await self._ready()
        horizon = make_message_id(self._last_micros, (1 << ENTROPY_BITS) - 1)
        busy = frozenset(self._in_flight)
        strings = Strings()
        after, total, setting_aside = "", 0, []
        while True:
            last, messages, problems = await self._read(
                _read_batch, after, horizon, batch_size, strings)
            if last is None:
                break
            after = last
            for message_id, reason in problems:
                if message_id in busy:
                    continue
                self.log.warn("spool {directory}: set aside message {message_id}: {reason}",
                              directory=self.directory, message_id=message_id,
                              reason=reason)
                setting_aside.append(self._write(SetAside(message_id, reason)))
            batch = [m for m in messages if m.id not in busy] if busy else messages
            if batch:
                total += len(batch)
                result = on_batch(batch)
                if isinstance(result, Deferred):
                    await result
        for ok, value in await DeferredList(setting_aside, consumeErrors=True):
            if not ok:
                self.log.error("spool {directory}: could not set a corrupt row aside "
                               "(it stays, and is looked at again next start): {error}",
                               directory=self.directory, error=value.getErrorMessage())
        return total

    def recover(self) -> Deferred[list[SpooledMessage]]:
        """Every valid message, oldest first (L{recover_batches} collected)."""
        found: list[SpooledMessage] = []
        return self.recover_batches(found.extend).addCallback(lambda _: found)


def _read_batch(connection: Any, after: str, horizon: str, limit: int, strings: Strings
                ) -> tuple[str | None, list[SpooledMessage], list[tuple[str, str]]]:
    """In a pool thread: the next rows after C{after} decoded, the last id read
    (None at the end), and (id, reason) for each row that is not a message."""
    rows = _db.read_rows(connection, after, horizon, limit)
    messages, problems = [], []
    for row in rows:
        try:
            message = decode(row.state, strings)
            if message.id != row.id:
                raise CorruptEntry(f"state names message {message.id!r}")
            if row.content_size is None:
                raise CorruptEntry("content row missing")
            if row.content_size != message.size:
                raise CorruptEntry(f"content is {row.content_size} bytes, "
                                   f"state says {message.size}")
        except CorruptEntry as e:
            problems.append((row.id, str(e)))
        else:
            messages.append(message)
    return (rows[-1].id if rows else None), messages, problems
