"""Tests for hatwist.web._status: the /status document, from a real ServerRegistry."""

from __future__ import annotations

import json

from hatwist.scheduler import QueueState
from hatwist.web import DeliveryMetrics, StatusSources, status_document
from tests.web.support import (
    NAMED,
    V4,
    V6,
    FakeScheduler,
    attempt_event,
    registry,
    sources,
    unplumb,
)

PROXY_FIELDS = {
    "server",
    "state",
    "consecutive_successes",
    "consecutive_failures",
    "last_check",
    "last_error",
    "last_latency",
    "checks",
    "failures",
}


def test_every_proxy_named_exactly_as_configured_in_config_order():
    document = status_document(sources(registry(V4, V6, NAMED)))
    assert [p["server"] for p in document["proxies"]] == [
        "127.0.0.1:5000",
        "[0::1]:5001",
        "proxy.example.test:5002",
    ]
    assert all(p.keys() >= PROXY_FIELDS for p in document["proxies"])
    assert [p["state"] for p in document["proxies"]] == ["plumbed"] * 3


def test_proxy_shows_its_state_counts_last_check_error_and_latency():
    reg = registry(V4, V6, threshold=2)
    reg.record_success(V4, at=100.0, latency=0.004)
    unplumb(reg, V6, at=200.0, error="connection refused")
    v4, v6 = status_document(sources(reg))["proxies"]
    assert {k: v4[k] for k in ("state", "consecutive_successes", "last_check", "last_latency")} == {
        "state": "plumbed",
        "consecutive_successes": 1,
        "last_check": 100.0,
        "last_latency": 0.004,
    }
    assert {k: v6[k] for k in PROXY_FIELDS} == {
        "server": "[0::1]:5001",
        "state": "unplumbed",
        "consecutive_successes": 0,
        "consecutive_failures": 2,
        "last_check": 200.0,
        "last_error": "connection refused",
        "last_latency": None,
        "checks": 2,
        "failures": 2,
    }


def test_state_follows_the_registry_between_documents():
    reg = registry(V4)
    src = sources(reg)
    unplumb(reg, V4, at=1.0, error="timeout")
    assert status_document(src)["proxies"][0]["state"] == "unplumbed"
    reg.record_success(V4, at=2.0, latency=0.001)
    assert status_document(src)["proxies"][0]["state"] == "plumbed"


def test_queues_per_binding_and_domain_sorted():
    scheduler = FakeScheduler(
        depths={("b2", "a.test"): 1, ("b1", "z.test"): 4, ("b1", "a.test"): 2}
    )
    queues = status_document(sources(registry(), scheduler))["queues"]
    assert [(q["binding"], q["domain"], q["pending"]) for q in queues] == [
        ("b1", "a.test", 2),
        ("b1", "z.test", 4),
        ("b2", "a.test", 1),
    ]


def test_each_queue_says_its_state_until_when_and_why():
    key = ("b1", "a.test")
    held = QueueState(*key, 3, 0, "waiting_for_proxy", 1_800_000_005.0, "4.4.0 no plumbed")
    document = status_document(sources(registry(), FakeScheduler({key: 3}, states={key: held})))
    assert document["queues"] == [
        {
            "binding": "b1",
            "domain": "a.test",
            "pending": 3,
            "in_flight": 0,
            "state": "waiting_for_proxy",
            "until": 1_800_000_005.0,
            "reason": "4.4.0 no plumbed",
            "held": 0,
        }
    ]
    json.dumps(document)  # until and reason stay JSON values (null when absent)


def test_queue_states_of_the_real_scheduler_reach_the_document():
    from tests.test_scheduler import World

    world = World()
    world.scheduler.startService()
    try:
        world.proxy(up=False)
        world.submit(binding="proxied")
        src = StatusSources(registry=None, scheduler=world.scheduler, version="t",
                            clock=world.clock)
        [queue] = status_document(src)["queues"]
        assert (queue["binding"], queue["state"], queue["pending"]) == (
            "proxied", "waiting_for_proxy", 1,
        )
        assert queue["until"] == world.clock.seconds() + 5
        assert "no plumbed ha_proxy_server for binding proxied" in queue["reason"]
    finally:
        world.scheduler.stopService()
    assert not world.clock.getDelayedCalls()


def test_deliveries_hold_scheduler_counters_and_per_result_counts():
    scheduler = FakeScheduler(totals={"delivered": 5, "deferred": 1, "bounced": 2, "attempts": 8})
    deliveries = DeliveryMetrics()
    deliveries(attempt_event(codes={"a@x.test": 250, "b@x.test": 421}))
    document = status_document(sources(registry(), scheduler, deliveries=deliveries))
    assert document["deliveries"]["counters"] == scheduler.totals
    assert document["deliveries"]["results"] == {"delivered": 1, "temporary": 1, "permanent": 0}
    assert document["deliveries"]["attempts_seen"] == 1


def test_deliveries_count_attempts_that_skipped_tls():
    deliveries = DeliveryMetrics()
    deliveries(attempt_event("b1", tls_skipped="STARTTLS refused: 454 4.7.0 not now"))
    deliveries(attempt_event("b2", tls_skipped="STARTTLS failed (x); retried in plaintext"))
    deliveries(attempt_event("b2", tls_skipped=None))
    document = status_document(sources(registry(), deliveries=deliveries))
    assert document["deliveries"]["tls_skipped"] == 2


def test_no_greeting_total_and_per_proxy():
    deliveries = DeliveryMetrics()
    deliveries(attempt_event("b1", no_greeting=["[0::1]:5001"]))
    deliveries(attempt_event("b2", no_greeting=["[0::1]:5001", "127.0.0.1:5000"]))
    document = status_document(sources(registry(V4, V6), deliveries=deliveries))
    assert document["no_greeting"] == 3
    assert [p["no_greeting"] for p in document["proxies"]] == [1, 2]


def test_version_and_now_from_the_injected_clock():
    src = sources(registry())
    src.clock.advance(5)
    document = status_document(src)
    assert (document["version"], document["now"]) == ("9.9.9-test", 1_800_000_005.0)


def test_without_registry_or_scheduler_the_lists_are_empty():
    document = status_document(sources(None, None))
    assert (document["proxies"], document["queues"], document["deliveries"]["counters"]) == (
        [],
        [],
        {},
    )


def test_document_is_plain_json():
    reg = registry()
    unplumb(reg, V6, at=1.0, error="x")
    document = status_document(sources(reg, FakeScheduler({("b", "d"): 1}, {"delivered": 1})))
    assert json.loads(json.dumps(document)) == document


def test_each_source_the_smtp_check_proved_is_shown_under_its_proxy():
    reg = registry(V4, V6)
    reg.record_sources(V4, {"192.0.2.10": None, "192.0.2.11": "no banner"}, at=5.0, latency=0.01)
    v4, v6 = status_document(sources(reg))["proxies"]
    assert v4["state"] == "plumbed"
    assert v4["sources"] == [
        {
            "source": "192.0.2.10",
            "state": "plumbed",
            "consecutive_successes": 1,
            "consecutive_failures": 0,
            "last_check": 5.0,
            "last_error": None,
            "checks": 1,
            "failures": 0,
        },
        {
            "source": "192.0.2.11",
            "state": "unplumbed",
            "consecutive_successes": 0,
            "consecutive_failures": 1,
            "last_check": 5.0,
            "last_error": "no banner",
            "checks": 1,
            "failures": 1,
        },
    ]
    assert v6["sources"] == []
    json.dumps(v4)  # plain JSON data
