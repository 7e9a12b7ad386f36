# -*- test-case-name: tests.web.test_status -*-
"""
The status model: what /status, /metrics and the HTML page all show, taken in one place.

Pure: the sources are read through :class:`StatusSources` (the registry, the scheduler,
the delivery counts, the version and a clock), so tests hand in fakes or the real
objects alike, and the three faces cannot disagree about what they saw.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import attrs
from twisted.internet.interfaces import IReactorTime

from hatwist.scheduler import QueueState

from ._deliveries import DeliveryMetrics
from ._history import History


class ProxyRegistry(Protocol):
    """What is read of ``hatwist.health.ServerRegistry``."""

    def snapshot(self) -> list[Any]: ...


class QueueSource(Protocol):
    """What is read of ``hatwist.scheduler.Scheduler`` (``in_flight()`` is optional)."""

    def queue_states(self) -> list[QueueState]: ...

    def counters(self) -> dict[str, int]: ...


@attrs.frozen
class StatusSources:
    """
    Everything the status faces read, each behind the narrowest seam that works.

    ``registry`` or ``scheduler`` may be ``None`` (a service without them shows no
    proxies or no queues). ``deliveries`` must be the observer the service added to the
    log publisher, or its counts stay zero.
    """

    registry: ProxyRegistry | None
    scheduler: QueueSource | None
    version: str
    clock: IReactorTime
    deliveries: DeliveryMetrics = attrs.field(factory=DeliveryMetrics)
    history: History | None = None
    """The last hour per minute, for the page's charts (None: the page draws none)."""
    bindings: Callable[[], Iterable[str]] = attrs.field(default=lambda: ())
    """The configured binding names (asked at each scrape, so a reload shows): /metrics
    exports every per-binding series for each of them from the start, zeros included,
    so an alert on a rate has a series to read before the first event."""
    groups: Callable[[], Mapping[str, Iterable[str]]] = attrs.field(default=lambda: {})
    """The configured binding_groups and their bindings (asked at each scrape), for the
    per-(group, binding) attempt series, zeros included."""


@attrs.frozen
class SourceView:
    """One (server, source) path as the smtp-mode check last saw it."""

    source: str
    state: str
    consecutive_successes: int
    consecutive_failures: int
    last_check: float | None
    last_error: str | None
    checks: int
    failures: int


@attrs.frozen
class ProxyView:
    """
    One proxy server as shown: the registry's status plus its no-greeting count.

    ``sources`` lists each source address the smtp-mode check proved through it (empty
    in connect mode): the server is plumbed while any of them passes, and a binding
    whose own source is unplumbed waits.
    """

    server: str
    state: str
    consecutive_successes: int
    consecutive_failures: int
    last_check: float | None
    last_error: str | None
    last_latency: float | None
    checks: int
    failures: int
    state_changes: int
    no_greeting: int
    sources: tuple[SourceView, ...] = ()
    latency_buckets: tuple[int, ...] = ()
    """Successful checks, cumulatively per bound of ``hatwist.health.LATENCY_BUCKETS``."""
    latency_sum: float = 0.0


def proxy_views(sources: StatusSources) -> list[ProxyView]:
    """Every proxy server in config order, named exactly as configured."""
    if sources.registry is None:
        return []
    no_greeting: Counter[str] = Counter()
    for (_, server), count in sources.deliveries.no_greeting().items():
        no_greeting[server] += count
    views = []
    for status in sources.registry.snapshot():
        server = str(status.server)
        views.append(
            ProxyView(
                server=server,
                state=status.state.value,
                consecutive_successes=status.consecutive_successes,
                consecutive_failures=status.consecutive_failures,
                last_check=status.last_check,
                last_error=status.last_error,
                last_latency=status.last_latency,
                checks=status.checks,
                failures=status.failures,
                state_changes=status.state_changes,
                no_greeting=no_greeting[server],
                sources=tuple(_source_view(path) for path in getattr(status, "paths", ())),
                latency_buckets=tuple(getattr(status, "latency_buckets", ())),
                latency_sum=getattr(status, "latency_sum", 0.0),
            )
        )
    return views


def _source_view(path: Any) -> SourceView:
    return SourceView(
        source=str(path.source),
        state=path.state.value,
        consecutive_successes=path.consecutive_successes,
        consecutive_failures=path.consecutive_failures,
        last_check=path.last_check,
        last_error=path.last_error,
        checks=path.checks,
        failures=path.failures,
    )


def queue_states(sources: StatusSources) -> list[QueueState]:
    """Every queue with its depth and state, sorted by binding then domain."""
    if sources.scheduler is None:
        return []
    return sorted(sources.scheduler.queue_states(), key=lambda q: (q.binding, q.domain))


def scheduler_counters(sources: StatusSources) -> dict[str, int]:
    """The scheduler's counters (recipients delivered, deferred, bounced; attempts; ...)."""
    if sources.scheduler is None:
        return {}
    return dict(sources.scheduler.counters())


def _proxy_json(proxy: ProxyView) -> dict[str, Any]:
    document = attrs.asdict(proxy, recurse=False)
    del document["latency_buckets"], document["latency_sum"]  # /metrics has them
    document["sources"] = [attrs.asdict(path) for path in proxy.sources]
    return document


def status_document(sources: StatusSources) -> dict[str, Any]:
    """
    The /status JSON document.

    ``deliveries.counters`` are the scheduler's counters; ``deliveries.results`` counts
    recipients by the class of their final reply in each attempt (so a recipient retried
    three times counts three times there, once in ``counters``). ``no_greeting`` counts
    proxy sessions that connected but never got a 220 banner: through HAProxy, the sign
    of an unusable source IP or an unreachable MX. ``deliveries.tls_skipped`` counts
    attempts whose session went in plaintext although the MX offered STARTTLS.

    Each of ``queues`` has ``binding``, ``domain``, ``pending`` (pending recipients: the
    one word the page, ``hatwist status`` and this document use for it),
    ``in_flight``, ``state`` (one of ``hatwist.scheduler.QUEUE_STATES``), ``until`` (Unix
    time of its next try, or null) and ``reason`` (why it waits, or null).
    """
    proxies = proxy_views(sources)
    deliveries: dict[str, Any] = {
        "counters": scheduler_counters(sources),
        "results": sources.deliveries.result_totals(),
        "attempts_seen": sources.deliveries.attempts,
        "tls_skipped": sources.deliveries.tls_skipped_total(),
    }
    in_flight = getattr(sources.scheduler, "in_flight", None)
    if callable(in_flight):
        deliveries["in_flight"] = in_flight()
    return {
        "version": sources.version,
        "now": sources.clock.seconds(),
        "proxies": [_proxy_json(p) for p in proxies],
        "queues": [_queue_json(queue) for queue in queue_states(sources)],
        "deliveries": deliveries,
        "no_greeting": sum(sources.deliveries.no_greeting().values()),
        **_history_json(sources),
    }


def _queue_json(queue: QueueState) -> dict[str, Any]:
    document = attrs.asdict(queue)
    document["pending"] = document.pop("depth")
    return document


def _history_json(sources: StatusSources) -> dict[str, Any]:
    """``history``: per binding, recipients per minute of the last hour by result, and per
    proxy server its state changes in that hour (see :class:`History`)."""
    if sources.history is None:
        return {}
    now = sources.clock.seconds()
    return {"history": {
        "deliveries": sources.history.deliveries(now),
        "proxies": {server: [list(change) for change in changes]
                    for server, changes in sources.history.proxy_changes(now).items()},
    }}
