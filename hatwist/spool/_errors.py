# -*- test-case-name: tests.test_spool -*-
"""
Why a spool operation failed: one class per meaning.

The inbound listener turns L{SpoolWriteError} into C{452 4.3.1}; the scheduler
treats L{MessageNotFound} as "someone else already finished this message".
"""

from __future__ import annotations


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


class MessageNotFound(SpoolError, KeyError):
    """No spooled message has this id (it was removed, or never stored)."""

    def __str__(self) -> str:
        return f"no spooled message {self.args[0]!r}"


class CorruptEntry(SpoolError):
    """A spool file cannot be read back as a message.  Recovery moves it aside;
    it never reaches a caller of the public API."""
