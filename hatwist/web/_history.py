# -*- test-case-name: tests.web.test_history -*-
"""
The last hour, minute by minute: what the status page draws.

:class:`History` is a log observer like :class:`~hatwist.web.DeliveryMetrics`: it reads
the delivery agent's one event per attempt and the registry's one event per proxy state
change, so neither knows the page exists.  Per binding it counts recipients per minute by
the class of their reply in each attempt: ``delivered`` (2xx), ``deferred`` (4xx) and
``bounced`` (5xx); per proxy server it keeps the state changes of the last hour.

Memory is bounded whatever the traffic: :data:`MINUTES` buckets of three counts for at most
:data:`MAX_BINDINGS` bindings (more are counted under :data:`OTHER`), and at most
:data:`MAX_CHANGES` state changes per server.  Time is the events' own ``log_time``, so
tests hand in events with the times they want.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

from twisted.logger import ILogObserver
from zope.interface import implementer

from hatwist.delivery.attempt import ATTEMPT_EVENT
from hatwist.health import STATE_CHANGE_EVENT

#: Minutes of history kept and drawn.
MINUTES = 60
#: Bindings tracked one by one; traffic of any further binding is counted as OTHER.
MAX_BINDINGS = 50
OTHER = "(other bindings)"
#: State changes kept per proxy server (a flapping proxy must not grow memory).
MAX_CHANGES = 200
#: The counts of one minute, in drawing order.
KINDS = ("delivered", "deferred", "bounced")
_KIND_BY_CLASS = {2: "delivered", 4: "deferred", 5: "bounced"}


def _kind(code: Any) -> str | None:
    if isinstance(code, bool) or not isinstance(code, int):
        return None
    return _KIND_BY_CLASS.get(code // 100)


@implementer(ILogObserver)
class History:
    """Per-minute delivery counts per binding and proxy state changes, the last hour.

    Never raises: the log publisher would report a failing observer on every event.
    """

    def __init__(self) -> None:
        # binding -> minute (Unix time // 60) -> [delivered, deferred, bounced]
        self._minutes: dict[str, dict[int, list[int]]] = {}
        self._changes: dict[str, deque[tuple[float, str]]] = {}
        self._latest = 0

    def __call__(self, event: Mapping[str, Any]) -> None:
        kind = event.get("hatwist_event")
        if kind == ATTEMPT_EVENT:
            self._attempt(event)
        elif kind == STATE_CHANGE_EVENT and event.get("source") is None:
            self._state_change(event)

    def _attempt(self, event: Mapping[str, Any]) -> None:
        codes = event.get("codes")
        when = event.get("log_time")
        if not isinstance(codes, Mapping) or not isinstance(when, int | float):
            return
        minute = int(when // 60)
        self._latest = max(self._latest, minute)
        binding = str(event.get("binding"))
        if binding not in self._minutes and len(self._minutes) >= MAX_BINDINGS:
            binding = OTHER
        buckets = self._minutes.setdefault(binding, {})
        counts = buckets.get(minute)
        if counts is None:
            counts = buckets[minute] = [0, 0, 0]
            for old in [m for m in buckets if m <= self._latest - MINUTES]:
                del buckets[old]
        for code in codes.values():
            found = _kind(code)
            if found is not None:
                counts[KINDS.index(found)] += 1

    def _state_change(self, event: Mapping[str, Any]) -> None:
        when, new = event.get("log_time"), event.get("new")
        if not isinstance(when, int | float) or not isinstance(new, str):
            return
        server = str(event.get("server"))
        self._changes.setdefault(server, deque(maxlen=MAX_CHANGES)).append((float(when), new))

    def deliveries(self, now: float) -> dict[str, Any]:
        """``{"start": T, "minutes": 60, "bindings": {b: {kind: [60 counts]}}}``, oldest
        minute first; ``start`` is the Unix time the first minute begins."""
        last = int(now // 60)
        first = last - MINUTES + 1
        bindings = {}
        for binding, buckets in sorted(self._minutes.items()):
            series = {k: [0] * MINUTES for k in KINDS}
            for minute, counts in buckets.items():
                if first <= minute <= last:
                    for kind, count in zip(KINDS, counts, strict=True):
                        series[kind][minute - first] = count
            bindings[binding] = series
        return {"start": first * 60, "minutes": MINUTES, "bindings": bindings}

    def proxy_changes(self, now: float) -> dict[str, list[tuple[float, str]]]:
        """Per server, its state changes of the last hour ``(time, new state)``, oldest
        first, plus the last change before the hour began (which says where it started)."""
        since = now - MINUTES * 60
        kept = {}
        for server, changes in self._changes.items():
            recent = [c for c in changes if c[0] >= since]
            before = [c for c in changes if c[0] < since]
            kept[server] = before[-1:] + recent
        return kept
