# -*- test-case-name: tests.test_spool -*-
"""
The durable message store: one SQLite database in WAL mode, no server.

A message gets its 250 only after L{Spool.store} fired, and L{Spool.store} fires
only after the transaction holding its content and state committed (fsynced,
C{synchronous=FULL}).  One writer thread commits everything pending at once
(group commit).  The schema is described in L{hatwist.spool._db}; a spool
directory in the old file layout is imported once (L{hatwist.spool._legacy}).
"""

from ._disk import Disk
from ._errors import MessageNotFound, SpoolError, SpoolUnavailable, SpoolWriteError
from ._service import SpoolService
from ._spool import Spool
from ._values import DELIVERED, FAILED, PENDING, RecipientState, SpooledMessage
from ._writer import Limits

# Logs (a Logger's namespace is its class's module) and reprs name the public home.
Spool.__module__ = __name__
SpoolService.__module__ = __name__

__all__ = [
    "DELIVERED",
    "FAILED",
    "PENDING",
    "Disk",
    "Limits",
    "MessageNotFound",
    "RecipientState",
    "Spool",
    "SpoolError",
    "SpoolService",
    "SpoolUnavailable",
    "SpoolWriteError",
    "SpooledMessage",
]
