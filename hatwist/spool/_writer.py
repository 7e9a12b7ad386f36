# -*- test-case-name: tests.test_spool -*-
"""
Group commit: one thread commits everything pending in one transaction.

The reactor thread hands operations to L{Writer.submit}; the writer thread takes
all that are queued (up to a batch limit), applies them in the order they came
and commits once.  While that commit sits in fsync, new operations queue up
behind it and make the next transaction: under load many messages share one
fsync, and alone a message pays exactly one.  Results go back in one call per
transaction (C{deliver}, which the spool routes through C{callFromThread}).

One thread and one FIFO queue also give the ordering promise for free: an
operation never lands before one submitted earlier.

Bounds a peer cannot raise: the queue (operations and content bytes, counted
until their transaction ended) refuses more with L{SpoolWriteError} (EAGAIN),
which the listener answers 452; a transaction takes at most C{batch_operations}
operations and about C{batch_bytes} of content.
"""

from __future__ import annotations

import errno
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs

from ._db import Operation, SpoolDatabase, Store
from ._errors import SpoolWriteError, as_os_error


@attrs.frozen
class Limits:
    """How much the writer holds and commits at once."""

    queue_operations: int = 20_000
    queue_bytes: int = 64 * 1024 * 1024
    batch_operations: int = 2_000
    batch_bytes: int = 8 * 1024 * 1024


DEFAULT_LIMITS = Limits()

Outcome = tuple[Any, BaseException | None]
"""The token given to L{Writer.submit} and None (committed) or the error."""


def _size(operation: Operation) -> int:
    return len(operation.content) if isinstance(operation, Store) else 0


class Writer:
    """The one thread that writes the spool database."""

    def __init__(self, database: SpoolDatabase, deliver: Callable[[list[Outcome]], None],
                 limits: Limits = DEFAULT_LIMITS) -> None:
        self._database = database
        self._deliver = deliver
        self._limits = limits
        self._ready = threading.Condition()
        self._queue: deque[tuple[Operation, Any]] = deque()
        self._operations = 0  # queued or in the running transaction
        self._bytes = 0
        self._closing = False
        self.transactions = 0
        """Transactions committed or tried (for tests and the benchmark)."""
        self._thread = threading.Thread(target=self._run, name="hatwist-spool-writer",
                                        daemon=True)

    @property
    def started(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        """Start the thread (idempotent).  It touches no file until work arrives."""
        if not self._thread.is_alive() and not self._closing:
            self._thread.start()

    def submit(self, operation: Operation, token: Any) -> None:
        """Queue C{operation}; raise L{SpoolWriteError} if the queue is full or
        the writer is closing (nothing was queued then)."""
        size = _size(operation)
        with self._ready:
            if self._closing:
                raise SpoolWriteError(self._database.path,
                                      OSError(errno.ESHUTDOWN, "the spool is closing"))
            if self._operations and (
                    self._operations >= self._limits.queue_operations
                    or self._bytes + size > self._limits.queue_bytes):
                raise SpoolWriteError(self._database.path, OSError(
                    errno.EAGAIN, f"spool write queue full ({self._operations} operations, "
                                  f"{self._bytes} bytes pending)"))
            self._queue.append((operation, token))
            self._operations += 1
            self._bytes += size
            self._ready.notify()

    def close(self) -> None:
        """Commit what is queued, then end the thread (blocks: call it off the
        reactor thread)."""
        with self._ready:
            self._closing = True
            self._ready.notify()
        if self._thread.is_alive():
            self._thread.join()

    def _take(self) -> list[tuple[Operation, Any]] | None:
        with self._ready:
            while not self._queue and not self._closing:
                self._ready.wait()
            if not self._queue:
                return None
            batch, size = [], 0
            while self._queue and len(batch) < self._limits.batch_operations:
                next_size = _size(self._queue[0][0])
                if batch and size + next_size > self._limits.batch_bytes:
                    break
                batch.append(self._queue.popleft())
                size += next_size
            return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            outcomes = self._commit([operation for operation, _ in batch])
            with self._ready:
                self._operations -= len(batch)
                self._bytes -= sum(_size(operation) for operation, _ in batch)
            tokens = [token for _, token in batch]
            self._deliver(list(zip(tokens, outcomes, strict=True)))

    def _commit(self, operations: list[Operation]) -> list[BaseException | None]:
        self.transactions += 1
        try:
            return self._database.commit(operations)
        except sqlite3.Error as e:
            if len(operations) == 1:
                return [SpoolWriteError(self._database.path, as_os_error(e))]
            # One big message must not cost the small ones beside it their place
            # (a full disk): try each on its own; only what does not fit fails.
            return [outcome for operation in operations
                    for outcome in self._commit([operation])]
        except Exception as e:  # a bug, not the disk: fail the batch, keep the thread
            return [SpoolWriteError(self._database.path, OSError(errno.EIO, repr(e)))
                    for _ in operations]
