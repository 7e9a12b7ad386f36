# -*- test-case-name: tests.test_spool -*-
"""
The durable message store: a directory, no server.

A message gets its 250 only after L{Spool.store} fired, and L{Spool.store} fires
only after the content, the state and the directory entry were fsynced.  The
layout on disk is described in L{hatwist.spool._layout}.
"""

from ._disk import Disk
from ._errors import MessageNotFound, SpoolError, SpoolWriteError
from ._spool import Spool
from ._values import DELIVERED, FAILED, PENDING, RecipientState, SpooledMessage

# Logs (a Logger's namespace is its class's module) and reprs name the public home.
Spool.__module__ = __name__

__all__ = [
    "DELIVERED",
    "FAILED",
    "PENDING",
    "Disk",
    "MessageNotFound",
    "RecipientState",
    "Spool",
    "SpoolError",
    "SpoolWriteError",
    "SpooledMessage",
]
