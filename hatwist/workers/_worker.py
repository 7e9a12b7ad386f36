# -*- test-case-name: tests.workers.test_make_service -*-
"""
What makes a ``twistd hatwist`` process worker N of M: its ``--worker N/M`` argument,
and a death signal tied to its supervisor.

The supervisor passes N/M on the command line rather than letting the worker read
``workers`` from the file, so the divisor of the limits is the number of workers that
really run, even after the file was edited (``workers`` takes effect at a restart).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal

import attrs

__all__ = ["WorkerSpec", "parse_worker", "stop_with_parent"]

_PR_SET_PDEATHSIG = 1


@attrs.frozen
class WorkerSpec:
    """Worker ``worker`` of ``workers``, listening on the inherited descriptor ``fd``."""

    worker: int
    workers: int
    fd: int = 3


def parse_worker(text: str, fd: int = 3) -> WorkerSpec:
    """``"2/4"`` -> ``WorkerSpec(2, 4)``; ValueError naming what is wrong."""
    number, sep, count = text.partition("/")
    if not (sep and number.isdigit() and count.isdigit()):
        raise ValueError(f"--worker expects N/M (e.g. 1/2), not {text!r}")
    worker, workers = int(number), int(count)
    if not 1 <= worker <= workers:
        raise ValueError(f"--worker {text}: N must be in 1..M")
    return WorkerSpec(worker, workers, fd)


def stop_with_parent() -> None:
    """Ask Linux for SIGTERM when the supervisor dies (even by SIGKILL), so no orphan
    worker keeps the listener and its partition; a no-op where prctl does not exist.

    The worker also leaves the supervisor's process group: a Ctrl-C at the terminal then
    reaches the supervisor alone, which stops each worker once, in order.
    """
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the supervisor was already gone before prctl
        os.kill(os.getpid(), signal.SIGTERM)
