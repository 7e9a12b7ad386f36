# -*- test-case-name: tests.workers.test_relay_workers -*-
"""
A worker's log lines name the worker: ``2026-... [worker-2 hatwist.tap.RelayService#info]``.

Every worker writes to the stdout it shares with the supervisor, so without a label an
operator could not tell which process accepted, delivered or died. The supervisor starts
each worker's twistd with ``--logger hatwist.workers._log.worker_observer`` and the
worker's number in ``HATWIST_WORKER``; the line format is otherwise twistd's own.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.logger import FileLogObserver, formatEventAsClassicLogText

__all__ = ["WORKER_ENV", "label_line", "worker_observer"]

WORKER_ENV = "HATWIST_WORKER"


def label_line(line: str | None, label: str) -> str | None:
    """Put ``label`` first inside the ``[system]`` part of one classic log line."""
    if line is None:
        return None
    head, bracket, rest = line.partition(" [")
    return f"{head} [{label} {rest}" if bracket else f"[{label}] {line}"


def worker_observer() -> Any:
    """twistd's ``--logger`` factory: its text lines, on stdout, labelled by worker."""
    label = f"worker-{os.environ.get(WORKER_ENV, '?')}"
    return FileLogObserver(
        sys.stdout, lambda event: label_line(formatEventAsClassicLogText(event), label))
