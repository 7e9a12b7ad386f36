"""
Tests for hatwist.health against a real HAProxy (tests/rig): the checker sees a stopped
proxy go unplumbed and a restarted one come back, fails over between two proxies, and
the SMTP probe proves (or disproves) a source address end to end.
"""

import re

import pytest
import pytest_twisted
from twisted.internet import defer, endpoints, protocol

from hatwist.config import HealthCheckMode, HealthSettings, ServerAddress, parse_config
from hatwist.health import (
    ConnectProbe,
    HealthChecker,
    ServerRegistry,
    ServerState,
    SMTPBannerProbe,
    make_probe,
)
from tests.health.test_probes import NamedReactor, OnlyA
from tests.rig.haproxy import HAProxy
from tests.rig.sink import SILENT

pytestmark = pytest.mark.integration

DEADLINE = 10.0
# Quick but real: the checker runs on the reactor clock with sub-second intervals.
INTERVAL, TIMEOUT = 0.1, 0.5


def server_of(relay):
    return ServerAddress(relay.host, relay.port, relay.server_text)


def settings(failure=2, success=2, mode=HealthCheckMode.CONNECT, target=None):
    return HealthSettings(
        interval=INTERVAL,
        timeout=TIMEOUT,
        failure_threshold=failure,
        success_threshold=success,
        mode=mode,
        target=target,
    )


def next_change(reactor, registry, server, new, source=None):
    """Fires with the next StateChange of ``server`` (or its path from ``source``) to ``new``."""
    d = defer.Deferred()

    def observe(change):
        mine = change.server == server and change.source == source
        if mine and change.new is new and not d.called:
            d.callback(change)

    unsubscribe = registry.subscribe(observe)
    d.addTimeout(DEADLINE, reactor)

    def done(result):
        unsubscribe()
        return result

    return d.addBoth(done)


