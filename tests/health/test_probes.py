"""
Tests for hatwist.health's probes against real sockets on loopback.

The "proxy" here is a plain listener that reads the PROXY header with Twisted's own
(independent) parser and then behaves as the test says: greet, refuse, stay silent.
"""

from ipaddress import ip_address

import pytest
import pytest_twisted
from twisted.internet import defer, endpoints, protocol
from twisted.internet.error import ConnectionRefusedError
from twisted.protocols.haproxy._v2parser import V2Parser
from zope.interface.verify import verifyObject

from hatwist.config import HealthCheckMode, HealthSettings, ServerAddress
from hatwist.health import (
    CheckTimedOut,
    ConnectProbe,
    IHealthProbe,
    ProbeError,
    SMTPBannerProbe,
    SourceResults,
    make_probe,
)
from hatwist.health._probes import direct_endpoint

DEADLINE = 5.0
TARGET = ServerAddress("127.0.0.20", 2525)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


@pytest.fixture
def reactor():
    from twisted.internet import reactor

    return reactor


def within(reactor, d, seconds=DEADLINE):
    """Never let a test hang on a Deferred that does not fire."""
    return d.addTimeout(seconds, reactor)


class FakeProxy(protocol.Protocol):
    """
    Reads one PROXY v2 header, then acts out ``factory.behaviour(self, source_ip)``.
    """

    def connectionMade(self):
        self.received = b""
        self.header = None
        self.lost = defer.Deferred()
        self.factory.sessions.append(self)

    def dataReceived(self, data):
        self.received += data
        if self.header is None and len(self.received) >= 16:
            length = int.from_bytes(self.received[14:16], "big")
            if len(self.received) >= 16 + length:
                raw = self.received[: 16 + length]
                self.header = V2Parser.parse(raw)
                self.raw_header = raw
                self.factory.behaviour(self, self.header.source.host)

    def connectionLost(self, reason):
        self.lost.callback(None)


class FakeProxyFactory(protocol.Factory):
    protocol = FakeProxy

    def __init__(self, behaviour=lambda proto, source: None):
        self.sessions = []
        self.behaviour = behaviour


async def listen(reactor, factory):
    port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    return port, ServerAddress("127.0.0.1", port.getHost().port)


def greet(proto, source):
    proto.transport.write(b"220 sink.test ESMTP\r\n")


async def settle(reactor, factory):
    """Wait until every connection the fake proxy saw is closed on its side."""
    await within(reactor, defer.gatherResults([s.lost for s in factory.sessions]))


def banner_probe(reactor, sources=("127.0.0.9",), timeout=DEADLINE, target=TARGET):
    return SMTPBannerProbe(
        reactor, timeout=timeout, target=target, sources_for=lambda server: sources
    )


async def outcome(reactor, d):
    """
    The failure a check ended with, or None for success.

    An smtp-mode verdict (per source) reads as the checker's server-level one would if
    every source counted: None when all passed, else a ProbeError naming the failed ones.
    """
    try:
        result = await within(reactor, d)
    except Exception as e:
        return e
    if isinstance(result, SourceResults):
        failed = [f"source {s}: {error}" for s, error in result.results if error is not None]
        return ProbeError("; ".join(failed)) if failed else None
    return result


def test_probes_provide_the_interface(reactor):
    verifyObject(IHealthProbe, ConnectProbe(reactor, timeout=1))
    verifyObject(IHealthProbe, banner_probe(reactor))


def test_host_names_get_a_fresh_resolving_endpoint_each_time(reactor):
    server = ServerAddress("localhost", 25)
    first, second = direct_endpoint(reactor, server), direct_endpoint(reactor, server)
    assert isinstance(first, endpoints.HostnameEndpoint)
    assert first is not second
    assert isinstance(
        direct_endpoint(reactor, ServerAddress("127.0.0.1", 25)), endpoints.TCP4ClientEndpoint
    )
    assert isinstance(
        direct_endpoint(reactor, ServerAddress("::1", 25)), endpoints.TCP6ClientEndpoint
    )


