# -*- test-case-name: tests.test_spool_open -*-
"""
One process per spool directory: an exclusive C{flock} on C{spool_dir/lock}.

Two relays on one spool would both recover and deliver the same messages.  The
lock is taken when the spool opens and held for the life of the process (the
kernel drops it when the process dies, even by C{kill -9}, so a crash never
leaves a stale lock).  The file holds the owner's pid, so the refusal can say
who has it.  It is never unlinked: unlinking would let a third process lock a
new file while the second still holds the old one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os

from ._disk import Disk
from ._errors import SpoolUnavailable

LOCK_FILE = "lock"
FILE_MODE = 0o600
DIR_MODE = 0o700


class SpoolLock:
    """A held lock; L{release} (or process exit) gives it up."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, directory: str) -> SpoolLock:
        """Create C{directory} if needed and lock it, or raise L{SpoolUnavailable}
        (C{spool DIR in use by pid N}, or why it cannot be written)."""
        path = os.path.join(directory, LOCK_FILE)
        try:
            if not os.path.isdir(directory):
                os.makedirs(directory, DIR_MODE, exist_ok=True)
                # The new directory's own entry must survive a crash with the spool in it.
                Disk().fsync_dir(os.path.dirname(os.path.abspath(directory)))
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        except OSError as e:
            raise SpoolUnavailable(
                f"spool {directory} cannot be written: {e.strerror or e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_pid(fd)
            os.close(fd)
            raise SpoolUnavailable(f"spool {directory} in use by pid {owner}") from None
        except OSError as e:
            os.close(fd)
            raise SpoolUnavailable(f"spool {directory} cannot be locked: {e.strerror or e}"
                                   ) from e
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except OSError as e:
            os.close(fd)
            raise SpoolUnavailable(
                f"spool {directory} cannot be written: {e.strerror or e}") from e
        return cls(path, fd)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return "?"
    return text if text.isdigit() else "?"
