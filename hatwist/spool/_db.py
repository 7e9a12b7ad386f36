# -*- test-case-name: tests.test_spool -*-
"""
The spool's SQLite database: schema, the writer's group transaction, the readers.

One file, C{spool_dir/spool.db}, in WAL mode with C{synchronous=FULL}: a COMMIT
returns only once the write-ahead log was fsynced, so a committed message
survives a crash, and readers on other connections see the last commit without
waiting for the writer (WAL allows one writer and many readers at once).

Tables::

    message  (id TEXT PRIMARY KEY, state TEXT)   envelope and recipient state, the
                                                 JSON of L{hatwist.spool._values.encode}
    content  (id TEXT PRIMARY KEY, data BLOB)    the message as received, written once:
                                                 an update rewrites the small state row only
    corrupt  (seq, id, reason, state, data, set_aside_at)
                                                 rows recovery could not decode, kept whole
    meta     (key TEXT PRIMARY KEY, value)       schema version, last opener

A message exists once its C{message} row is committed; L{Store} writes both rows
in the same transaction, L{Remove} deletes both, so there is never half a
message.  Every method blocks: the writer thread and the read pool call them.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence

import attrs

from ._errors import MessageNotFound, SpoolUnavailable
from ._values import SpooledMessage, encode

DATABASE = "spool.db"
SCHEMA_VERSION = 1
FILE_MODE = 0o600
#: After a checkpoint the WAL is cut back to this size, so a burst does not keep
#: its disk space for ever.
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
#: Readers wait this long (ms) for a lock instead of failing at once (only a
#: checkpoint restart or the very first WAL set-up takes one).
BUSY_TIMEOUT_MS = 10_000

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS message (id TEXT PRIMARY KEY, state TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS content (id TEXT PRIMARY KEY, data BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS corrupt (seq INTEGER PRIMARY KEY, id TEXT, reason TEXT, "
    "state TEXT, data BLOB, set_aside_at REAL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value)",
)


@attrs.frozen
class Store:
    """A new message: both rows, or (on error) neither."""

    message: SpooledMessage
    content: bytes

    @property
    def message_id(self) -> str:
        return self.message.id

    def apply(self, db: sqlite3.Connection) -> None:
        # The message row first: a duplicate id fails here, before anything is written.
        db.execute("INSERT INTO message (id, state) VALUES (?, ?)",
                   (self.message.id, encode(self.message).decode("utf-8")))
        db.execute("INSERT OR REPLACE INTO content (id, data) VALUES (?, ?)",
                   (self.message.id, self.content))


@attrs.frozen
class Update:
    """A new state for an existing message; its content stays untouched."""

    message: SpooledMessage

    @property
    def message_id(self) -> str:
        return self.message.id

    def apply(self, db: sqlite3.Connection) -> None:
        cursor = db.execute("UPDATE message SET state = ? WHERE id = ?",
                            (encode(self.message).decode("utf-8"), self.message.id))
        if cursor.rowcount == 0:
            raise MessageNotFound(self.message.id)


@attrs.frozen
class Remove:
    """Forget a finished message, state and content together."""

    message_id: str

    def apply(self, db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM content WHERE id = ?", (self.message_id,))
        if db.execute("DELETE FROM message WHERE id = ?", (self.message_id,)).rowcount == 0:
            raise MessageNotFound(self.message_id)


@attrs.frozen
class SetAside:
    """Move a row recovery cannot decode to C{corrupt}, whole, with the reason."""

    message_id: str
    reason: str

    def apply(self, db: sqlite3.Connection) -> None:
        moved = db.execute(
            "INSERT INTO corrupt (id, reason, state, data, set_aside_at) "
            "SELECT m.id, ?, m.state, c.data, ? FROM message AS m "
            "LEFT JOIN content AS c ON c.id = m.id WHERE m.id = ?",
            (self.reason, time.time(), self.message_id),
        ).rowcount
        if moved == 0:
            raise MessageNotFound(self.message_id)
        db.execute("DELETE FROM content WHERE id = ?", (self.message_id,))
        db.execute("DELETE FROM message WHERE id = ?", (self.message_id,))


Operation = Store | Update | Remove | SetAside


@attrs.frozen
class Row:
    """One C{message} row as recovery reads it: C{content_size} is None when the
    content row is missing."""

    id: str
    state: str | bytes
    content_size: int | None


class SpoolDatabase:
    """The database file of one spool directory and the writer's connection."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.path = os.path.join(directory, DATABASE)
        self._writer: sqlite3.Connection | None = None

    # -- opening ---------------------------------------------------------------

    def open(self) -> None:
        """Create or open the database and prove it can be written (a real commit),
        or raise L{SpoolUnavailable} naming the reason."""
        try:
            created = self._create_file()
            db = self._connect()
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise SpoolUnavailable(f"spool {self.directory}: cannot use WAL mode ({mode})")
            db.execute("PRAGMA synchronous = FULL")
            db.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
            db.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                db.execute(statement)
            version = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if version is not None and version[0] != SCHEMA_VERSION:
                db.execute("ROLLBACK")
                raise SpoolUnavailable(
                    f"spool {self.path}: schema version {version[0]}, this hatwist knows "
                    f"{SCHEMA_VERSION}")
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?)",
                       (SCHEMA_VERSION,))
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('opened_by', ?)",
                       (os.getpid(),))
            db.execute("COMMIT")
        except sqlite3.Error as e:
            raise SpoolUnavailable(f"spool {self.path} cannot be written: {e}") from e
        except OSError as e:
            raise SpoolUnavailable(
                f"spool {self.path} cannot be written: {e.strerror or e}") from e
        if created:
            _fsync_directory(self.directory)
        self._writer = db

    def _create_file(self) -> bool:
        """Create the file with mode 0600 (mail is private; SQLite gives its WAL and
        shared-memory files the same mode); return whether it was new."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                         FILE_MODE)
        except FileExistsError:
            return False
        os.close(fd)
        return True

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                             timeout=BUSY_TIMEOUT_MS / 1000)
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        return db

    def reader(self) -> sqlite3.Connection:
        """A new read connection (one per reading thread)."""
        db = self._connect()
        db.execute("PRAGMA query_only = ON")
        return db

    def close(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(sqlite3.Error):
                self._writer.close()
            self._writer = None

    # -- the writer ------------------------------------------------------------

    def commit(self, operations: Sequence[Operation]) -> list[BaseException | None]:
        """Apply C{operations} in order in ONE transaction and commit it.

        Returns one entry per operation: None, or the L{MessageNotFound} that
        operation met (it changed nothing; the others still commit).  Raises
        C{sqlite3.Error} if the transaction as a whole failed: then nothing of
        it was written.
        """
        outcomes: list[BaseException | None] = []
        with self._transaction() as db:
            for operation in operations:
                try:
                    operation.apply(db)
                except MessageNotFound as e:
                    outcomes.append(e)
                else:
                    outcomes.append(None)
        return outcomes

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction on the writer connection: committed when the block
        ends, rolled back (and the error raised) when it fails."""
        db = self._writer
        assert db is not None, "open() first"
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise

    def max_id(self) -> str | None:
        assert self._writer is not None, "open() first"
        return self._writer.execute("SELECT max(id) FROM message").fetchone()[0]

    def insert_imported(self, entries: Iterable[tuple[SpooledMessage, bytes]]) -> int:
        """Insert messages read from the old file layout in one transaction, keeping
        any already there (a repeated import after a crash adds no duplicates);
        return how many rows were new."""
        added = 0
        with self._transaction() as db:
            for message, content in entries:
                added += db.execute("INSERT OR IGNORE INTO message (id, state) VALUES (?, ?)",
                                    (message.id, encode(message).decode("utf-8"))).rowcount
                db.execute("INSERT OR IGNORE INTO content (id, data) VALUES (?, ?)",
                           (message.id, content))
        return added


# -- reads (on a reader connection) ------------------------------------------------


def read_content(db: sqlite3.Connection, message_id: str) -> bytes:
    row = db.execute("SELECT data FROM content WHERE id = ?", (message_id,)).fetchone()
    if row is None:
        raise MessageNotFound(message_id)
    return row[0]


def read_rows(db: sqlite3.Connection, after: str, upto: str | None, limit: int) -> list[Row]:
    """Up to C{limit} message rows with C{after < id <= upto}, in id order.

    C{length()} of a BLOB reads the row header only, so checking every content
    size does not read the contents."""
    rows = db.execute(
        "SELECT m.id, m.state, length(c.data) FROM message AS m "
        "LEFT JOIN content AS c ON c.id = m.id "
        "WHERE m.id > ? AND m.id <= ? ORDER BY m.id LIMIT ?",
        (after, upto if upto is not None else "\U0010ffff", limit),
    ).fetchall()
    return [Row(*row) for row in rows]


def read_corrupt(db: sqlite3.Connection) -> list[tuple[str, str]]:
    """(id, reason) of everything set aside, oldest first (for operators and tests)."""
    return db.execute("SELECT id, reason FROM corrupt ORDER BY seq").fetchall()


def _fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
