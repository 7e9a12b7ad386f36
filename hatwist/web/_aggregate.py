# -*- test-case-name: tests.workers.test_aggregate -*-
"""
One relay's /status and /metrics from what each of its workers serves.

With ``workers > 1`` the supervisor answers on ``status_listen`` for the whole relay, so
operators, ``hatwist status``, the page and Prometheus keep seeing one relay. Counts add
up across workers (deliveries, pending recipients, checks); a queue or proxy server is one
row, not N. What is genuinely per worker keeps a ``worker`` label: each worker checks
the proxy servers for its own routing, so a proxy's state is "plumbed" only when every
worker sees it plumbed, and the per-worker states are listed beside it (``workers``);
in /metrics the health gauges carry ``worker``. A worker that did not answer is listed
as such in ``workers`` and contributes nothing, rather than failing the whole scrape.

Pure: documents and metric texts in, document and text out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["WorkerView", "merge_metrics", "merge_status"]

#: Proxy and source states from worst to best: a merged row shows the worst a worker saw.
_STATE_RANK = {"unplumbed": 0, "unknown": 1, "plumbed": 2}
#: A merged queue shows the state of the worker whose queue moves soonest.
_QUEUE_RANK = {"active": 0, "throttled": 1, "backoff": 2, "waiting_for_proxy": 3, "paused": 4,
               "held": 5}
_PROXY_SUMS = ("checks", "failures", "no_greeting", "state_changes")
_QUEUE_SUMS = ("pending", "in_flight", "depth", "held")
#: Gauges that are one worker's view (its own health checks): kept per worker.
PER_WORKER_GAUGES = frozenset({
    "hatwist_proxy_up", "hatwist_proxy_source_up", "hatwist_proxy_check_latency_seconds",
    "hatwist_proxy_last_check_timestamp_seconds",
})
#: Gauges of the relay as a whole that are the same in every worker: shown once.
SAME_IN_EVERY_WORKER = frozenset({"hatwist_info"})


@attrs.frozen
class WorkerView:
    """One worker as the supervisor knows it, and what its status socket answered."""

    worker: int
    pid: int | None
    state: str  # running, starting, restarting, stopping
    restarts: int
    status: Mapping[str, Any] | None = None  # its /status document, None if it did not answer
    metrics: str | None = None  # its /metrics text
    error: str | None = None  # why it did not answer

    def json(self) -> dict[str, Any]:
        return {"worker": self.worker, "pid": self.pid, "state": self.state,
                "restarts": self.restarts, "answered": self.status is not None,
                "error": self.error}


def _worst(rows: Sequence[Mapping[str, Any]], rank: Mapping[str, int], key: str) -> Mapping:
    return min(rows, key=lambda row: rank.get(str(row.get(key)), len(rank)))


def _summed(rows: Sequence[Mapping[str, Any]], base: Mapping[str, Any],
            keys: Iterable[str]) -> dict[str, Any]:
    merged = dict(base)
    for key in keys:
        values = [row[key] for row in rows if isinstance(row.get(key), int | float)]
        if values:
            merged[key] = sum(values)
    return merged


def _latest(rows: Sequence[Mapping[str, Any]], key: str) -> Any:
    values = [row[key] for row in rows if row.get(key) is not None]
    return max(values) if values else None


def _merge_proxies(per_worker: Sequence[tuple[int, Sequence[Mapping[str, Any]]]]) -> list:
    groups: dict[str, list[tuple[int, Mapping[str, Any]]]] = {}
    for worker, proxies in per_worker:
        for proxy in proxies:
            groups.setdefault(str(proxy.get("server")), []).append((worker, proxy))
    merged = []
    for rows_with_worker in groups.values():
        rows = [row for _, row in rows_with_worker]
        base = _worst(rows, _STATE_RANK, "state")
        proxy = _summed(rows, base, _PROXY_SUMS)
        proxy["last_check"] = _latest(rows, "last_check")
        proxy["workers"] = {str(w): row.get("state") for w, row in rows_with_worker}
        sources: dict[str, list[Mapping[str, Any]]] = {}
        for row in rows:
            for path in row.get("sources") or ():
                sources.setdefault(str(path.get("source")), []).append(path)
        proxy["sources"] = [
            {**_summed(paths, _worst(paths, _STATE_RANK, "state"), ("checks", "failures")),
             "last_check": _latest(paths, "last_check")}
            for paths in sources.values()
        ]
        merged.append(proxy)
    return merged


def _merge_queues(documents: Sequence[Mapping[str, Any]]) -> list:
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for document in documents:
        for queue in document.get("queues") or ():
            groups.setdefault((str(queue.get("binding")), str(queue.get("domain"))),
                              []).append(queue)
    merged = []
    for rows in groups.values():
        queue = _summed(rows, _worst(rows, _QUEUE_RANK, "state"), _QUEUE_SUMS)
        untils = [row["until"] for row in rows if row.get("until") is not None]
        queue["until"] = min(untils) if untils else None
        merged.append(queue)
    return merged


def _add(a: Any, b: Any) -> Any:
    """Counts added: numbers, dicts of counts key by key, equal-length lists item by item;
    anything else keeps the first value."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a + b
    if isinstance(a, dict) and isinstance(b, dict):
        return {key: _add(a[key], b[key]) if key in a and key in b else a.get(key, b.get(key))
                for key in {**a, **b}}
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [_add(x, y) for x, y in zip(a, b, strict=True)]
    return a if a is not None else b


