# -*- test-case-name: tests.test_tap -*-
"""SIGHUP routed into the reactor thread, for the relay and for the workers' supervisor."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any


def install_sighup(reactor: Any, reload: Callable[[], object]) -> Any:
    """Route SIGHUP to ``reload`` in the reactor thread; returns the previous handler
    (None where there is no SIGHUP, or outside the main thread, as in some test runners)."""
    if not hasattr(signal, "SIGHUP"):
        return None

    def handler(signum: int, frame: object) -> None:
        reactor.callFromThread(reload)

    try:
        return signal.signal(signal.SIGHUP, handler)
    except ValueError:  # not the main thread
        return None
