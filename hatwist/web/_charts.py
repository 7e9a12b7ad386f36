# -*- test-case-name: tests.web.test_page -*-
"""
Small server-rendered SVG charts for the status page: no scripts, no external assets.

Pure: each function turns part of the /status document's ``history`` into one ``<svg>``
element (a string).  :func:`deliveries_chart` stacks delivered / deferred / bounced
recipients per minute of the last hour for one binding; :func:`plumbed_strip` draws one
proxy server's plumbed (green) and unplumbed (red) spans over the same hour.  Every text
is escaped; each drawn element carries a ``<title>`` so a pointer shows the figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

from . import _format

#: Colours shared with the page's state cells (hatwist/web/_page.py).
GREEN = "#1a7f37"
AMBER = "#9a6700"
RED = "#cf222e"
GREY = "#d0d7de"
COLOURS = {"delivered": GREEN, "deferred": AMBER, "bounced": RED}

WIDTH = 600
HEIGHT = 90
STRIP_WIDTH = 160
STRIP_HEIGHT = 14


def _svg(width: int, height: int, label: str, body: list[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}">'
        + "".join(body) + "</svg>"
    )


def deliveries_chart(binding: str, series: dict[str, Sequence[int]], start: float) -> str:
    """Stacked bars, one per minute, oldest left; the tallest minute fills the height."""
    minutes = len(series.get("delivered", ()))
    if minutes == 0:
        return ""
    totals = [sum(series[k][i] for k in COLOURS) for i in range(minutes)]
    peak = max(totals) or 1
    bar = WIDTH / minutes
    body = [f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#f6f8fa"/>']
    for i in range(minutes):
        bottom = float(HEIGHT)
        when = _format.utc(start + 60 * i)
        for kind, colour in COLOURS.items():
            count = series[kind][i]
            if not count:
                continue
            height = HEIGHT * count / peak
            bottom -= height
            body.append(
                f'<rect class="{kind}" x="{i * bar:.1f}" y="{bottom:.1f}" '
                f'width="{max(bar - 1, 1):.1f}" height="{height:.1f}" fill="{colour}">'
                f"<title>{escape(f'{when}: {count} {kind}')}</title></rect>"
            )
    label = (f"binding {binding}: recipients per minute over the last hour, "
             f"peak {max(totals)}")
    return _svg(WIDTH, HEIGHT, label, body)


def plumbed_strip(server: str, changes: Sequence[Sequence[Any]], state: str,
                  start: float, now: float) -> str:
    """One server's hour: spans coloured by state.  ``changes`` are ``(time, new)``,
    oldest first (the first may be from before ``start``); ``state`` is the current one,
    which also colours the hour when nothing changed in it."""
    span = max(now - start, 1.0)
    body = []
    edges: list[tuple[float, str]] = []
    current = changes[0][1] if changes and changes[0][0] <= start else None
    if current is None:
        # No change before the hour: it started in the state opposite to its first
        # change in the hour, or in the current state when nothing changed.
        current = state if not changes else (
            "unplumbed" if changes[0][1] == "plumbed" else "plumbed")
    edges.append((start, current))
    edges += [(max(float(t), start), str(new)) for t, new in changes if t > start]
    for (t0, s0), (t1, _) in zip(edges, [*edges[1:], (now, state)], strict=True):
        x, width = STRIP_WIDTH * (t0 - start) / span, STRIP_WIDTH * (t1 - t0) / span
        colour = GREEN if s0 == "plumbed" else RED if s0 == "unplumbed" else GREY
        body.append(
            f'<rect class="{escape(s0)}" x="{x:.1f}" width="{max(width, 0.5):.1f}" '
            f'height="{STRIP_HEIGHT}" fill="{colour}">'
            f"<title>{escape(f'{s0} from {_format.utc(t0)}')}</title></rect>"
        )
    flips = sum(1 for t, _ in changes if t > start)
    label = f"proxy {server}: plumbed history of the last hour, {flips} changes"
    return _svg(STRIP_WIDTH, STRIP_HEIGHT, label, body)