def test_make_probe_follows_the_mode(reactor):
    def health(mode, target):
        return HealthSettings(
            interval=5,
            timeout=1,
            failure_threshold=3,
            success_threshold=3,
            mode=mode,
            target=target,
        )

    assert isinstance(
        make_probe(health(HealthCheckMode.CONNECT, None), reactor=reactor, sources_for=tuple),
        ConnectProbe,
    )
    smtp = make_probe(health(HealthCheckMode.SMTP, TARGET), reactor=reactor, sources_for=tuple)
    assert isinstance(smtp, SMTPBannerProbe)
    with pytest.raises(ValueError, match="health_check_target"):
        make_probe(health(HealthCheckMode.SMTP, None), reactor=reactor, sources_for=tuple)


@pytest_twisted.ensureDeferred
async def test_connect_probe_succeeds_and_closes_its_connection(reactor):
    factory = FakeProxyFactory()
    port, server = await listen(reactor, factory)
    try:
        result = await outcome(reactor, ConnectProbe(reactor, timeout=DEADLINE).check(server))
        assert result is None
        assert len(factory.sessions) == 1
        await settle(reactor, factory)
        assert factory.sessions[0].received == b""  # a plain connect never sends a header
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_connect_probe_resolves_a_host_name(reactor):
    factory = FakeProxyFactory()
    port, server = await listen(reactor, factory)
    try:
        named = ServerAddress("localhost", server.port)
        probe = ConnectProbe(
            reactor,
            timeout=DEADLINE,
            # localhost may resolve to ::1 first; the listener is IPv4 only.
            endpoint_for=lambda s: endpoints.HostnameEndpoint(reactor, s.host, s.port),
        )
        assert await outcome(reactor, probe.check(named)) is None
        await settle(reactor, factory)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_connect_probe_fails_when_refused(reactor):
    port, server = await listen(reactor, FakeProxyFactory())
    await port.stopListening()
    result = await outcome(reactor, ConnectProbe(reactor, timeout=DEADLINE).check(server))
    assert isinstance(result, ConnectionRefusedError)


@pytest_twisted.ensureDeferred
async def test_connect_probe_cancels_a_connect_that_hangs_at_the_timeout(reactor):
    cancelled = []

    class HangingEndpoint:
        def connect(self, factory):
            return defer.Deferred(cancelled.append)

    probe = ConnectProbe(reactor, timeout=0.05, endpoint_for=lambda s: HangingEndpoint())
    result = await outcome(reactor, probe.check(ServerAddress("127.0.0.1", 9)))
    assert isinstance(result, CheckTimedOut)
    assert str(result) == "connect to 127.0.0.1:9 timed out after 0.05s"
    assert len(cancelled) == 1


@pytest_twisted.ensureDeferred
async def test_cancelling_a_probe_cancels_its_connect(reactor):
    cancelled = []

    class HangingEndpoint:
        def connect(self, factory):
            return defer.Deferred(cancelled.append)

    probe = ConnectProbe(reactor, timeout=DEADLINE, endpoint_for=lambda s: HangingEndpoint())
    d = probe.check(ServerAddress("127.0.0.1", 9))
    d.cancel()
    assert isinstance(await outcome(reactor, d), Exception)
    assert len(cancelled) == 1
    # Its deadline went with it: no timer is left to fire in a later test.
    assert [c for c in reactor.getDelayedCalls() if c.func.__name__ == "_time_out"] == []


