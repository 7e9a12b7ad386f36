# -*- test-case-name: tests.test_spool_import -*-
"""
The spool's old file layout (hatwist before the SQLite spool): read once to
import it, and still writable so tests and the benchmark can make one the way
the old code did.

Layout::

    spool_dir/
      tmp/      files being written; nothing here was ever acknowledged.
      msg/      <id>.eml   the content, exactly as received, written once.
                <id>.json  envelope and per-recipient state, replaced whole.
      corrupt/  files that could not be used, moved aside under their own names.

A message existed once C{msg/<id>.json} existed: it was renamed into place after
the content, and C{msg/} fsynced before the 250.  L{import_old_layout} copies
every valid message into the database (same id, same state), commits, and only
then deletes its files, so a crash mid-import repeats it without duplicates
(L{SpoolDatabase.insert_imported} keeps rows already there).

All functions block; the spool runs them in its C{open()} step, before any
other operation.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from ._disk import Disk
from ._errors import CorruptEntry, MessageNotFound, SpoolWriteError
from ._values import ID_PATTERN, SpooledMessage, decode, encode

if TYPE_CHECKING:
    from ._db import SpoolDatabase

CONTENT_SUFFIX = ".eml"
STATE_SUFFIX = ".json"


@attrs.frozen
class Problem:
    """A file recovery moved to corrupt/, and why (logged by the caller)."""

    name: str
    reason: str


class SpoolDirectory:
    """The old code's blocking operations on one spool directory (the import reads
    with L{_load}; tests and the benchmark write old spools with L{store})."""

    def __init__(self, directory: str, disk: Disk) -> None:
        self.root = directory
        self.tmp = os.path.join(directory, "tmp")
        self.msg = os.path.join(directory, "msg")
        self.corrupt = os.path.join(directory, "corrupt")
        self._disk = disk
        self._serial = itertools.count()
        self._ready = False

    def _path(self, message_id: str, suffix: str) -> str:
        if not ID_PATTERN.match(message_id):
            raise MessageNotFound(message_id)
        return os.path.join(self.msg, message_id + suffix)

    def _tmp_path(self, message_id: str, suffix: str) -> str:
        # A serial number keeps two updates of one message from sharing a tmp file.
        return os.path.join(self.tmp, f"{message_id}.{next(self._serial)}{suffix}")

    def _run_or_undo(
        self, steps: list[tuple[str, Callable[[], object]]], undo: tuple[str, ...]
    ) -> None:
        """Run the C{(path, step)} pairs in order.  If one fails, remove the files in
        C{undo} (what this operation may have made) and raise L{SpoolWriteError}
        naming the failing step's path: the spool keeps the old state or nothing."""
        for path, step in steps:
            try:
                step()
            except OSError as e:
                for leftover in undo:
                    self._disk.discard(leftover)
                raise SpoolWriteError(path, e) from e

    def prepare(self) -> None:
        """Create the three directories if missing (and make that durable)."""
        if self._ready:
            return
        created = False
        for path in (self.root, self.tmp, self.msg, self.corrupt):
            try:
                created |= self._disk.makedir(path)
            except OSError as e:
                raise SpoolWriteError(path, e) from e
        if created:
            self._disk.fsync_dir(self.root)
            self._disk.fsync_dir(os.path.dirname(os.path.abspath(self.root)))
        self._ready = True

    def store(self, message: SpooledMessage, content: bytes) -> None:
        """Write a new message durably, or leave nothing of it behind."""
        self.prepare()
        content_path = self._path(message.id, CONTENT_SUFFIX)
        state_path = self._path(message.id, STATE_SUFFIX)
        tmp_content = self._tmp_path(message.id, CONTENT_SUFFIX)
        tmp_state = self._tmp_path(message.id, STATE_SUFFIX)
        self._run_or_undo(
            [
                (tmp_content, lambda: self._disk.write(tmp_content, content)),
                (tmp_state, lambda: self._disk.write(tmp_state, encode(message))),
                (content_path, lambda: self._disk.rename(tmp_content, content_path)),
                (state_path, lambda: self._disk.rename(tmp_state, state_path)),
                (self.msg, lambda: self._disk.fsync_dir(self.msg)),
            ],
            undo=(state_path, content_path, tmp_state, tmp_content),
        )

    def update(self, message: SpooledMessage) -> None:
        """Replace the state file of an existing message atomically."""
        state_path = self._path(message.id, STATE_SUFFIX)
        if not self._disk.exists(self._path(message.id, CONTENT_SUFFIX)):
            raise MessageNotFound(message.id)
        tmp_state = self._tmp_path(message.id, STATE_SUFFIX)
        self._run_or_undo(
            [
                (tmp_state, lambda: self._disk.write(tmp_state, encode(message))),
                (state_path, lambda: self._disk.rename(tmp_state, state_path)),
                (self.msg, lambda: self._disk.fsync_dir(self.msg)),
            ],
            undo=(tmp_state,),
        )

    def remove(self, message_id: str) -> None:
        """Forget a message: state first (it is the commit mark), then content."""
        removed = False
        for path in (self._path(message_id, STATE_SUFFIX),
                     self._path(message_id, CONTENT_SUFFIX)):
            try:
                self._disk.unlink(path)
                removed = True
            except FileNotFoundError:
                pass
            except OSError as e:
                raise SpoolWriteError(path, e) from e
        if not removed:
            raise MessageNotFound(message_id)
        try:
            self._disk.fsync_dir(self.msg)
        except OSError as e:
            raise SpoolWriteError(self.msg, e) from e

    def content(self, message_id: str) -> bytes:
        try:
            return self._disk.read(self._path(message_id, CONTENT_SUFFIX))
        except FileNotFoundError:
            raise MessageNotFound(message_id) from None

    def _load(self, stem: str, names: set[str]) -> SpooledMessage:
        content, state = stem + CONTENT_SUFFIX, stem + STATE_SUFFIX
        if names != {content, state}:
            missing = {content, state} - names
            raise CorruptEntry(f"half-written message (missing {', '.join(sorted(missing))})"
                               if missing else "unexpected file in msg/")
        message = decode(self._disk.read(os.path.join(self.msg, state)))
        if message.id != stem:
            raise CorruptEntry(f"state file names message {message.id!r}")
        actual = self._disk.size(os.path.join(self.msg, content))
        if actual != message.size:
            raise CorruptEntry(f"content is {actual} bytes, state says {message.size}")
        return message

    def _move_aside(self, name: str, reason: str) -> str:
        """Move C{msg/name} to corrupt/ without overwriting; return the reason to log."""
        target = os.path.join(self.corrupt, name)
        for n in itertools.count(1):
            if not self._disk.exists(target):
                break
            target = os.path.join(self.corrupt, f"{name}.{n}")
        try:
            self._disk.rename(os.path.join(self.msg, name), target)
        except OSError as e:
            return f"{reason}; could not move it to corrupt/: {e.strerror or e}"
        return f"{reason}; moved to {os.path.relpath(target, self.root)}"


