# -*- test-case-name: tests.web.test_metrics -*-
"""
Prometheus metrics: every value computed at scrape time from the status sources.

A custom collector on a dedicated ``CollectorRegistry`` (never prometheus_client's global
one): nothing is copied into metric objects between scrapes, so a scrape shows exactly
what /status would show at the same moment, and two services in one process (tests)
never share a metric.

Queue states are exported as a count of queues per binding and state,
``hatwist_queues{binding,state}``, every state present (0 included) for each binding
with mail queued, rather than a 0/1 series per queue and state: bindings are few and
come from the config, domains are many and come from senders, so its cardinality stays
bounded, and an alert reads directly (``hatwist_queues{state="waiting_for_proxy"} > 0``).
Which domains wait, and until when, is in /status and ``hatwist status``.  For the same
reason the queue depth is per binding (``hatwist_queue_depth{binding}``), and the
``route`` label of ``hatwist_deliveries_total`` is the route's kind (``proxy``,
``direct``, ``none``), never the free text of the attempt log.

Every per-binding series is present from the start for each configured binding, with
0 until something happens, and so is ``hatwist_proxy_no_greeting_total`` for each
(binding, proxy server): ``rate()`` and ``increase()`` alerts need a series to exist
before the first event (Prometheus' own advice for counters with labels).  Mail sent to
a binding_group waits in the group's own queues (``binding="group:NAME"``, see
L{hatwist.config.group_route}), so the queue series are there from the start for each
configured group too; its attempts are counted under the binding chosen for each, so
the delivery series need no group label.  The configured names are asked at each
scrape: after a reload, a binding or group that is gone loses its zero series (a queue
that still holds mail keeps its series, as long as it does).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from hatwist.config import group_route
from hatwist.health import LATENCY_BUCKETS
from hatwist.scheduler import QUEUE_STATES

from ._deliveries import NO_ROUTE, RESULTS
from ._status import StatusSources, proxy_views, queue_states, scheduler_counters

#: The values of the ``route`` label: what kind of route an attempt took.
ROUTE_KINDS = ("proxy", "direct", NO_ROUTE)


def route_kind(route: str) -> str:
    """``proxy`` for ``"proxy SERVER from SRC"``, ``direct``, or ``none``: a bounded label
    (the server and source are already in the attempt log and in the proxy series)."""
    kind = route.split(" ", 1)[0]
    return kind if kind in ROUTE_KINDS else NO_ROUTE

#: Help text of the scheduler's counters, exported as ``hatwist_scheduler_<name>_total``.
#: A counter the scheduler adds later is exported with a generic help text.
SCHEDULER_HELP = {
    "delivered": "Recipients delivered.",
    "deferred": "Recipient attempts that ended with a temporary failure (retried later).",
    "bounced": "Recipients failed for good (permanent failure or expiry).",
    "attempts": "Delivery attempts started.",
    "waiting": "Attempts held back because no proxy server of the route was plumbed.",
    "errors": "Attempts that failed inside hatwist (counted as temporary failures).",
    "dsns": "Bounce messages spooled.",
}


class StatusCollector(Collector):
    """Reads the registry, the scheduler and the delivery counts on every scrape."""

    def __init__(self, sources: StatusSources) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        sources = self._sources
        info = GaugeMetricFamily("hatwist_info", "hatwist version (always 1).", labels=["version"])
        info.add_metric([sources.version], 1)
        yield info

        bindings = sorted(set(sources.bindings()))
        deliveries = CounterMetricFamily(
            "hatwist_deliveries",
            "Recipients per delivery attempt, by binding, route kind (proxy, direct, none) "
            "and result (delivered 2xx, temporary 4xx, permanent 5xx).",
            labels=["binding", "route", "result"],
        )
        results: Counter[tuple[str, str, str]] = Counter({
            (binding, route, result): 0
            for binding in bindings for route in ROUTE_KINDS for result in RESULTS.values()
        })
        for (binding, route, result), count in sources.deliveries.results().items():
            results[(binding, route_kind(route), result)] += count
        for key, count in sorted(results.items()):
            deliveries.add_metric(list(key), count)
        yield deliveries

        no_greeting = CounterMetricFamily(
            "hatwist_proxy_no_greeting",
            "Proxy sessions that connected but got no SMTP greeting "
            "(an unusable source IP or unreachable MX behind HAProxy).",
            labels=["binding", "server"],
        )
        servers = [proxy.server for proxy in proxy_views(sources)]
        sessions: Counter[tuple[str, str]] = Counter(
            {(binding, server): 0 for binding in bindings for server in servers})
        sessions.update(sources.deliveries.no_greeting())
        for (binding, server), count in sorted(sessions.items()):
            no_greeting.add_metric([binding, server], count)
        yield no_greeting

        tls_skipped = CounterMetricFamily(
            "hatwist_tls_skipped",
            "Delivery attempts sent in plaintext although the MX offered STARTTLS "
            "(refused, or the handshake failed and tls = ifavailable retried without it).",
            labels=["binding"],
        )
        skipped: Counter[str] = Counter(dict.fromkeys(bindings, 0))
        skipped.update(sources.deliveries.tls_skipped())
        for binding, count in sorted(skipped.items()):
            tls_skipped.add_metric([binding], count)
        yield tls_skipped

        chosen = CounterMetricFamily(
            "hatwist_group_attempts",
            "Delivery attempts of mail sent to a binding_group (X-Binding-Group), by the "
            "binding chosen for each (weighted, among those with a plumbed path).",
            labels=["group", "binding"],
        )
        choices: Counter[tuple[str, str]] = Counter(
            {(group, binding): 0 for group, members in sources.groups().items()
             for binding in members})
        choices.update(sources.deliveries.group_choices())
        for (group, binding), count in sorted(choices.items()):
            chosen.add_metric([group, binding], count)
        yield chosen

        yield from self._proxies()
        yield from self._queues([*bindings, *sorted({group_route(g) for g in sources.groups()})])

    def _proxies(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "hatwist_proxy_up",
            "1 when the proxy server is plumbed, 0 when unplumbed.",
            labels=["server"],
        )
        latency = HistogramMetricFamily(
            "hatwist_proxy_check_latency_seconds",
            "Durations of the successful health checks.",
            labels=["server"],
        )
        last_check = GaugeMetricFamily(
            "hatwist_proxy_last_check_timestamp_seconds",
            "When the latest health check ended (Unix time).",
            labels=["server"],
        )
        checks = CounterMetricFamily(
            "hatwist_proxy_checks", "Health checks run.", labels=["server"]
        )
        failures = CounterMetricFamily(
            "hatwist_proxy_check_failures", "Health checks failed.", labels=["server"]
        )
        source_up = GaugeMetricFamily(
            "hatwist_proxy_source_up",
            "1 when the smtp-mode check passes from this source address through the proxy"
            " server (its bindings may use it), 0 when that path is unplumbed.",
            labels=["server", "source"],
        )
        changes = CounterMetricFamily(
            "hatwist_proxy_state_changes",
            "Flips between plumbed and unplumbed.",
            labels=["server"],
        )
        for proxy in proxy_views(self._sources):
            labels = [proxy.server]
            up.add_metric(labels, 1 if proxy.state == "plumbed" else 0)
            if proxy.latency_buckets:
                bounds = [repr(float(b)) for b in LATENCY_BUCKETS] + ["+Inf"]
                latency.add_metric(labels, list(zip(bounds, proxy.latency_buckets, strict=True)),
                                   proxy.latency_sum)
            if proxy.last_check is not None:
                last_check.add_metric(labels, proxy.last_check)
            checks.add_metric(labels, proxy.checks)
            failures.add_metric(labels, proxy.failures)
            changes.add_metric(labels, proxy.state_changes)
            for path in proxy.sources:
                source_up.add_metric([proxy.server, path.source], int(path.state == "plumbed"))
        yield from (up, source_up, latency, last_check, checks, failures, changes)

    def _queues(self, bindings: list[str]) -> Iterator[Metric]:
        """Depth and state counts per route: the configured bindings and group queues
        (``group:NAME``), zeros included, and any other route that holds mail."""
        depth = GaugeMetricFamily(
            "hatwist_queue_depth",
            "Pending recipients per binding (per domain: /status and hatwist status).",
            labels=["binding"],
        )
        per_state = GaugeMetricFamily(
            "hatwist_queues",
            "Queues (binding, domain) with mail, by binding and state: active, backoff "
            "(waiting for retry times), waiting_for_proxy, throttled, paused, held (only "
            "mail the operator holds).",
            labels=["binding", "state"],
        )
        counts: dict[str, Counter[str]] = {binding: Counter() for binding in bindings}
        depths: Counter[str] = Counter(dict.fromkeys(bindings, 0))
        for queue in queue_states(self._sources):
            depths[queue.binding] += queue.depth
            counts.setdefault(queue.binding, Counter())[queue.state] += 1
        for binding, total in sorted(depths.items()):
            depth.add_metric([binding], total)
        for binding, count in sorted(counts.items()):
            for state in (*QUEUE_STATES, *sorted(count.keys() - set(QUEUE_STATES))):
                per_state.add_metric([binding, state], count[state])
        yield depth
        yield per_state
        for name, value in sorted(scheduler_counters(self._sources).items()):
            help_text = SCHEDULER_HELP.get(name, f"Scheduler counter {name!r}.")
            counter = CounterMetricFamily(f"hatwist_scheduler_{name}", help_text)
            counter.add_metric([], value)
            yield counter


def metrics_registry(sources: StatusSources) -> CollectorRegistry:
    """A fresh registry holding one :class:`StatusCollector`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(sources))
    return registry


def render_metrics(registry: CollectorRegistry, accept: str = "") -> tuple[bytes, str]:
    """
    ``registry`` in the format the scraper's ``Accept`` header asks for, and its
    Content-Type: OpenMetrics when asked, else Prometheus text (0.0.4).
    """
    encode, content_type = choose_encoder(accept)
    return encode(registry), content_type