class ObservedRegistry(ServerRegistry):
    """The real registry, telling the test about each recorded check (no polling)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._waiters = []

    def record_success(self, server, **kw):
        change = super().record_success(server, **kw)
        self._recorded()
        return change

    def record_failure(self, server, **kw):
        change = super().record_failure(server, **kw)
        self._recorded()
        return change

    def record_sources(self, server, results, **kw):
        changes = super().record_sources(server, results, **kw)
        self._recorded()
        return changes

    def _recorded(self):
        for waiter in list(self._waiters):
            server, n, d = waiter
            if self.status(server).checks >= n:
                self._waiters.remove(waiter)
                d.callback(None)

    def checked(self, reactor, server, n):
        """Fires once ``server`` has had ``n`` checks recorded, success or not."""
        if self.status(server).checks >= n:
            return defer.succeed(None)
        d = defer.Deferred()
        self._waiters.append((server, n, d))
        return d.addTimeout(DEADLINE, reactor)


def running_checker(reactor, servers, **kw):
    s = settings(**kw)
    registry = ObservedRegistry(
        servers, success_threshold=s.success_threshold, failure_threshold=s.failure_threshold
    )
    checker = HealthChecker(registry, s, ConnectProbe(reactor, timeout=TIMEOUT), reactor=reactor)
    checker.startService()
    return checker, registry


@pytest_twisted.ensureDeferred
async def test_stopped_haproxy_goes_unplumbed_and_a_restart_plumbs_it_again(reactor, haproxy):
    server = server_of(haproxy)
    checker, registry = running_checker(reactor, [server], failure=2, success=2)
    try:
        await registry.checked(reactor, server, 1)
        assert registry.is_plumbed(server)
        assert registry.status(server).failures == 0

        down = next_change(reactor, registry, server, ServerState.UNPLUMBED)
        await haproxy.stop()
        change = await down
        assert change.old is ServerState.PLUMBED
        assert change.reason.startswith("2 consecutive failed checks, last: ")
        assert "refused" in change.reason.lower()
        assert registry.plumbed([server]) == []

        up = next_change(reactor, registry, server, ServerState.PLUMBED)
        await haproxy.start()
        change = await up
        assert change.reason == "2 consecutive successful checks"
        assert registry.status(server).state_changes == 2
    finally:
        await checker.stopService()


@pytest_twisted.ensureDeferred
async def test_with_one_of_two_proxies_stopped_only_the_live_one_is_offered(reactor, haproxy):
    other = HAProxy(reactor)
    try:
        await other.start()
        live, dead = server_of(haproxy), server_of(other)
        checker, registry = running_checker(reactor, [live, dead], failure=2)
        try:
            await registry.checked(reactor, dead, 1)
            assert sorted(map(str, registry.plumbed([live, dead]))) == sorted(
                [str(live), str(dead)]
            )
            down = next_change(reactor, registry, dead, ServerState.UNPLUMBED)
            await other.stop()
            await down
            assert [registry.plumbed([live, dead]) for _ in range(3)] == [[live]] * 3
            assert registry.is_plumbed(live)
        finally:
            await checker.stopService()
    finally:
        await other.close()


@pytest_twisted.ensureDeferred
async def test_smtp_probe_through_haproxy_reaches_the_sink_from_the_source(
    reactor, haproxy, smtp_sink
):
    target = ServerAddress(smtp_sink.host, smtp_sink.port)
    probe = SMTPBannerProbe(
        reactor, timeout=DEADLINE / 2, target=target, sources_for=lambda s: ("127.0.0.9",)
    )
    await probe.check(server_of(haproxy)).addTimeout(DEADLINE, reactor)
    await smtp_sink.wait_closed(timeout=DEADLINE)
    (session,) = smtp_sink.sessions
    assert session.peer[0] == "127.0.0.9"  # HAProxy originated from the header's source
    assert session.commands == ["QUIT"]


@pytest_twisted.ensureDeferred
async def test_smtp_probe_through_haproxy_fails_when_the_sink_never_greets(
    reactor, haproxy, smtp_sink
):
    smtp_sink.greeting = SILENT
    target = ServerAddress(smtp_sink.host, smtp_sink.port)
    probe = SMTPBannerProbe(
        reactor, timeout=TIMEOUT, target=target, sources_for=lambda s: ("127.0.0.9",)
    )
    verdict = await probe.check(server_of(haproxy)).addTimeout(DEADLINE, reactor)
    ((source, error),) = verdict.results
    assert source == "127.0.0.9"
    assert re.fullmatch(r".* timed out after 0\.5s", error)
    # The probe's abort travels through HAProxy: the sink's session closes too.
    await smtp_sink.wait_closed(timeout=DEADLINE)
    assert len(smtp_sink.sessions) == 1


class SelectiveMX(protocol.Protocol):
    """Greets only connections from ``factory.greeted``; others get silence."""

    def connectionMade(self):
        self.factory.peers.append(self.transport.getPeer().host)
        self.lost = defer.Deferred()
        self.factory.sessions.append(self)
        if self.transport.getPeer().host == self.factory.greeted:
            self.transport.write(b"220 mx.test ESMTP\r\n")

    def connectionLost(self, reason):
        self.lost.callback(None)


@pytest_twisted.ensureDeferred
async def test_smtp_probe_through_haproxy_names_the_source_that_gets_no_banner(reactor, haproxy):
    factory = protocol.Factory.forProtocol(SelectiveMX)
    factory.greeted, factory.peers, factory.sessions = "127.0.0.9", [], []
    port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.20").listen(factory)
    try:
        target = ServerAddress("127.0.0.20", port.getHost().port)
        probe = SMTPBannerProbe(
            reactor,
            timeout=TIMEOUT,
            target=target,
            sources_for=lambda s: ("127.0.0.9", "127.0.0.8"),
        )
        verdict = await probe.check(server_of(haproxy)).addTimeout(DEADLINE, reactor)
        assert verdict.as_dict() == {
            "127.0.0.9": None,
            "127.0.0.8": f"waiting for the banner of {target} timed out after 0.5s",
        }
        assert sorted(factory.peers) == ["127.0.0.8", "127.0.0.9"]
        lost = defer.gatherResults([s.lost for s in factory.sessions])
        await lost.addTimeout(DEADLINE, reactor)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_checker_with_smtp_probe_unplumbs_when_the_target_stops_greeting(
    reactor, haproxy, smtp_sink
):
    server = server_of(haproxy)
    target = ServerAddress(smtp_sink.host, smtp_sink.port)
    s = settings(failure=2, success=1, mode=HealthCheckMode.SMTP, target=target)
    registry = ObservedRegistry([server], success_threshold=1, failure_threshold=2)
    probe = SMTPBannerProbe(
        reactor, timeout=TIMEOUT, target=target, sources_for=lambda _: ("127.0.0.9",)
    )
    checker = HealthChecker(registry, s, probe, reactor=reactor)
    checker.startService()
    try:
        await registry.checked(reactor, server, 1)
        assert registry.status(server).failures == 0
        down = next_change(reactor, registry, server, ServerState.UNPLUMBED)
        smtp_sink.greeting = SILENT
        change = await down
        assert "timed out" in change.reason
    finally:
        await checker.stopService()
    await smtp_sink.wait_closed(timeout=DEADLINE)


@pytest_twisted.ensureDeferred
async def test_checker_built_from_a_parsed_config_proves_the_bindings_source(
    reactor, haproxy, smtp_sink
):
    config = parse_config(
        f"""
        ha_proxy_server = "{haproxy.server_text}"
        ha_proxy_client {{
          health_check_interval = 2
          health_check_mode = smtp
          health_check_target = "{smtp_sink.host}:{smtp_sink.port}"
        }}
        binding b1 {{
          ha_proxy_src_addr = 127.0.0.9
        }}
        """
    )
    (server,) = config.proxy_servers
    assert config.sources_for(server) == ("127.0.0.9",)
    registry = ObservedRegistry(
        config.proxy_servers,
        success_threshold=config.health.success_threshold,
        failure_threshold=config.health.failure_threshold,
    )
    probe = make_probe(config.health, reactor=reactor, sources_for=config.sources_for)
    checker = HealthChecker(registry, config.health, probe, reactor=reactor)
    checker.startService()
    try:
        await registry.checked(reactor, server, 1)
    finally:
        await checker.stopService()
    status = registry.status(server)
    assert (status.failures, status.last_error) == (0, None)
    await smtp_sink.wait_closed(timeout=DEADLINE)
    assert [s.peer[0] for s in smtp_sink.sessions] == ["127.0.0.9"]


@pytest_twisted.ensureDeferred
async def test_a_source_the_mx_never_greets_stops_only_its_path_through_haproxy(reactor, haproxy):
    # Two bindings share one proxy; the MX (behind real HAProxy) greets only 127.0.0.9.
    factory = protocol.Factory.forProtocol(SelectiveMX)
    factory.greeted, factory.peers, factory.sessions = "127.0.0.9", [], []
    port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.20").listen(factory)
    server = server_of(haproxy)
    target = ServerAddress("127.0.0.20", port.getHost().port)
    s = settings(failure=2, success=1, mode=HealthCheckMode.SMTP, target=target)
    registry = ObservedRegistry([server], success_threshold=1, failure_threshold=2)
    probe = SMTPBannerProbe(
        reactor, timeout=TIMEOUT, target=target, sources_for=lambda _: ("127.0.0.9", "127.0.0.8")
    )
    checker = HealthChecker(registry, s, probe, reactor=reactor)
    bad_path_down = next_change(reactor, registry, server, ServerState.UNPLUMBED, "127.0.0.8")
    checker.startService()
    try:
        change = await bad_path_down
        assert "timed out" in change.reason
    finally:
        await checker.stopService()
        await port.stopListening()
    assert registry.is_plumbed(server)
    assert registry.plumbed([server], source="127.0.0.9") == [server]
    assert registry.plumbed([server], source="127.0.0.8") == []
    status = registry.status(server)
    assert (status.state, status.failures) == (ServerState.PLUMBED, 0)
    assert {p.source: p.state for p in status.paths} == {
        "127.0.0.9": ServerState.PLUMBED,
        "127.0.0.8": ServerState.UNPLUMBED,
    }
    assert {"127.0.0.8", "127.0.0.9"} <= set(factory.peers)
    await defer.gatherResults([s.lost for s in factory.sessions]).addTimeout(DEADLINE, reactor)


@pytest_twisted.ensureDeferred
async def test_a_target_name_without_aaaa_leaves_ipv6_paths_to_a_connect_through_haproxy(
    reactor, haproxy, smtp_sink
):
    """Issue 12: with a host-name target lacking AAAA every IPv6 path was unplumbed for a
    DNS reason and IPv6 mail waited until expiry. Now the IPv4 source is proved through
    the real HAProxy, and the IPv6 one is judged by a connect: plumbed while HAProxy
    listens, unplumbed once it stops."""
    server = server_of(haproxy)
    target = ServerAddress("sink.test", smtp_sink.port)
    registry = ObservedRegistry([server], success_threshold=1, failure_threshold=1)
    probe = SMTPBannerProbe(
        NamedReactor(reactor, OnlyA(smtp_sink.host)),
        timeout=TIMEOUT,
        target=target,
        sources_for=lambda _: ("127.0.0.9", "fd00::9"),
    )
    s = settings(failure=1, success=1, mode=HealthCheckMode.SMTP, target=target)
    checker = HealthChecker(registry, s, probe, reactor=reactor)
    checker.startService()
    try:
        await registry.checked(reactor, server, 2)
        status = registry.status(server)
        assert {p.source: (p.state, p.failures) for p in status.paths} == {
            "127.0.0.9": (ServerState.PLUMBED, 0),
            "fd00::9": (ServerState.PLUMBED, 0),
        }
        assert registry.plumbed([server], source="fd00::9") == [server]
        v6_down = next_change(reactor, registry, server, ServerState.UNPLUMBED, "fd00::9")
        await haproxy.stop()
        change = await v6_down
        assert "sink.test has no IPv6 address, judged by a TCP connect" in change.reason
    finally:
        await checker.stopService()
    # Only the IPv4 source ever reached the sink, from its own address.
    assert {session.peer[0] for session in smtp_sink.sessions} == {"127.0.0.9"}