@pytest_twisted.ensureDeferred
async def test_smtp_probe_sends_a_proxy_v2_header_reads_220_then_quits(reactor):
    factory = FakeProxyFactory(greet)
    port, server = await listen(reactor, factory)
    try:
        assert await outcome(reactor, banner_probe(reactor).check(server)) is None
        await settle(reactor, factory)
        (session,) = factory.sessions
        assert session.raw_header.startswith(V2_SIGNATURE + b"\x21")  # PROXY, never LOCAL
        assert session.header.source.host == "127.0.0.9"
        assert (session.header.destination.host, session.header.destination.port) == (
            "127.0.0.20",
            2525,
        )
        assert session.received[len(session.raw_header) :] == b"QUIT\r\n"
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_smtp_probe_aborts_a_silent_connection_at_the_timeout(reactor):
    factory = FakeProxyFactory()  # reads the header, then never says a word
    port, server = await listen(reactor, factory)
    try:
        result = await outcome(reactor, banner_probe(reactor, timeout=0.2).check(server))
        assert isinstance(result, ProbeError)
        assert str(result) == (
            "source 127.0.0.9: waiting for the banner of 127.0.0.20:2525 timed out after 0.2s"
        )
        # The server side sees the probe's connection closed: nothing half-open is left.
        await settle(reactor, factory)
        assert factory.sessions[0].header is not None
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_smtp_probe_fails_on_a_close_before_the_banner(reactor):
    factory = FakeProxyFactory(lambda proto, source: proto.transport.loseConnection())
    port, server = await listen(reactor, factory)
    try:
        result = await outcome(reactor, banner_probe(reactor).check(server))
        assert isinstance(result, ProbeError)
        assert str(result).startswith("source 127.0.0.9: connection closed before the 220 banner")
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_smtp_probe_fails_on_a_greeting_other_than_220(reactor):
    factory = FakeProxyFactory(lambda p, s: p.transport.write(b"554 go away\r\n"))
    port, server = await listen(reactor, factory)
    try:
        result = await outcome(reactor, banner_probe(reactor).check(server))
        assert str(result) == "source 127.0.0.9: expected a 220 banner, got '554 go away'"
        await settle(reactor, factory)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_smtp_probe_fails_on_an_endless_first_line(reactor):
    factory = FakeProxyFactory(lambda p, s: p.transport.write(b"220" + b"x" * 2000))
    port, server = await listen(reactor, factory)
    try:
        result = await outcome(reactor, banner_probe(reactor).check(server))
        assert "no end of line in the first 1000 bytes" in str(result)
        await settle(reactor, factory)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_smtp_probe_checks_every_source_and_names_the_one_that_fails(reactor):
    def greet_only_9(proto, source):
        if source == "127.0.0.9":
            greet(proto, source)
        else:
            proto.transport.loseConnection()

    factory = FakeProxyFactory(greet_only_9)
    port, server = await listen(reactor, factory)
    try:
        probe = banner_probe(reactor, sources=("127.0.0.9", "127.0.0.8", "127.0.0.9"))
        verdict = await within(reactor, probe.check(server))
        assert isinstance(verdict, SourceResults)
        assert [source for source, _ in verdict.results] == ["127.0.0.9", "127.0.0.8"]
        assert verdict.as_dict()["127.0.0.9"] is None
        assert verdict.as_dict()["127.0.0.8"].startswith("connection closed before")
        assert sorted(s.header.source.host for s in factory.sessions) == [
            "127.0.0.8",
            "127.0.0.9",
        ]
        await settle(reactor, factory)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_source_whose_family_has_no_target_is_judged_by_a_connect(reactor):
    factory = FakeProxyFactory(greet)
    port, server = await listen(reactor, factory)
    try:
        probe = banner_probe(reactor, sources=("fd00::9", "127.0.0.9"))
        verdict = await within(reactor, probe.check(server))
        assert verdict.as_dict() == {"fd00::9": None, "127.0.0.9": None}
        # One PROXY header (the IPv4 source's), and one plain connect for the IPv6 one.
        assert sorted(str(s.header and s.header.source.host) for s in factory.sessions) == [
            "127.0.0.9",
            "None",
        ]
        await settle(reactor, factory)
        none = await outcome(reactor, banner_probe(reactor, sources=()).check(server))
        assert str(none).startswith("no source address is used with")
    finally:
        await port.stopListening()
    # With the proxy gone, the connect fails, and says why it stood in for a banner.
    only_v6 = banner_probe(reactor, sources=("fd00::9",))
    verdict = await within(reactor, only_v6.check(server))
    reason = verdict.as_dict()["fd00::9"]
    assert reason.startswith("no IPv6 health check target, judged by a TCP connect: ")
    assert "ConnectionRefusedError" in reason


@pytest_twisted.ensureDeferred
async def test_each_family_is_proved_against_its_own_target(reactor):
    seen = []

    def record(proto, source):
        seen.append((str(ip_address(source)), str(ip_address(proto.header.destination.host))))
        greet(proto, source)

    factory = FakeProxyFactory(record)
    port, server = await listen(reactor, factory)
    try:
        probe = SMTPBannerProbe(
            reactor,
            timeout=DEADLINE,
            target=TARGET,
            ipv6_target=ServerAddress("fd00::20", 2525),
            sources_for=lambda _: ("127.0.0.9", "fd00::9"),
        )
        verdict = await within(reactor, probe.check(server))
        assert verdict.as_dict() == {"127.0.0.9": None, "fd00::9": None}
        assert sorted(seen) == [("127.0.0.9", "127.0.0.20"), ("fd00::9", "fd00::20")]
        await settle(reactor, factory)
    finally:
        await port.stopListening()


