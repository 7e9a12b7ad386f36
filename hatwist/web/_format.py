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


def age(now: float, then: float | None) -> str:
    """``"7s ago"``, ``"3m05s ago"``, ``"2h10m ago"``, ``"3d04h ago"``; ``"never"`` for None."""
    if then is None:
        return "never"
    seconds = max(0, round(now - then))
    if seconds < 60:
        return f"{seconds}s ago"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s ago"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m ago"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h ago"


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
