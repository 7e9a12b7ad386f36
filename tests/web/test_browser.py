"""The HTML status page rendered by a real browser: headless Chromium (Debian packages
``chromium`` and ``chromium-driver``) loads it from the served site and shows each proxy
server's state.

Chromium runs as a Twisted subprocess, so the reactor keeps serving while the browser
loads the page; ``timeout`` and a Deferred deadline bound every run. Without Chromium the
tests skip, except in CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import os
import shutil
import struct
import zlib

import pytest
import pytest_twisted
from twisted.internet import utils

from tests.web.support import (
    V4,
    V6,
    Served,
    attempt_event,
    proxy_rows,
    registry,
    sources,
    unplumb,
)

CHROMIUM_NAMES = ("chromium", "chromium-browser")

#: Seconds Chromium may take for one page before ``timeout`` kills it.
BROWSER_DEADLINE = 60

#: Flags for a quiet, self-contained headless run as root on a box without a display.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--force-color-profile=srgb",
    "--hide-scrollbars",
    "--window-size=1280,720",
)

#: The state cells' backgrounds in hatwist/web/_page.py.
PLUMBED_GREEN = (0x1A, 0x7F, 0x37)
UNPLUMBED_RED = (0xCF, 0x22, 0x2E)


def chromium() -> str:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    message = "Chromium is not installed (apt-get install -y chromium chromium-driver)"
    if os.environ.get("CI"):
        pytest.fail(message + " and CI is set: the browser test must run here")
    pytest.skip(message)


async def run_chromium(reactor, tmp_path, *arguments: str) -> bytes:
    """Run Chromium with ``arguments``; its stdout. Fails on a non-zero exit."""
    binary = chromium()
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    command = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *arguments]
    killer = shutil.which("timeout")
    if killer:
        command = [killer, "--kill-after=5", str(BROWSER_DEADLINE), *command]
    d = utils.getProcessOutputAndValue(command[0], command[1:], env=dict(os.environ))
    d.addTimeout(BROWSER_DEADLINE + 30, reactor)
    out, err, code = await d
    assert code == 0, f"chromium exited {code}: {err.decode(errors='replace')[-2000:]}"
    return out


async def rendered_dom(reactor, tmp_path, url: str) -> str:
    return (await run_chromium(reactor, tmp_path, "--dump-dom", url)).decode()


@pytest_twisted.ensureDeferred
async def test_browser_shows_each_proxy_state_and_its_change(reactor, tmp_path):
    reg = registry(V4, V6)
    unplumb(reg, V6, at=1.0, error="proxy connected, no greeting")
    site = Served(reactor, sources(reg))
    try:
        first = proxy_rows(await rendered_dom(reactor, tmp_path, site.url + "/"))
        reg.record_success(V6, at=2.0, latency=0.001)
        unplumb(reg, V4, at=3.0, error="connection refused")
        second = proxy_rows(await rendered_dom(reactor, tmp_path, site.url + "/"))
    finally:
        await site.close()
    assert {server: row["text"] for server, row in first.items()} == {
        "127.0.0.1:5000": "plumbed",
        "[0::1]:5001": "unplumbed",
    }
    assert {server: row["class"] for server, row in second.items()} == {
        "127.0.0.1:5000": "state unplumbed",
        "[0::1]:5001": "state plumbed",
    }


@pytest_twisted.ensureDeferred
async def test_browser_paints_unplumbed_red_and_plumbed_green(reactor, tmp_path):
    reg = registry(V4, V6)
    site = Served(reactor, sources(reg))
    try:
        all_plumbed = tmp_path / "plumbed.png"
        await run_chromium(reactor, tmp_path, f"--screenshot={all_plumbed}", site.url + "/")
        unplumb(reg, V6, at=1.0, error="timeout")
        one_unplumbed = tmp_path / "unplumbed.png"
        await run_chromium(reactor, tmp_path, f"--screenshot={one_unplumbed}", site.url + "/")
    finally:
        await site.close()
    before = colour_counts(all_plumbed.read_bytes(), (PLUMBED_GREEN, UNPLUMBED_RED))
    after = colour_counts(one_unplumbed.read_bytes(), (PLUMBED_GREEN, UNPLUMBED_RED))
    # Two green state cells, no red at all; then one cell turns red.
    cell = 500  # pixels: a state cell is far bigger than this; stray glyph pixels far less
    assert before[PLUMBED_GREEN] > 2 * cell and before[UNPLUMBED_RED] == 0
    assert cell < after[PLUMBED_GREEN] < before[PLUMBED_GREEN]
    assert after[UNPLUMBED_RED] > cell


def colour_counts(png: bytes, colours) -> dict[tuple[int, int, int], int]:
    """How many pixels of a PNG screenshot have exactly each of ``colours`` (RGB)."""
    counts = dict.fromkeys(colours, 0)
    for pixel in png_pixels(png):
        if pixel in counts:
            counts[pixel] += 1
    return counts


def png_pixels(png: bytes):
    """The RGB pixels of an 8-bit RGB or RGBA, non-interlaced PNG (what Chromium writes)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    position, data = 8, b""
    while position < len(png):
        (length,) = struct.unpack(">I", png[position : position + 4])
        kind = png[position + 4 : position + 8]
        chunk = png[position + 8 : position + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunk)
            assert (depth, colour, interlace) in ((8, 2, 0), (8, 6, 0)), "unexpected PNG"
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            data += chunk
        position += 12 + length
    raw = zlib.decompress(data)
    stride = width * channels
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        _unfilter(kind, line, previous, channels)
        for x in range(0, stride, channels):
            yield (line[x], line[x + 1], line[x + 2])
        previous = line


