# -*- test-case-name: tests.test_spool -*-
"""
The few blocking file-system calls the spool makes, behind one seam.

Every method blocks, so the spool calls them from a thread pool only.  Tests and
the benchmark wrap L{Disk} to record the calls (to prove that a path was fsynced
before the 250) or to inject an C{OSError} where a real fault is impractical.
"""

from __future__ import annotations

import contextlib
import os

FILE_MODE = 0o600
DIR_MODE = 0o700


class Disk:
    """Durable primitives over C{os}: each write is fsynced before it returns."""

    def write(self, path: str, data: bytes) -> None:
        """Create C{path} (it must not exist), write all of C{data}, fsync it.

        On error the partial file is left for the caller to remove: only the
        caller knows which of its files belong to the failed operation.
        """
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)

    def fsync_dir(self, path: str) -> None:
        """Make renames and unlinks in C{path} durable."""
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def rename(self, source: str, destination: str) -> None:
        os.replace(source, destination)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def discard(self, path: str) -> None:
        """Remove C{path} if it is there; cleanup after a failure never raises."""
        with contextlib.suppress(OSError):
            os.unlink(path)

    def read(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def size(self, path: str) -> int:
        return os.stat(path).st_size

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def makedir(self, path: str) -> bool:
        """Create C{path} if missing; return whether it was created."""
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            return False
        return True
