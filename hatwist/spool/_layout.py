# -*- test-case-name: tests.test_spool -*-
"""
The spool directory on disk, and the blocking steps of each spool operation.

Layout::

    spool_dir/
      tmp/      files being written.  Anything here at recovery that no operation
                of this process owns is debris of a crash and is deleted: nothing
                in tmp/ was ever acknowledged.
      msg/      <id>.eml   the content, exactly as received (CRLF lines, dots
                           unstuffed), written once.
                <id>.json  envelope and per-recipient state, replaced whole.
      corrupt/  files recovery could not use, moved aside under their own names.

A message exists once C{msg/<id>.json} exists: it is renamed into place after
the content, and C{msg/} is fsynced before L{store} returns, so a message that
got its 250 survives a crash.  Every change of state is write to tmp/, fsync,
rename over the old file, fsync C{msg/}.  A C{.eml} without its C{.json} (a crash
in the middle of L{store} or L{remove}) is never delivered: recovery moves it to
corrupt/.

All methods block; L{hatwist.spool.Spool} runs them in a thread pool.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Container

import attrs

from ._disk import Disk
from ._errors import CorruptEntry, MessageNotFound, SpoolWriteError
from ._values import ID_PATTERN, SpooledMessage, decode, encode

CONTENT_SUFFIX = ".eml"
STATE_SUFFIX = ".json"


@attrs.frozen
class Problem:
    """A file recovery moved to corrupt/, and why (logged by the caller)."""

    name: str
    reason: str


class SpoolDirectory:
    """Blocking operations on one spool directory."""

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

    def recover(
        self, busy: Container[str] = frozenset()
    ) -> tuple[list[SpooledMessage], list[Problem]]:
        """Every valid message, oldest first; everything else moved to corrupt/.

        ``busy`` holds the ids this process is working on right now (the
        listener accepts mail while recovery runs): their files are skipped,
        since a store in progress looks exactly like crash debris.
        """
        self.prepare()
        for name in self._disk.listdir(self.tmp):
            if name.partition(".")[0] not in busy:
                self._disk.discard(os.path.join(self.tmp, name))
        groups: dict[str, set[str]] = {}
        for name in self._disk.listdir(self.msg):
            stem, dot, _suffix = name.rpartition(".")
            stem = stem if dot else name
            if stem not in busy:
                groups.setdefault(stem, set()).add(name)
        messages, problems = [], []
        for stem, names in sorted(groups.items()):
            try:
                messages.append(self._load(stem, names))
            except FileNotFoundError:
                continue  # finished and removed since the listing: nothing to recover
            except (CorruptEntry, OSError) as e:
                for name in sorted(names):
                    problems.append(Problem(name, self._move_aside(name, str(e))))
        if problems:
            # Best effort: if the moves are lost in a crash, the next recovery redoes them.
            with contextlib.suppress(OSError):
                self._disk.fsync_dir(self.corrupt)
                self._disk.fsync_dir(self.msg)
        return messages, problems

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