def _merge_history(documents: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    histories = [d["history"] for d in documents if isinstance(d.get("history"), dict)]
    if not histories:
        return None
    first = histories[0]
    deliveries = dict(first.get("deliveries") or {})
    bindings: dict[str, Any] = {}
    for history in histories:
        for binding, series in ((history.get("deliveries") or {}).get("bindings") or {}).items():
            bindings[binding] = _add(bindings[binding], series) if binding in bindings else series
    deliveries["bindings"] = dict(sorted(bindings.items()))
    return {**first, "deliveries": deliveries}


def merge_status(workers: Sequence[WorkerView], *, version: str, now: float) -> dict[str, Any]:
    """The relay's /status document: the workers' documents merged, plus ``workers``."""
    answered = [(w.worker, w.status) for w in workers if w.status is not None]
    documents = [doc for _, doc in answered]
    deliveries: Any = {}
    no_greeting = 0
    for document in documents:
        deliveries = _add(deliveries, document.get("deliveries") or {}) if deliveries \
            else dict(document.get("deliveries") or {})
        no_greeting += int(document.get("no_greeting") or 0)
    merged: dict[str, Any] = {
        "version": version,
        "now": now,
        "proxies": _merge_proxies([(w, doc.get("proxies") or ()) for w, doc in answered]),
        "queues": _merge_queues(documents),
        "deliveries": deliveries,
        "no_greeting": no_greeting,
    }
    history = _merge_history(documents)
    if history is not None:
        merged["history"] = history
    merged["workers"] = [w.json() for w in workers]
    return merged


# -- /metrics ---------------------------------------------------------------------------


def _families(text: str) -> Iterable[Metric]:
    return text_string_to_metric_families(text)


def merge_metrics(workers: Sequence[WorkerView], extra: Iterable[Metric] = ()) -> bytes:
    """One Prometheus text exposition for the relay.

    Counter and gauge samples with the same name and labels are added up across workers,
    except :data:`PER_WORKER_GAUGES` (and any gauge this module does not know, which
    could be a state rather than a count), which get a ``worker`` label, and
    :data:`SAME_IN_EVERY_WORKER`, shown once. ``extra``: the supervisor's own families.
    """
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    known_sum = {"hatwist_queue_depth", "hatwist_queues"}
    for view in workers:
        if view.metrics is None:
            continue
        for family in _families(view.metrics):
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            per_worker = family.type in ("gauge", "unknown") and (
                family.name in PER_WORKER_GAUGES
                or family.name not in known_sum | SAME_IN_EVERY_WORKER)
            samples = values[family.name]
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue  # per-process creation times mean nothing summed
                labels = dict(sample.labels)
                if per_worker:
                    labels["worker"] = str(view.worker)
                key = (sample.name, tuple(sorted(labels.items())))
                if family.name in SAME_IN_EVERY_WORKER:
                    samples.setdefault(key, sample.value)
                else:
                    samples[key] = samples.get(key, 0.0) + sample.value
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)

    class _Merged:
        def collect(self) -> Iterable[Metric]:
            yield from families.values()
            yield from extra

    return generate_latest(_Merged())  # type: ignore[arg-type]
