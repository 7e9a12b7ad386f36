"""Tests for hatwist.web._resource: the three faces served for real on 127.0.0.1."""

from __future__ import annotations

import json

import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.logger import formatEvent, globalLogPublisher

from tests.web.support import V4, V6, FakeScheduler, Served, get, proxy_rows, registry, sources
from tests.web.support import unplumb as unplumb_server


async def served(reactor, reg, scheduler=None):
    return Served(reactor, sources(reg, scheduler))


@pytest_twisted.ensureDeferred
async def test_status_json_follows_the_registry(reactor):
    reg = registry(V4, V6)
    site = await served(reactor, reg, FakeScheduler({("b1", "example.test"): 2}))
    try:
        code, headers, body = await get(reactor, site.url + "/status")
        assert code == 200
        assert headers.getRawHeaders(b"content-type") == [b"application/json; charset=utf-8"]
        assert headers.getRawHeaders(b"cache-control") == [b"no-store"]
        document = json.loads(body)
        assert {p["server"]: p["state"] for p in document["proxies"]} == {
            "127.0.0.1:5000": "plumbed",
            "[0::1]:5001": "plumbed",
        }
        assert document["queues"] == [
            {
                "binding": "b1",
                "domain": "example.test",
                "pending": 2,
                "in_flight": 0,
                "state": "active",
                "until": None,
                "reason": None,
                "held": 0,
            }
        ]

        unplumb_server(reg, V6, at=5.0, error="connection refused")
        _, _, body = await get(reactor, site.url + "/status")
        [_, v6] = json.loads(body)["proxies"]
        assert (v6["state"], v6["last_error"]) == ("unplumbed", "connection refused")
    finally:
        await site.close()


@pytest_twisted.ensureDeferred
async def test_metrics_text_follows_the_registry(reactor):
    reg = registry(V4, V6)
    site = await served(reactor, reg)
    try:
        unplumb_server(reg, V4, at=5.0, error="timeout")
        code, headers, body = await get(reactor, site.url + "/metrics")
        assert code == 200
        [content_type] = headers.getRawHeaders(b"content-type")
        assert content_type.startswith(b"text/plain; version=0.0.4")
        up = {
            sample.labels["server"]: sample.value
            for family in text_string_to_metric_families(body.decode())
            if family.name == "hatwist_proxy_up"
            for sample in family.samples
        }
        assert up == {"127.0.0.1:5000": 0, "[0::1]:5001": 1}
    finally:
        await site.close()


@pytest_twisted.ensureDeferred
async def test_metrics_serves_openmetrics_to_a_scraper_asking_for_it(reactor):
    site = await served(reactor, registry(V4))
    try:
        accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        code, headers, body = await get(reactor, site.url + "/metrics", accept=accept)
        assert code == 200
        [content_type] = headers.getRawHeaders(b"content-type")
        assert content_type.startswith(b"application/openmetrics-text")
        assert body.endswith(b"# EOF\n")
    finally:
        await site.close()


@pytest_twisted.ensureDeferred
async def test_page_is_html_that_may_load_nothing(reactor):
    reg = registry(V4, V6)
    unplumb_server(reg, V6, at=5.0, error="refused")
    site = await served(reactor, reg)
    try:
        code, headers, body = await get(reactor, site.url + "/")
        assert code == 200
        assert headers.getRawHeaders(b"content-type") == [b"text/html; charset=utf-8"]
        [policy] = headers.getRawHeaders(b"content-security-policy")
        assert policy.startswith(b"default-src 'none'")
        rows = proxy_rows(body.decode())
        assert {server: row["data-state"] for server, row in rows.items()} == {
            "127.0.0.1:5000": "plumbed",
            "[0::1]:5001": "unplumbed",
        }
    finally:
        await site.close()


@pytest_twisted.ensureDeferred
async def test_unknown_paths_are_not_found(reactor):
    site = await served(reactor, registry(V4))
    try:
        for path in ("/nope", "/status/extra", "/metrics/x", "/index.html"):
            code, _, body = await get(reactor, site.url + path)
            assert code == 404, path
            assert b"127.0.0.1:5000" not in body
    finally:
        await site.close()


@pytest_twisted.ensureDeferred
async def test_a_failing_source_gives_500_without_a_traceback(reactor):
    class BrokenScheduler(FakeScheduler):
        def queue_states(self):
            raise RuntimeError("secret internals")

    site = await served(reactor, registry(V4), BrokenScheduler())
    try:
        code, _, body = await get(reactor, site.url + "/status")
        assert code == 500
        assert b"secret internals" not in body and b"Traceback" not in body
    finally:
        await site.close()


@pytest_twisted.ensureDeferred
async def test_scrapes_and_page_refreshes_write_no_access_log_lines(reactor):
    # Prometheus scrapes every few seconds and the page reloads itself: an access line for
    # each would drown the relay's own log (delivery attempts, proxy state changes).
    events = []
    globalLogPublisher.addObserver(events.append)
    site = await served(reactor, registry(V4))
    try:
        for path in ("/", "/status", "/metrics"):
            code, _, _ = await get(reactor, site.url + path)
            assert code == 200
    finally:
        await site.close()
        globalLogPublisher.removeObserver(events.append)
    logged = [formatEvent(e) for e in events]
    assert not [line for line in logged if '"GET /' in line], logged
