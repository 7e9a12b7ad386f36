"""Every metric the shipped alerts and dashboard read is exported by a running relay.

A real ``twistd hatwist`` with a proxy (the real HAProxy), checked once in smtp mode
through it to the sink so that the per-check and per-source series exist; its /metrics
is scraped and every ``hatwist_*`` name in contrib/prometheus/alerts.yml and
contrib/grafana/hatwist.json must be a sample name there (suffixes included as written).
"""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import deferLater

from tests.rig.haproxy import free_port
from tests.service._relay import Relay, config_text
from tests.test_contrib import dashboard_expressions, metric_names, rule_expressions
from tests.web.support import get

pytestmark = pytest.mark.integration

DEADLINE = 20.0


@pytest_twisted.ensureDeferred
async def test_alerts_and_dashboard_use_only_metrics_a_live_relay_exports(
    reactor, haproxy, smtp_sink, dns_server, tmp_path
):
    listen, status_port = free_port(), free_port()
    config = tmp_path / "hatwist.conf"
    text = config_text(
        listen=listen, status_listen=status_port, spool_dir=str(tmp_path / "spool"),
        resolver=dns_server.address, proxy=haproxy.server_text, smtp_port=smtp_sink.port,
        bindings={"default": "127.0.0.9", "blue": "127.0.0.10"},
    )
    # smtp mode: the per-source series (hatwist_proxy_source_up) exist only there.
    config.write_text(text.replace("  health_check_timeout = 1\n", (
        "  health_check_timeout = 1\n  health_check_mode = smtp\n"
        f"  health_check_target = 127.0.0.20:{smtp_sink.port}\n"), 1))
    relay = Relay(reactor, str(config), listen)
    await relay.start()
    try:
        # Until the first health check has ended, the per-check series are not there yet.
        for _ in range(int(DEADLINE / 0.2)):
            code, _, body = await get(reactor, f"http://127.0.0.1:{status_port}/metrics")
            exported = {sample.name for family in text_string_to_metric_families(body.decode())
                        for sample in family.samples}
            if any(name.startswith("hatwist_proxy_source_up") for name in exported) and \
                    "hatwist_proxy_check_latency_seconds_count" in exported:
                break
            await deferLater(reactor, 0.2)
    finally:
        await relay.stop()
    assert code == 200
    wanted = metric_names(rule_expressions() + dashboard_expressions())
    assert wanted, "no metric names found in contrib/"
    missing = wanted - exported
    assert not missing, f"contrib/ reads metrics the relay does not export: {sorted(missing)}"
    # The zero-from-start promise the alerts rely on: a fresh relay has these series.
    assert "hatwist_proxy_no_greeting_total" in exported
    assert "hatwist_deliveries_total" in exported
    assert os.path.exists(tmp_path / "spool")
