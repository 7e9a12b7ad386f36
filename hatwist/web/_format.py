# -*- test-case-name: tests.web.test_page -*-
"""
How times and durations read for a person, shared by the HTML page and ``hatwist status``.

Pure. Ages are relative to the document's own ``now``, so a page and a terminal table say
the same thing about the same /status document whatever the reader's clock says.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

#: What an empty value (no check yet, no error, no latency) shows as.
NOTHING = "-"


def _span(seconds: int) -> str:
    """``"7s"``, ``"3m05s"``, ``"2h10m"``, ``"3d04h"``: two units at most."""
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def age(now: float, then: float | None) -> str:
    """``"7s ago"``, ``"3m05s ago"``, ``"2h10m ago"``, ``"3d04h ago"``; ``"never"`` for None."""
    if then is None:
        return "never"
    return f"{_span(max(0, round(now - then)))} ago"


def until(now: float, then: float | None) -> str:
    """``"in 12m00s"`` (a queue's next try), ``"now"`` once due, :data:`NOTHING` for None."""
    if then is None:
        return NOTHING
    seconds = round(then - now)
    return f"in {_span(seconds)}" if seconds > 0 else "now"


def latency(seconds: float | None) -> str:
    """A check duration in milliseconds, or :data:`NOTHING`."""
    if seconds is None:
        return NOTHING
    return f"{seconds * 1000:.1f} ms"


def utc(timestamp: float) -> str:
    """A Unix time as ``YYYY-MM-DD HH:MM:SS UTC``."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


def text(value: object) -> str:
    """A value for a table cell: :data:`NOTHING` for None or an empty string."""
    return NOTHING if value is None or value == "" else str(value)


def sources(paths: Iterable[Mapping[str, Any]]) -> str:
    """``"192.0.2.10 plumbed, 192.0.2.11 UNPLUMBED"``: a proxy's paths, the bad ones loud."""
    shown = [
        f"{p['source']} {p['state'] if p['state'] == 'plumbed' else str(p['state']).upper()}"
        for p in paths
    ]
    return ", ".join(shown) or NOTHING