#: Messages (and content bytes) per import transaction.
IMPORT_BATCH = 1_000
IMPORT_BATCH_BYTES = 16 * 1024 * 1024


@attrs.frozen
class ImportReport:
    """What L{import_old_layout} did, for the one log line that says so."""

    imported: int
    """Messages now in the database (new rows, or kept from a crashed import)."""
    set_aside: tuple[Problem, ...]
    """Files that could not be decoded, moved to corrupt/."""
    debris: int
    """Files deleted that were never acknowledged or belonged to a finished
    message: tmp/ files and contents without a state file."""


def has_old_layout(directory: str, disk: Disk) -> bool:
    return any(disk.exists(os.path.join(directory, sub)) for sub in ("msg", "tmp"))


def import_old_layout(directory: str, database: SpoolDatabase, disk: Disk) -> ImportReport:
    """Move every valid message of the old layout under C{directory} into
    C{database}, durably; then delete its files and the emptied tmp/ and msg/.

    Only what really cannot be decoded is set aside (moved to corrupt/).  Any
    other C{OSError} (EMFILE, EIO, EACCES) is raised: the import stops with
    every file still in place, and the next start repeats it.  A content file
    without its state file is deleted, not set aside: the old code wrote the
    state last and removed it first, so such a file is a store that never got
    its 250, or the rest of a message already delivered.
    """
    old = SpoolDirectory(directory, disk)
    debris = 0
    if disk.exists(old.tmp):
        for name in disk.listdir(old.tmp):
            disk.unlink(os.path.join(old.tmp, name))
            debris += 1
    groups: dict[str, set[str]] = {}
    if disk.exists(old.msg):
        for name in disk.listdir(old.msg):
            stem, dot, _suffix = name.rpartition(".")
            groups.setdefault(stem if dot else name, set()).add(name)
    imported, problems = 0, []
    batch: list[tuple[SpooledMessage, bytes]] = []
    batch_bytes = 0

    def flush() -> None:
        nonlocal imported, batch, batch_bytes
        if not batch:
            return
        database.insert_imported(batch)  # committed: now the files may go
        for message, _ in batch:
            disk.unlink(os.path.join(old.msg, message.id + STATE_SUFFIX))
            disk.unlink(os.path.join(old.msg, message.id + CONTENT_SUFFIX))
        disk.fsync_dir(old.msg)
        imported += len(batch)
        batch, batch_bytes = [], 0

    for stem, names in sorted(groups.items()):
        if names == {stem + CONTENT_SUFFIX}:
            disk.unlink(os.path.join(old.msg, stem + CONTENT_SUFFIX))
            debris += 1
            continue
        try:
            message = old._load(stem, names)
            content = disk.read(os.path.join(old.msg, stem + CONTENT_SUFFIX))
            if len(content) != message.size:
                raise CorruptEntry(f"content is {len(content)} bytes, state says "
                                   f"{message.size}")
        except CorruptEntry as e:
            disk.makedir(old.corrupt)
            for name in sorted(names):
                problems.append(Problem(name, old._move_aside(name, str(e))))
            continue
        batch.append((message, content))
        batch_bytes += len(content)
        if len(batch) >= IMPORT_BATCH or batch_bytes >= IMPORT_BATCH_BYTES:
            flush()
    flush()
    if problems:
        disk.fsync_dir(old.corrupt)
    for sub in (old.tmp, old.msg):
        # Best effort: a file that could not be moved aside keeps msg/, and the
        # next start looks at it again.
        with contextlib.suppress(OSError):
            os.rmdir(sub)
    disk.fsync_dir(directory)
    return ImportReport(imported, tuple(problems), debris)
