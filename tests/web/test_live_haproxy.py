"""/status and /metrics fed by the real health checker probing a real HAProxy (tests/rig):
what an operator sees when the proxy stops."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer

from hatwist.config import HealthCheckMode, HealthSettings, ServerAddress
from hatwist.health import ConnectProbe, HealthChecker, ServerRegistry, ServerState
from tests.web.support import DEADLINE, Served, get, sources

pytestmark = pytest.mark.integration

INTERVAL, TIMEOUT = 0.1, 0.5


def changed_to(reactor, registry, server, state) -> defer.Deferred:
    """Fires once ``server`` is in ``state`` (at once if it already is); never hangs."""
    d: defer.Deferred = defer.Deferred()
    if registry.status(server).state is state and registry.status(server).checks:
        d.callback(None)
        return d

    def observe(change):
        if change.server == server and change.new is state and not d.called:
            d.callback(None)

    unsubscribe = registry.subscribe(observe)
    d.addTimeout(DEADLINE, reactor)
    return d.addBoth(lambda result: (unsubscribe(), result)[1])


class SuccessRegistry(ServerRegistry):
    """The real registry, also telling the test about each successful check (the registry
    itself notifies only state changes, and the first success changes nothing)."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.succeeded: list[defer.Deferred] = []

    def record_success(self, server, **kw):
        change = super().record_success(server, **kw)
        waiting, self.succeeded = self.succeeded, []
        for d in waiting:
            d.callback(None)
        return change

    def next_success(self, reactor) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.succeeded.append(d)
        return d.addTimeout(DEADLINE, reactor)


async def status_of(reactor, url) -> dict:
    code, _, body = await get(reactor, url + "/status")
    assert code == 200
    [proxy] = json.loads(body)["proxies"]
    return proxy


async def proxy_up(reactor, url) -> dict[str, float]:
    _, _, body = await get(reactor, url + "/metrics")
    return {
        sample.labels["server"]: sample.value
        for family in text_string_to_metric_families(body.decode())
        if family.name == "hatwist_proxy_up"
        for sample in family.samples
    }


@pytest_twisted.ensureDeferred
async def test_status_and_metrics_show_a_stopped_haproxy_unplumbed(reactor, haproxy):
    server = ServerAddress(haproxy.host, haproxy.port, haproxy.server_text)
    registry = SuccessRegistry([server], success_threshold=1, failure_threshold=2)
    settings = HealthSettings(
        interval=INTERVAL,
        timeout=TIMEOUT,
        failure_threshold=2,
        success_threshold=1,
        mode=HealthCheckMode.CONNECT,
        target=None,
    )
    checker = HealthChecker(
        registry, settings, ConnectProbe(reactor, timeout=TIMEOUT), reactor=reactor
    )
    site = Served(reactor, sources(registry, clock=reactor))
    first_success = registry.next_success(reactor)
    checker.startService()
    try:
        await first_success
        before = await status_of(reactor, site.url)
        assert (before["server"], before["state"]) == (haproxy.server_text, "plumbed")
        assert before["last_latency"] is not None and before["failures"] == 0
        assert await proxy_up(reactor, site.url) == {haproxy.server_text: 1}

        down = changed_to(reactor, registry, server, ServerState.UNPLUMBED)
        await haproxy.stop()
        await down
        after = await status_of(reactor, site.url)
        assert after["state"] == "unplumbed"
        assert after["consecutive_failures"] >= 2 and after["last_error"]
        assert await proxy_up(reactor, site.url) == {haproxy.server_text: 0}
    finally:
        await checker.stopService()
        await site.close()
