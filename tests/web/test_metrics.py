"""Tests for hatwist.web._metrics: Prometheus text computed at scrape time."""

from __future__ import annotations

import subprocess

import attrs
import prometheus_client
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from hatwist.scheduler import QUEUE_STATES, QueueState
from hatwist.web import DeliveryMetrics, metrics_registry, render_metrics
from tests.web.support import V4, V6, FakeScheduler, attempt_event, registry, sources, unplumb


def scrape(registry, accept: str = "") -> dict[tuple[str, frozenset], float]:
    body, content_type = render_metrics(registry, accept)
    parse = (
        openmetrics_families if "openmetrics" in content_type else (text_string_to_metric_families)
    )
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in parse(body.decode())
        for sample in family.samples
    }


def labels(**kw) -> frozenset:
    return frozenset(kw.items())


def test_proxy_up_follows_the_registry_at_each_scrape():
    reg = registry(V4, V6)
    metrics = metrics_registry(sources(reg))
    first = scrape(metrics)
    assert first[("hatwist_proxy_up", labels(server="127.0.0.1:5000"))] == 1
    assert first[("hatwist_proxy_up", labels(server="[0::1]:5001"))] == 1
    unplumb(reg, V6, at=10.0, error="connection refused")
    second = scrape(metrics)
    assert second[("hatwist_proxy_up", labels(server="[0::1]:5001"))] == 0
    assert second[("hatwist_proxy_up", labels(server="127.0.0.1:5000"))] == 1


def test_check_latency_counts_and_timestamps_per_server():
    reg = registry(V4, V6)
    reg.record_success(V4, at=100.0, latency=0.25)
    reg.record_success(V4, at=110.0, latency=0.5)
    reg.record_failure(V6, at=120.0, error="timeout")
    samples = scrape(metrics_registry(sources(reg)))
    v4, v6 = labels(server="127.0.0.1:5000"), labels(server="[0::1]:5001")
    # A histogram of the successful checks' durations.
    bucket = "hatwist_proxy_check_latency_seconds_bucket"
    assert samples[(bucket, labels(server="127.0.0.1:5000", le="0.1"))] == 0
    assert samples[(bucket, labels(server="127.0.0.1:5000", le="0.25"))] == 1
    assert samples[(bucket, labels(server="127.0.0.1:5000", le="0.5"))] == 2
    assert samples[(bucket, labels(server="127.0.0.1:5000", le="+Inf"))] == 2
    assert samples[("hatwist_proxy_check_latency_seconds_count", v4)] == 2
    assert samples[("hatwist_proxy_check_latency_seconds_sum", v4)] == 0.75
    # No successful check yet: the series is there, at zero (alerts can read it).
    assert samples[("hatwist_proxy_check_latency_seconds_count", v6)] == 0
    assert samples[(bucket, labels(server="[0::1]:5001", le="+Inf"))] == 0
    assert samples[("hatwist_proxy_checks_total", v4)] == 2
    assert samples[("hatwist_proxy_checks_total", v6)] == 1
    assert samples[("hatwist_proxy_check_failures_total", v4)] == 0
    assert samples[("hatwist_proxy_check_failures_total", v6)] == 1
    assert samples[("hatwist_proxy_last_check_timestamp_seconds", v6)] == 120.0


def test_deliveries_by_binding_route_and_result():
    deliveries = DeliveryMetrics()
    route = "proxy 127.0.0.1:5000 from 127.0.0.9"
    deliveries(attempt_event("b1", route, {"a@x.test": 250, "b@x.test": 250}))
    deliveries(attempt_event("b2", "direct", {"a@x.test": 550}))
    samples = scrape(metrics_registry(sources(registry(), deliveries=deliveries)))
    # The route label is the route's kind: bounded, no free text with spaces.
    assert (
        samples[("hatwist_deliveries_total", labels(binding="b1", route="proxy",
                                                     result="delivered"))]
        == 2
    )
    assert not any(" " in dict(key)["route"] for name, key in samples
                   if name == "hatwist_deliveries_total")
    assert (
        samples[
            ("hatwist_deliveries_total", labels(binding="b2", route="direct", result="permanent"))
        ]
        == 1
    )
    assert sum(v for (name, _), v in samples.items() if name == "hatwist_deliveries_total") == 3


def test_no_greeting_by_binding_and_server():
    deliveries = DeliveryMetrics()
    deliveries(attempt_event("b1", no_greeting=["127.0.0.1:5000"]))
    deliveries(attempt_event("b1", no_greeting=["127.0.0.1:5000"]))
    samples = scrape(metrics_registry(sources(registry(), deliveries=deliveries)))
    key = ("hatwist_proxy_no_greeting_total", labels(binding="b1", server="127.0.0.1:5000"))
    assert samples[key] == 2


