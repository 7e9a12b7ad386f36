"""Helpers for the spool tests (tests/test_spool*.py; no tests of its own): spools that
close themselves, a database whose commits a test can hold or break, the old writer."""

from __future__ import annotations

import os
import sqlite3
import threading

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.python.threadpool import ThreadPool

from hatwist.spool import Disk, Spool
from hatwist.spool._db import SpoolDatabase
from hatwist.spool._legacy import SpoolDirectory
from hatwist.spool._values import SpooledMessage, make_message_id, new_recipients

DEADLINE = 10
CONTENT = b"Subject: hi\r\n\r\nbody\r\n"


def deadline(d: defer.Deferred) -> defer.Deferred:
    return d.addTimeout(DEADLINE, reactor)


@pytest.fixture
def pool():
    threadpool = ThreadPool(minthreads=1, maxthreads=4, name="test-spool")
    threadpool.start()
    yield threadpool
    threadpool.stop()


@pytest.fixture
def spools(pool):
    """``spools(directory, **options)``: a Spool on the test's pool, closed at the end
    (its lock and files released) unless the test closed it already."""
    made: list[Spool] = []

    def make(directory, **options) -> Spool:
        made.append(Spool(str(directory), reactor=reactor, threadpool=pool, **options))
        return made[-1]

    yield make
    for spool in made:
        pytest_twisted.blockon(spool.close())


class GatedDatabase(SpoolDatabase):
    """The real database; a test can hold its next commit (``close_gate``), see it
    waiting (``entered``), make one fail as SQLite would (``fail_next``), and read
    the size of every transaction (``batches``) and the threads that did the work."""

    def __init__(self, directory: str) -> None:
        super().__init__(directory)
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.batches: list[int] = []
        self.threads: list[tuple[str, threading.Thread]] = []
        self._failures: list[str] = []

    def close_gate(self) -> None:
        self.entered.clear()
        self.gate.clear()

    def open_gate(self) -> None:
        self.gate.set()

    def fail_next(self, errorname: str) -> None:
        self._failures.append(errorname)

    def commit(self, operations):
        self.threads.append(("commit", threading.current_thread()))
        self.entered.set()
        self.gate.wait(DEADLINE)
        self.batches.append(len(operations))
        if self._failures:
            error = sqlite3.OperationalError(f"injected {self._failures[0]}")
            error.sqlite_errorname = self._failures.pop(0)
            raise error
        return super().commit(operations)

    def reader(self):
        self.threads.append(("reader", threading.current_thread()))
        return super().reader()


def old_message(n: int, *, binding: str = "default", recipients=("r@example.net",),
                content: bytes = CONTENT, since: float = 1_700_000_000
                ) -> tuple[SpooledMessage, bytes]:
    """A message as the old code made it, received ``n`` seconds after ``since``."""
    micros = int((since + n) * 1_000_000)
    message = SpooledMessage(
        id=make_message_id(micros, n), binding=binding, mail_from="s@example.org",
        recipients=new_recipients(recipients), received_at=micros / 1e6, attempts=0,
        next_attempt_at=micros / 1e6, size=len(content))
    return message, content


def write_old_layout(directory, messages) -> SpoolDirectory:
    """Store ``messages`` ((message, content) pairs) with the old code's writer."""
    old = SpoolDirectory(str(directory), Disk())
    for message, content in messages:
        old.store(message, content)
    return old


def old_files(directory) -> dict[str, list[str]]:
    """What is left of the old layout: the names in each of its directories."""
    root = str(directory)
    return {sub: sorted(os.listdir(os.path.join(root, sub)))
            for sub in ("tmp", "msg", "corrupt") if os.path.isdir(os.path.join(root, sub))}
