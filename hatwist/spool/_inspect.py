# -*- test-case-name: tests.test_spool -*-
"""
A look into a spool directory from outside the relay: which messages it holds.

For tests and tools that must check the spool on disk (after a C{kill -9}, while
a relay runs) without going through a L{Spool} (which would take the lock).
Read-only and blocking: a plain SQLite read connection, which WAL lets run
beside the relay's writer.  No database yet means no messages.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3

from ._db import BUSY_TIMEOUT_MS, DATABASE


def _rows(directory: str, query: str) -> list[tuple]:
    path = os.path.join(directory, DATABASE)
    if not os.path.exists(path):
        return []
    with contextlib.closing(sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000)) as db:
        db.execute("PRAGMA query_only = ON")
        return db.execute(query).fetchall()


def spooled_ids(directory: str) -> list[str]:
    """Ids of the messages committed in the spool under C{directory}, oldest first."""
    return [row[0] for row in _rows(directory, "SELECT id FROM message ORDER BY id")]


def spooled_contents(directory: str) -> dict[str, bytes]:
    """Content of every committed message, by id."""
    return dict(_rows(directory, "SELECT m.id, c.data FROM message AS m "
                                 "JOIN content AS c ON c.id = m.id"))