def test_tls_skipped_by_binding():
    deliveries = DeliveryMetrics()
    deliveries(attempt_event("b1", tls_skipped="STARTTLS refused: 454 4.7.0 not now"))
    deliveries(attempt_event("b1", tls_skipped="STARTTLS failed (x); retried in plaintext"))
    deliveries(attempt_event("b2", tls_skipped=None))
    samples = scrape(metrics_registry(sources(registry(), deliveries=deliveries)))
    assert samples[("hatwist_tls_skipped_total", labels(binding="b1"))] == 2
    assert ("hatwist_tls_skipped_total", labels(binding="b2")) not in samples


def test_queue_depth_and_scheduler_counters():
    scheduler = FakeScheduler({("b1", "example.test"): 3}, {"delivered": 7, "bounced": 1})
    samples = scrape(metrics_registry(sources(registry(), scheduler)))
    assert samples[("hatwist_queue_depth", labels(binding="b1"))] == 3
    assert samples[("hatwist_scheduler_delivered_total", labels())] == 7
    assert samples[("hatwist_scheduler_bounced_total", labels())] == 1
    scheduler.depths.clear()
    assert not any(
        name == "hatwist_queue_depth"
        for name, _ in scrape(metrics_registry(sources(registry(), scheduler)))
    )


def test_queue_depth_is_per_binding_whatever_the_number_of_domains():
    depths = {("b1", f"d{i}.test"): 2 for i in range(50)} | {("b2", "x.test"): 1}
    scheduler = FakeScheduler(depths)
    samples = scrape(metrics_registry(sources(registry(), scheduler)))
    depth = {key: v for (name, key), v in samples.items() if name == "hatwist_queue_depth"}
    assert depth == {labels(binding="b1"): 100, labels(binding="b2"): 1}


def test_every_series_of_a_configured_binding_is_there_with_zero_from_the_start():
    src = attrs.evolve(sources(registry(V4, V6)), bindings=lambda: ["b1", "default"])
    samples = scrape(metrics_registry(src))
    for binding in ("b1", "default"):
        for route in ("proxy", "direct", "none"):
            for result in ("delivered", "temporary", "permanent"):
                key = labels(binding=binding, route=route, result=result)
                assert samples[("hatwist_deliveries_total", key)] == 0
        for server in ("127.0.0.1:5000", "[0::1]:5001"):
            key = labels(binding=binding, server=server)
            assert samples[("hatwist_proxy_no_greeting_total", key)] == 0
        assert samples[("hatwist_tls_skipped_total", labels(binding=binding))] == 0
        assert samples[("hatwist_queue_depth", labels(binding=binding))] == 0
        for state in QUEUE_STATES:
            assert samples[("hatwist_queues", labels(binding=binding, state=state))] == 0


def test_group_attempts_count_each_chosen_binding_and_start_at_zero():
    deliveries = DeliveryMetrics()
    src = attrs.evolve(sources(registry(V4), deliveries=deliveries),
                       groups=lambda: {"pool": ("blue", "green")})
    metrics = metrics_registry(src)
    first = scrape(metrics)
    for binding in ("blue", "green"):
        assert first[("hatwist_group_attempts_total", labels(group="pool", binding=binding))] == 0
    deliveries(attempt_event(binding="green", group="pool"))
    deliveries(attempt_event(binding="green", group="pool"))
    deliveries(attempt_event(binding="blue"))  # sent to the binding itself: not a choice
    second = scrape(metrics)
    assert second[("hatwist_group_attempts_total", labels(group="pool", binding="green"))] == 2
    assert second[("hatwist_group_attempts_total", labels(group="pool", binding="blue"))] == 0