class OnlyA:
    """A name resolver that knows ``sink.test`` by its IPv4 address only (no AAAA)."""

    def __init__(self, ip: str = "127.0.0.20") -> None:
        self.ip = ip

    def resolveHostName(self, receiver, hostName, portNumber=0, addressTypes=None, **kw):
        from twisted.internet.address import IPv4Address

        receiver.resolutionBegan(None)
        if hostName == "sink.test" and (addressTypes is None or IPv4Address in addressTypes):
            receiver.addressResolved(IPv4Address("TCP", self.ip, portNumber))
        receiver.resolutionComplete()
        return receiver


class NamedReactor:
    """The real reactor, with name resolution answered by ``names``."""

    def __init__(self, reactor, names):
        self._reactor = reactor
        self.nameResolver = names

    def __getattr__(self, name):
        return getattr(self._reactor, name)


@pytest_twisted.ensureDeferred
async def test_a_host_name_target_without_aaaa_leaves_ipv6_sources_to_a_connect(reactor):
    """Issue 12: the IPv6 path was unplumbed for a DNS reason, and its mail waited."""
    factory = FakeProxyFactory(greet)
    port, server = await listen(reactor, factory)
    try:
        probe = SMTPBannerProbe(
            NamedReactor(reactor, OnlyA()),
            timeout=DEADLINE,
            target=ServerAddress("sink.test", 2525),
            sources_for=lambda _: ("127.0.0.9", "fd00::9"),
        )
        verdict = await within(reactor, probe.check(server))
        assert verdict.as_dict() == {"127.0.0.9": None, "fd00::9": None}
        headers = [s.header.source.host for s in factory.sessions if s.header is not None]
        assert headers == ["127.0.0.9"]
        await settle(reactor, factory)
    finally:
        await port.stopListening()
    verdict = await within(reactor, probe.check(server))
    assert verdict.as_dict()["fd00::9"].startswith(
        "sink.test has no IPv6 address, judged by a TCP connect: "
    )


@pytest_twisted.ensureDeferred
async def test_cancelling_an_smtp_probe_aborts_its_connection(reactor):
    connected = defer.Deferred()
    factory = FakeProxyFactory(lambda proto, source: connected.callback(proto))
    port, server = await listen(reactor, factory)
    try:
        d = banner_probe(reactor).check(server)
        await within(reactor, connected)
        d.cancel()
        await outcome(reactor, d)
        await settle(reactor, factory)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_cancelling_an_smtp_probe_still_reports_the_sources_that_answered(reactor):
    # The checker cancels at its timeout: a silent source must not hide a good one.
    greeted, silent = defer.Deferred(), defer.Deferred()

    def behaviour(proto, source):
        if source == "127.0.0.9":
            greet(proto, source)
            greeted.callback(proto)
        else:
            silent.callback(proto)

    factory = FakeProxyFactory(behaviour)
    port, server = await listen(reactor, factory)
    try:
        d = banner_probe(reactor, sources=("127.0.0.9", "127.0.0.8")).check(server)
        await within(reactor, silent)
        await within(reactor, (await within(reactor, greeted)).lost)  # 220, QUIT, closed
        d.cancel()
        verdict = await within(reactor, d)
        assert verdict.as_dict() == {
            "127.0.0.9": None,
            "127.0.0.8": "waiting for the banner of 127.0.0.20:2525 timed out after 5s",
        }
        await settle(reactor, factory)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_checks_log_nothing_of_their_own_connections(reactor):
    """An idle relay checks every few seconds; connectProtocol's factory logged
    'Starting factory' and 'Stopping factory' for each check (half of an idle log)."""
    from twisted.logger import formatEvent, globalLogPublisher

    factory = FakeProxyFactory(greet)
    port, server = await listen(reactor, factory)
    seen: list[str] = []
    observer = lambda event: seen.append(formatEvent(event))  # noqa: E731
    globalLogPublisher.addObserver(observer)
    try:
        assert await outcome(reactor, ConnectProbe(reactor, timeout=DEADLINE).check(server)) \
            is None
        assert await outcome(reactor, banner_probe(reactor).check(server)) is None
        await settle(reactor, factory)
    finally:
        globalLogPublisher.removeObserver(observer)
        await port.stopListening()
    assert len(factory.sessions) == 2
    assert not [line for line in seen if "factory" in line.lower()], seen
