# -*- test-case-name: tests.service.test_spool_service -*-
"""
The spool as a twistd service: its read threads, and the start-up step that
locks and opens it.

It is the first child of the relay's service tree, so the spool is open (locked,
database checked writable, an old file layout imported) before the scheduler
recovers from it or the listener accepts mail, and it is stopped last, after
everything that writes to it.  A spool that cannot be used stops the start with
one line (C{spool DIR in use by pid N}, or why it cannot be written) and a
non-zero exit, instead of a relay that answers every message 452.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import defer, threads
from twisted.logger import Logger

from ._errors import SpoolError
from ._spool import Spool


class SpoolService(service.Service):
    """Starts the read pool and opens C{spool}; at stop, closes both."""

    log = Logger()

    def __init__(self, spool: Spool, pool: Any) -> None:
        self.spool = spool
        self.pool = pool

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        # The writer thread before the listener binds (it touches no file; the spool
        # opens in startService, as the user the relay runs as), so the process has its
        # threads by the time it says it listens.  It is a daemon thread: a start that
        # fails later leaves nothing to join.
        self.spool.start_writer()

    def startService(self) -> None:
        super().startService()
        self.pool.start()  # first: the spool's read thread exists before the open below
        try:
            self.spool.open()  # blocks: before the reactor runs, on purpose
        except SpoolError as e:
            self.pool.stop()
            # One line in the log (a daemonised twistd's parent then says "look at the
            # log file"), and exit status 1 without a traceback.
            self.log.critical("{error}", error=str(e))
            raise SystemExit(1) from None
        self.log.info("spool {directory} open", directory=self.spool.directory)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        d = self.spool.close()
        # ThreadPool.stop joins its threads: a blocking call kept off the reactor thread.
        return d.addCallback(lambda _: threads.deferToThread(self.pool.stop))