def _unfilter(kind: int, line: bytearray, previous: bytearray, bpp: int) -> None:
    for i in range(len(line)):
        left = line[i - bpp] if i >= bpp else 0
        up = previous[i]
        if kind == 1:
            line[i] = (line[i] + left) & 0xFF
        elif kind == 2:
            line[i] = (line[i] + up) & 0xFF
        elif kind == 3:
            line[i] = (line[i] + (left + up) // 2) & 0xFF
        elif kind == 4:
            upper_left = previous[i - bpp] if i >= bpp else 0
            p = left + up - upper_left
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - upper_left)
            nearest = left if pa <= pb and pa <= pc else up if pb <= pc else upper_left
            line[i] = (line[i] + nearest) & 0xFF


#: The chart's colour for deferred recipients (hatwist/web/_charts.py): no state cell of a
#: page without queues uses it, so its pixels are the chart's.
DEFERRED_AMBER = (0x9A, 0x67, 0x00)


@pytest_twisted.ensureDeferred
async def test_browser_draws_the_last_hour_chart_and_the_plumbed_history(reactor, tmp_path):
    import attrs
    from twisted.internet import task

    from hatwist.scheduler import QueueState
    from hatwist.web import DeliveryMetrics, History
    from tests.web.support import FakeScheduler

    clock = task.Clock()
    clock.advance(1_800_000_030.0)
    history, deliveries = History(), DeliveryMetrics()
    for minute in range(1, 40):
        codes = {f"r{i}@x.test": 250 for i in range(minute % 7 + 1)}
        codes |= {f"t{i}@x.test": 451 for i in range(minute % 3)}
        event = {**attempt_event("b1", codes=codes), "log_time": clock.seconds() - 60 * minute}
        history(event)
        deliveries(event)
    history({"hatwist_event": "proxy_state_change", "server": "[0::1]:5001", "new": "unplumbed",
             "source": None, "log_time": clock.seconds() - 900})
    reg = registry(V4, V6)
    unplumb(reg, V6, at=clock.seconds() - 900, error="timeout")
    paused = ("b1", "slow.example")
    queues = {
        paused: QueueState(*paused, 12, 0, "paused", clock.seconds() + 600,
                           "no MX answered: mx1.slow.example: connection refused"),
        ("b1", "example.com"): QueueState("b1", "example.com", 3, 2, "active", None),
    }
    scheduler = FakeScheduler({key: q.depth for key, q in queues.items()}, states=queues)
    site = Served(reactor, attrs.evolve(sources(reg, scheduler, clock=clock,
                                                deliveries=deliveries), history=history))
    try:
        dom = await rendered_dom(reactor, tmp_path, site.url + "/")
        shot = tmp_path / "history.png"
        await run_chromium(reactor, tmp_path, "--window-size=1400,1100",
                           f"--screenshot={shot}", site.url + "/")
    finally:
        await site.close()
    assert dom.count('<rect class="delivered"') == 39
    assert "<title>hatwist: 1 proxy server unplumbed</title>" in dom
    counts = colour_counts(shot.read_bytes(), (DEFERRED_AMBER, UNPLUMBED_RED))
    assert counts[DEFERRED_AMBER] > 100  # the chart's deferred bars are drawn
    assert counts[UNPLUMBED_RED] > 500  # the state cell and the strip's last quarter hour
    if os.environ.get("HATWIST_SCREENSHOT"):  # README's picture: docs/status-page.png
        shutil.copy(shot, os.environ["HATWIST_SCREENSHOT"])
