"""Tests for hatwist.web._aggregate: one relay's /status and /metrics from its workers'."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from hatwist.web._aggregate import WorkerView, merge_metrics, merge_status


def proxy(state, checks, failures, source_state="plumbed"):
    return {"server": "10.0.0.1:8085", "state": state, "consecutive_successes": 1,
            "consecutive_failures": 0, "last_check": 100.0 + checks, "last_latency": 0.01,
            "checks": checks, "failures": failures, "no_greeting": 1, "state_changes": 0,
            "last_error": None,
            "sources": [{"source": "192.0.2.1", "state": source_state, "checks": checks,
                         "failures": failures, "last_check": 100.0,
                         "consecutive_successes": 1, "consecutive_failures": 0,
                         "last_error": None}]}


def document(delivered, queues, proxies):
    return {
        "version": "0.1.0", "now": 100.0, "proxies": proxies, "queues": queues,
        "deliveries": {"counters": {"delivered": delivered, "deferred": 1},
                       "results": {"delivered": delivered}, "attempts_seen": delivered,
                       "tls_skipped": 0, "in_flight": 1},
        "no_greeting": 2,
        "history": {"deliveries": {"start": 60, "minutes": 3,
                                   "bindings": {"b": {"delivered": [1, 0, delivered]}}},
                    "proxies": {}},
    }


def queue(domain, pending, state, until=None):
    return {"binding": "b", "domain": domain, "pending": pending, "in_flight": 0,
            "state": state, "until": until, "reason": None}


def views():
    one = document(3, [queue("a.test", 2, "backoff", 500.0), queue("b.test", 1, "active")],
                   [proxy("plumbed", 10, 0)])
    two = document(4, [queue("a.test", 5, "active", 300.0)],
                   [proxy("unplumbed", 9, 2, source_state="unplumbed")])
    return [
        WorkerView(1, 101, "running", 0, status=one),
        WorkerView(2, 102, "running", 1, status=two),
        WorkerView(3, None, "restarting", 2, error="not running"),
    ]


def test_counts_add_up_and_each_queue_is_one_row():
    merged = merge_status(views(), version="0.1.0", now=123.0)
    assert merged["now"] == 123.0
    assert merged["deliveries"]["counters"] == {"delivered": 7, "deferred": 2}
    assert merged["deliveries"]["in_flight"] == 2
    assert merged["no_greeting"] == 4
    queues = {q["domain"]: q for q in merged["queues"]}
    assert queues["a.test"]["pending"] == 7
    assert queues["a.test"]["state"] == "active"  # the worker whose queue moves soonest
    assert queues["a.test"]["until"] == 300.0
    assert queues["b.test"]["pending"] == 1
    assert merged["history"]["deliveries"]["start"] == 60
    assert merged["history"]["deliveries"]["bindings"]["b"]["delivered"] == [2, 0, 7]


def test_a_proxy_is_plumbed_only_if_every_worker_sees_it_so_and_says_who_does_not():
    [merged] = merge_status(views(), version="0.1.0", now=0)["proxies"]
    assert merged["state"] == "unplumbed"
    assert merged["workers"] == {"1": "plumbed", "2": "unplumbed"}
    assert (merged["checks"], merged["failures"]) == (19, 2)
    [path] = merged["sources"]
    assert path["state"] == "unplumbed" and path["checks"] == 19


def test_every_worker_is_listed_with_whether_it_answered():
    workers = merge_status(views(), version="0.1.0", now=0)["workers"]
    assert [(w["worker"], w["answered"], w["restarts"]) for w in workers] == [
        (1, True, 0), (2, True, 1), (3, False, 2)]
    assert workers[2]["error"] == "not running"


METRICS_1 = """\
# HELP hatwist_info hatwist version (always 1).
# TYPE hatwist_info gauge
hatwist_info{version="0.1.0"} 1.0
# HELP hatwist_deliveries_total Recipients.
# TYPE hatwist_deliveries_total counter
hatwist_deliveries_total{binding="b",result="delivered",route="proxy"} 3.0
# HELP hatwist_proxy_up 1 when plumbed.
# TYPE hatwist_proxy_up gauge
hatwist_proxy_up{server="10.0.0.1:8085"} 1.0
# HELP hatwist_queue_depth Pending.
# TYPE hatwist_queue_depth gauge
hatwist_queue_depth{binding="b"} 2.0
"""
METRICS_2 = METRICS_1.replace("} 3.0", "} 4.0").replace(
    'hatwist_proxy_up{server="10.0.0.1:8085"} 1.0',
    'hatwist_proxy_up{server="10.0.0.1:8085"} 0.0').replace("} 2.0", "} 5.0")


def samples(text: bytes) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode())
            for s in family.samples}


def test_metrics_sum_counts_and_label_health_by_worker():
    merged = samples(merge_metrics([
        WorkerView(1, 1, "running", 0, metrics=METRICS_1),
        WorkerView(2, 2, "running", 0, metrics=METRICS_2),
        WorkerView(3, None, "restarting", 0),
    ]))
    key = ("hatwist_deliveries_total",
           (("binding", "b"), ("result", "delivered"), ("route", "proxy")))
    assert merged[key] == 7.0
    assert merged[("hatwist_queue_depth", (("binding", "b"),))] == 7.0
    assert merged[("hatwist_info", (("version", "0.1.0"),))] == 1.0
    assert merged[("hatwist_proxy_up", (("server", "10.0.0.1:8085"), ("worker", "1")))] == 1.0
    assert merged[("hatwist_proxy_up", (("server", "10.0.0.1:8085"), ("worker", "2")))] == 0.0
    assert ("hatwist_proxy_up", (("server", "10.0.0.1:8085"),)) not in merged