def test_a_binding_groups_queue_series_are_there_with_zero_before_its_first_mail():
    """Mail sent to a group waits in queues of its own (binding="group:NAME"): alerts on
    them need the series before the first mail, as for a binding; a reload that removes
    the group removes its zeros (the names are asked at each scrape)."""
    groups = {"pool": ("blue", "green"), "Spare": ("green",)}
    scheduler = FakeScheduler()
    src = attrs.evolve(sources(registry(V4), scheduler),
                       bindings=lambda: ["blue", "default", "green"], groups=lambda: groups)
    metrics = metrics_registry(src)
    body, _ = render_metrics(metrics)
    promtool_accepts(body)
    samples = scrape(metrics)
    for route in ("group:pool", "group:spare"):  # the scheduler's names: lower case
        assert samples[("hatwist_queue_depth", labels(binding=route))] == 0
        for state in QUEUE_STATES:
            assert samples[("hatwist_queues", labels(binding=route, state=state))] == 0
    # Attempts are counted under the binding chosen, so only the queue series have one.
    assert {name for name, key in samples if dict(key).get("binding", "").startswith(
        "group:")} == {"hatwist_queue_depth", "hatwist_queues"}

    scheduler.depths[("group:pool", "example.test")] = 3
    samples = scrape(metrics)
    assert samples[("hatwist_queue_depth", labels(binding="group:pool"))] == 3
    assert samples[("hatwist_queues", labels(binding="group:pool", state="active"))] == 1

    del groups["Spare"]  # a reload without it
    samples = scrape(metrics)
    assert not any(dict(key).get("binding") == "group:spare" for _, key in samples)
    assert samples[("hatwist_queue_depth", labels(binding="group:pool"))] == 3
    groups.clear()  # mail still queued for a removed group keeps its series while it waits
    assert scrape(metrics)[("hatwist_queue_depth", labels(binding="group:pool"))] == 3
    scheduler.depths.clear()
    assert not any(dict(key).get("binding") == "group:pool" for _, key in scrape(metrics))


def promtool_accepts(body: bytes) -> None:
    """``promtool check metrics``: the exposition parses and follows Prometheus' naming
    and help conventions (skipped without promtool, except under CI)."""
    from tests.test_contrib import promtool

    done = subprocess.run([promtool(), "check", "metrics"], input=body, capture_output=True,
                          timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")


def test_version_info():
    samples = scrape(metrics_registry(sources(registry())))
    assert samples[("hatwist_info", labels(version="9.9.9-test"))] == 1


def test_openmetrics_when_the_scraper_asks_for_it():
    reg = registry(V4)
    body, content_type = render_metrics(
        metrics_registry(sources(reg)), "application/openmetrics-text; version=1.0.0"
    )
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    samples = scrape(metrics_registry(sources(reg)), "application/openmetrics-text")
    assert samples[("hatwist_proxy_up", labels(server="127.0.0.1:5000"))] == 1


def test_plain_text_by_default():
    _, content_type = render_metrics(metrics_registry(sources(registry())))
    assert content_type.startswith("text/plain; version=0.0.4")


def test_a_dedicated_registry_never_the_global_one():
    first = metrics_registry(sources(registry(V4)))
    second = metrics_registry(sources(registry(V6)))
    assert ("hatwist_proxy_up", labels(server="127.0.0.1:5000")) not in scrape(second)
    assert ("hatwist_proxy_up", labels(server="[0::1]:5001")) not in scrape(first)
    global_text = prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
    assert "hatwist_" not in global_text


def test_source_up_per_proxy_and_source_address():
    reg = registry(V4)
    reg.record_sources(V4, {"192.0.2.10": None, "192.0.2.11": "no banner"}, at=5.0)
    samples = scrape(metrics_registry(sources(reg)))
    assert samples[("hatwist_proxy_up", labels(server="127.0.0.1:5000"))] == 1
    up = "hatwist_proxy_source_up"
    assert samples[(up, labels(server="127.0.0.1:5000", source="192.0.2.10"))] == 1
    assert samples[(up, labels(server="127.0.0.1:5000", source="192.0.2.11"))] == 0


def test_queues_counted_per_binding_and_state_every_state_present():
    held = {
        ("b1", f"d{i}.test"): QueueState("b1", f"d{i}.test", 1, 0, "waiting_for_proxy", 9.0)
        for i in range(3)
    }
    backoff = QueueState("b2", "x.test", 4, 0, "backoff", 9.0, "451 later")
    depths = {key: 1 for key in held} | {("b1", "a.test"): 2, ("b2", "x.test"): 4}
    scheduler = FakeScheduler(depths, states={**held, ("b2", "x.test"): backoff})
    samples = scrape(metrics_registry(sources(registry(), scheduler)))
    queues = {
        (dict(key)["binding"], dict(key)["state"]): value
        for (name, key), value in samples.items()
        if name == "hatwist_queues"
    }
    assert queues == {
        **{("b1", state): 0 for state in QUEUE_STATES},
        **{("b2", state): 0 for state in QUEUE_STATES},
        ("b1", "waiting_for_proxy"): 3,
        ("b1", "active"): 1,
        ("b2", "backoff"): 1,
    }
