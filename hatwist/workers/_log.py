# -*- test-case-name: tests.workers.test_log -*-
"""
A worker's log lines name the worker: ``2026-... [worker-2 hatwist.tap.RelayService#info]``.

Every worker writes to the stdout it shares with the supervisor, so without a label an
operator could not tell which process accepted, delivered or died. The supervisor starts
each worker's twistd with ``--logger hatwist.workers._log.worker_observer`` and the
worker's number in ``HATWIST_WORKER``; the lines are otherwise a single relay's, written
in batches as :mod:`hatwist._logging` writes them.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from hatwist._logging import BufferedFileLogObserver, ClassicTextFormatter, _reactor

__all__ = ["WORKER_ENV", "label_line", "worker_observer"]

WORKER_ENV = "HATWIST_WORKER"


def label_line(line: str | None, label: str) -> str | None:
    """Put ``label`` first inside the ``[system]`` part of one classic log line."""
    if line is None:
        return None
    head, bracket, rest = line.partition(" [")
    return f"{head} [{label} {rest}" if bracket else f"[{label}] {line}"


#: Writes up to this size to a pipe are atomic (POSIX PIPE_BUF on Linux): the workers'
#: batches to their shared stdout must not tear each other's lines.
ATOMIC_WRITE = 4096


class LineAtomicWriter:
    """A text file for :class:`BufferedFileLogObserver` that writes to ``fd`` in chunks of
    whole lines of at most :data:`ATOMIC_WRITE` bytes, each one ``write(2)``: several
    workers batching into one pipe then interleave whole lines, never parts of them."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def write(self, text: str) -> None:
        data = text.encode("utf-8", "replace")
        while data:
            if len(data) <= ATOMIC_WRITE:
                chunk = data
            else:
                end = data.rfind(b"\n", 0, ATOMIC_WRITE) + 1
                chunk = data[: end or ATOMIC_WRITE]  # a single line longer than that: as is
            written = os.write(self._fd, chunk)
            data = data[written:]

    def flush(self) -> None:
        pass


def worker_observer() -> Any:
    """twistd's ``--logger`` factory: the relay's buffered text lines on stdout
    (:mod:`hatwist._logging`, as a single relay's), labelled by worker."""
    label = f"worker-{os.environ.get(WORKER_ENV, '?')}"
    text = ClassicTextFormatter()
    sys.stdout.flush()
    return BufferedFileLogObserver(
        LineAtomicWriter(sys.stdout.fileno()), lambda event: label_line(text(event), label),
        _reactor())
