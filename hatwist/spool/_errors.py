# -*- test-case-name: tests.test_spool -*-
"""
Why a spool operation failed: one class per meaning.

The inbound listener turns L{SpoolWriteError} into C{452 4.3.1}; the scheduler
treats L{MessageNotFound} as "someone else already finished this message".
"""

from __future__ import annotations

import errno
import sqlite3


class SpoolError(Exception):
    """A spool operation failed."""


class SpoolWriteError(SpoolError):
    """A write did not become durable (disk full, I/O error, permission).

    Whatever the failed operation had written was removed again, so the spool
    holds either the old state or nothing: never half a message.
    """

    def __init__(self, path: str, error: OSError) -> None:
        super().__init__(f"cannot write {path}: {error.strerror or error}")
        self.path = path
        self.errno = error.errno


class SpoolUnavailable(SpoolError):
    """The spool cannot be used at all: another process holds it, or it cannot be
    created or written.  Raised by L{hatwist.spool.Spool.open} at start, so the
    relay stops with this one line instead of answering every message 452."""


class MessageNotFound(SpoolError, KeyError):
    """No spooled message has this id (it was removed, or never stored)."""

    def __str__(self) -> str:
        return f"no spooled message {self.args[0]!r}"


class CorruptEntry(SpoolError):
    """A spool file cannot be read back as a message.  Recovery moves it aside;
    it never reaches a caller of the public API."""


#: SQLite's primary result codes that mean the same as an errno, so a caller (and
#: the 452 path) sees one kind of error whichever layer failed.
_SQLITE_ERRNO = {
    "SQLITE_FULL": errno.ENOSPC,
    "SQLITE_IOERR": errno.EIO,
    "SQLITE_READONLY": errno.EROFS,
    "SQLITE_CANTOPEN": errno.EACCES,
    "SQLITE_PERM": errno.EACCES,
    "SQLITE_NOMEM": errno.ENOMEM,
    "SQLITE_BUSY": errno.EBUSY,
    "SQLITE_LOCKED": errno.EBUSY,
}


def as_os_error(error: sqlite3.Error) -> OSError:
    """An C{OSError} with the errno that best says why SQLite failed."""
    name = (getattr(error, "sqlite_errorname", None) or "").split("_")
    primary = "_".join(name[:2])
    code = _SQLITE_ERRNO.get(primary, errno.EIO)
    return OSError(code, f"{error} ({getattr(error, 'sqlite_errorname', 'sqlite')})")
