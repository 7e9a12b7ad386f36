"""Tests for hatwist._cli_status: ``hatwist status`` against a served status site.

The reactor runs in the test thread, so the command (blocking urllib, as a user's terminal
would run it) runs in a worker thread or in a subprocess while the reactor serves.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import threads, utils

from hatwist import _cli_status
from hatwist.scheduler import QueueState
from hatwist.web import DeliveryMetrics
from tests.web.support import (
    DEADLINE,
    V4,
    V6,
    FakeScheduler,
    Served,
    attempt_event,
    registry,
    sources,
    unplumb,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("given", "fetched"),
    [
        ("http://127.0.0.1:8025", "http://127.0.0.1:8025/status"),
        ("http://127.0.0.1:8025/", "http://127.0.0.1:8025/status"),
        ("127.0.0.1:9000", "http://127.0.0.1:9000/status"),
        ("http://[::1]:8025/status", "http://[::1]:8025/status"),
        ("http://host:1/other/status", "http://host:1/other/status"),
    ],
)
def test_url_points_at_status(given, fetched):
    assert _cli_status.status_url(given) == fetched


def test_default_url_is_status_listens_default():
    from hatwist.cli import build_parser

    args = build_parser().parse_args(["status"])
    assert args.url == _cli_status.DEFAULT_URL == "http://127.0.0.1:8025"
    assert args.run is _cli_status.run


def lines_starting(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip().startswith(prefix)]


def test_tables_are_aligned_and_name_each_state():
    document = {
        "version": "1.2.3",
        "now": 1000.0,
        "proxies": [
            {
                "server": "127.0.0.1:5000",
                "state": "plumbed",
                "consecutive_successes": 4,
                "consecutive_failures": 0,
                "last_check": 990.0,
                "last_error": None,
                "last_latency": 0.002,
                "checks": 10,
                "failures": 1,
                "no_greeting": 0,
            },
            {
                "server": "proxy-long-name.example.test:5000",
                "state": "unplumbed",
                "consecutive_successes": 0,
                "consecutive_failures": 3,
                "last_check": 999.0,
                "last_error": "connection refused",
                "last_latency": None,
                "checks": 3,
                "failures": 3,
                "no_greeting": 2,
                "sources": [
                    {"source": "192.0.2.10", "state": "plumbed"},
                    {"source": "192.0.2.11", "state": "unplumbed"},
                ],
            },
        ],
        "queues": [
            {
                "binding": "b1",
                "domain": "example.test",
                "pending": 12,
                "in_flight": 0,
                "state": "waiting_for_proxy",
                "until": 1005.0,
                "reason": "4.4.0 no plumbed ha_proxy_server for binding b1",
            },
            {
                "binding": "b2",
                "domain": "long-domain-name.example.test",
                "pending": 1,
                "in_flight": 1,
                "state": "active",
                "until": None,
                "reason": None,
            },
        ],
        "deliveries": {"counters": {"delivered": 5}, "results": {"delivered": 5}},
        "no_greeting": 2,
    }
    text = _cli_status.as_text(document, "http://x/status")
    [plumbed] = lines_starting(text, "127.0.0.1:5000")
    [unplumbed] = lines_starting(text, "proxy-long-name")
    [header] = lines_starting(text, "server")
    assert plumbed.split()[:2] == ["127.0.0.1:5000", "PLUMBED"]
    assert unplumbed.split()[:2] == ["proxy-long-name.example.test:5000", "UNPLUMBED"]
    # Columns line up: the state column starts at the same offset on every row.
    assert header.index("state") == plumbed.index("PLUMBED") == unplumbed.index("UNPLUMBED")
    assert "connection refused" in unplumbed and "1/10" in plumbed and "2.0 ms" in plumbed
    assert "192.0.2.10 plumbed, 192.0.2.11 UNPLUMBED" in unplumbed
    [held] = lines_starting(text, "b1")
    [active] = lines_starting(text, "b2")
    assert held.split()[:6] == ["b1", "example.test", "12", "0", "waiting_for_proxy", "in"]
    assert " in 5s " in held and held.endswith("4.4.0 no plumbed ha_proxy_server for binding b1")
    assert active.split() == ["b2", "long-domain-name.example.test", "1", "1", "active", "-", "-"]
    [queue_header] = lines_starting(text, "binding")
    assert queue_header.index("state") == held.index("waiting") == active.index("active")
    assert lines_starting(text, "proxy connected, no greeting")[0].split()[-1] == "2"
    assert text.startswith("hatwist 1.2.3, http://x/status at ")


def run_in_thread(reactor, url: str):
    out, err = io.StringIO(), io.StringIO()
    d = threads.deferToThread(_cli_status.run, argparse.Namespace(url=url), out, err)
    d.addTimeout(DEADLINE, reactor)
    return d, out, err


def run_command(reactor, url: str, env: dict[str, str], *, option: str = "--url"):
    """``python -m hatwist.cli status --url URL`` (or ``--config FILE``) from this
    checkout: (out, err, code)."""
    d = utils.getProcessOutputAndValue(
        sys.executable,
        ["-m", "hatwist.cli", "status", option, url],
        env={**env, "PYTHONPATH": str(ROOT)},
        path=str(ROOT),
    )
    return d.addTimeout(DEADLINE, reactor)


@pytest_twisted.ensureDeferred
async def test_prints_the_running_services_state(reactor):
    reg = registry(V4, V6)
    unplumb(reg, V6, at=1_800_000_000.0, error="no banner within 5s")
    deliveries = DeliveryMetrics()
    deliveries(attempt_event(no_greeting=["[0::1]:5001"], codes={"a@x.test": 451}))
    key = ("b1", "example.test")
    retry = QueueState(*key, 3, 0, "backoff", 1_800_000_000.0 + 720, "451 4.7.1 try later")
    scheduler = FakeScheduler({key: 3}, {"delivered": 7}, {key: retry})
    site = Served(reactor, sources(reg, scheduler, deliveries=deliveries))
    try:
        d, out, err = run_in_thread(reactor, site.url)
        assert await d == _cli_status.EXIT_OK, err.getvalue()
    finally:
        await site.close()
    text = out.getvalue()
    assert lines_starting(text, "127.0.0.1:5000")[0].split()[1] == "PLUMBED"
    [v6] = lines_starting(text, "[0::1]:5001")
    assert v6.split()[1] == "UNPLUMBED" and "no banner within 5s" in v6
    [queue] = lines_starting(text, "b1")
    assert queue.split()[:5] == ["b1", "example.test", "3", "0", "backoff"]
    assert "in 12m00s" in queue and "451 4.7.1 try later" in queue
    assert lines_starting(text, "scheduler: delivered")[0].split()[-1] == "7"
    assert lines_starting(text, "proxy connected, no greeting")[0].split()[-1] == "1"


@pytest_twisted.ensureDeferred
async def test_hatwist_command_prints_status_in_a_subprocess(reactor):
    reg = registry(V4)
    unplumb(reg, V4, at=1.0, error="refused")
    site = Served(reactor, sources(reg))
    try:
        out, err, code = await run_command(reactor, site.url, {**os.environ})
    finally:
        await site.close()
    assert code == 0, err.decode()
    assert lines_starting(out.decode(), "127.0.0.1:5000")[0].split()[1] == "UNPLUMBED"


@pytest_twisted.ensureDeferred
async def test_config_option_finds_a_non_default_status_listen(reactor, tmp_path):
    reg = registry(V4)
    unplumb(reg, V4, at=1.0, error="refused")
    site = Served(reactor, sources(reg))
    port = site.url.rsplit(":", 1)[1]
    assert port != "8025"
    config = tmp_path / "hatwist.conf"
    config.write_text(f"status_listen = 127.0.0.1:{port}\n")
    try:
        out, err, code = await run_command(reactor, str(config), {**os.environ},
                                           option="--config")
    finally:
        await site.close()
    assert code == 0, err.decode()
    assert f"http://127.0.0.1:{port}/status" in out.decode().splitlines()[0]
    assert lines_starting(out.decode(), "127.0.0.1:5000")[0].split()[1] == "UNPLUMBED"


@pytest.mark.parametrize(("listen", "url"), [
    ("0.0.0.0:9001", "http://127.0.0.1:9001"),
    ("[::]:9001", "http://[::1]:9001"),
    ("[::1]:9002", "http://[::1]:9002"),
    ("127.0.0.5:9003", "http://127.0.0.5:9003"),
])
def test_config_status_listen_becomes_a_reachable_url(tmp_path, listen, url):
    config = tmp_path / "hatwist.conf"
    config.write_text(f"status_listen = {listen}\n")
    assert _cli_status.url_from_config(str(config)) == url


def test_config_option_with_an_invalid_file_exits_2_naming_file_and_line(tmp_path):
    config = tmp_path / "bad.conf"
    config.write_text("status_listen = 127.0.0.1:8025\nno_such_key = 1\n")
    out, err = io.StringIO(), io.StringIO()
    args = argparse.Namespace(url=_cli_status.DEFAULT_URL, config=str(config))
    assert _cli_status.run(args, out, err) == _cli_status.EXIT_BAD_CONFIG == 2
    assert f"{config}:2" in err.getvalue() and "no_such_key" in err.getvalue()
    assert out.getvalue() == ""


def test_url_and_config_together_are_refused():
    from hatwist.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["status", "--url", "http://x:1", "--config", "f"])


@pytest_twisted.ensureDeferred
async def test_unreachable_service_exits_1_with_a_clear_message(reactor):
    # A port that was just ours and is now closed: connection refused.
    site = Served(reactor, sources(registry()))
    url = site.url
    await site.close()
    d, out, err = run_in_thread(reactor, url)
    assert await d == _cli_status.EXIT_UNREACHABLE
    assert f"cannot reach {url}/status" in err.getvalue()
    assert out.getvalue() == ""


@pytest_twisted.ensureDeferred
async def test_a_url_that_is_not_a_status_document_exits_1(reactor):
    site = Served(reactor, sources(registry()))
    try:
        d, _, missing = run_in_thread(reactor, site.url + "/nope")
        assert await d == _cli_status.EXIT_UNREACHABLE
        d, _, metrics = run_in_thread(reactor, site.url + "/metrics")
        assert await d == _cli_status.EXIT_UNREACHABLE
    finally:
        await site.close()
    assert "answered 404" in missing.getvalue()
    assert "did not answer with JSON" in metrics.getvalue()


@pytest_twisted.ensureDeferred
async def test_an_http_proxy_in_the_environment_is_not_used(reactor):
    # Hosts often export http_proxy for outbound web access; the status listener is the
    # operator's own service, so going through that proxy would fail or leak the request.
    closed = Served(reactor, sources(registry()))
    proxy_url = closed.url
    await closed.close()
    site = Served(reactor, sources(registry(V4)))
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "http_proxy")}
    env.update(http_proxy=proxy_url, HTTP_PROXY=proxy_url)
    try:
        out, err, code = await run_command(reactor, site.url, env)
    finally:
        await site.close()
    assert code == 0, err.decode()
    assert lines_starting(out.decode(), "127.0.0.1:5000")[0].split()[1] == "PLUMBED"


def test_a_document_from_a_hatwist_without_queue_states_still_prints():
    document = {
        "proxies": [],
        "queues": [{"binding": "b1", "domain": "example.test", "depth": 12}],
    }
    text = _cli_status.as_text(document, "http://x/status")
    assert lines_starting(text, "b1")[0].split() == ["b1", "example.test", "12", "-", "-", "-", "-"]
