"""Unit tests for hatwist.endpoint: header framing, addresses, timeout and cancellation.

Time and sockets are simulated (MemoryReactorClock, StringTransport); the real-HAProxy
proof lives in tests/test_e2e_endpoint.py.
"""

from __future__ import annotations

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectingCancelledError, NoProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.haproxy._v2parser import V2Parser

from hatwist.endpoint import (
    DestinationUnresolvable,
    HAProxyClientEndpoint,
    ProxyConnectTimeout,
    tcp_endpoint,
)
from hatwist.proxy import MixedFamiliesError

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


class CountingTransport(StringTransport):
    """Remembers every write separately, to prove the header is one write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)


class Greeter(Protocol):
    """An application protocol that speaks first, as an SMTP client's EHLO would."""

    def connectionMade(self) -> None:
        self.seen_peer = self.transport.getPeer()
        self.seen_host = self.transport.getHost()
        self.transport.write(b"hello")


def connect(endpoint: HAProxyClientEndpoint, reactor: MemoryReactorClock):
    d = endpoint.connect(Factory.forProtocol(Greeter))
    return d


def complete_connection(reactor: MemoryReactorClock) -> CountingTransport:
    host, port, factory, _timeout, _bind = reactor.tcpClients[-1]
    protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
    transport = CountingTransport()
    protocol.makeConnection(transport)
    return transport


def make_endpoint(reactor, source=("127.0.0.9", 0), destination=("127.0.0.20", 25), **kw):
    proxy = TCP4ClientEndpoint(reactor, "127.0.0.1", 5000)
    return HAProxyClientEndpoint(reactor, proxy, source, destination, **kw)


def test_header_is_one_write_before_the_application_speaks():
    reactor = MemoryReactorClock()
    d = connect(make_endpoint(reactor), reactor)
    transport = complete_connection(reactor)

    assert transport.writes[0].startswith(V2_SIGNATURE)
    assert transport.writes[1:] == [b"hello"]
    info, rest = V2Parser().feed(transport.writes[0])
    assert (info.source.host, info.source.port) == ("127.0.0.9", 0)
    assert (info.destination.host, info.destination.port) == ("127.0.0.20", 25)
    assert rest == b""
    assert isinstance(d.result, Greeter)


def test_application_sees_destination_as_peer_and_source_as_host():
    reactor = MemoryReactorClock()
    d = connect(make_endpoint(reactor, source=("127.0.0.9", 4000)), reactor)
    complete_connection(reactor)
    app = d.result

    assert app.seen_peer == IPv4Address("TCP", "127.0.0.20", 25)
    assert app.seen_host == IPv4Address("TCP", "127.0.0.9", 4000)


def test_ipv6_header_and_addresses():
    reactor = MemoryReactorClock()
    endpoint = make_endpoint(reactor, source=("fd00::9", 0), destination=("fd00::20", 2525))
    d = connect(endpoint, reactor)
    transport = complete_connection(reactor)

    info, _ = V2Parser().feed(transport.writes[0])
    assert info.destination.port == 2525
    assert d.result.seen_peer == IPv6Address("TCP", "fd00::20", 2525)


def test_version_1_writes_a_text_header():
    reactor = MemoryReactorClock()
    d = connect(make_endpoint(reactor, version=1), reactor)
    transport = complete_connection(reactor)

    assert transport.writes[0] == b"PROXY TCP4 127.0.0.9 127.0.0.20 0 25\r\n"
    assert d.called


def test_mixed_families_are_refused_at_construction():
    with pytest.raises(MixedFamiliesError):
        make_endpoint(MemoryReactorClock(), source=("127.0.0.9", 0), destination=("::1", 25))


def test_unknown_version_is_refused():
    with pytest.raises(ValueError, match="version"):
        make_endpoint(MemoryReactorClock(), version=3)


def test_timeout_covers_reaching_the_proxy():
    reactor = MemoryReactorClock()
    d = connect(make_endpoint(reactor, timeout=5), reactor)
    connector = reactor.connectors[-1]
    reactor.advance(4.9)
    assert not d.called

    reactor.advance(0.2)

    failure = _failure_of(d)
    assert failure.check(ProxyConnectTimeout)
    assert "5s" in str(failure.value)
    assert connector.stoppedConnecting


def test_cancel_aborts_the_connection_attempt():
    reactor = MemoryReactorClock()
    d = connect(make_endpoint(reactor), reactor)
    connector = reactor.connectors[-1]

    d.cancel()

    assert _failure_of(d).check(ConnectingCancelledError)
    assert connector.stoppedConnecting


class FakeResolver:
    """An IHostnameResolver answering from a dict, or never when told to hang."""

    def __init__(self, answers: dict[str, list], hang: bool = False) -> None:
        self.answers = answers
        self.hang = hang
        self.asked: list[tuple[str, tuple]] = []

    def resolveHostName(self, receiver, hostName, portNumber=0, addressTypes=None,
                        transportSemantics="TCP"):
        self.asked.append((hostName, tuple(addressTypes or ())))
        receiver.resolutionBegan(None)
        if self.hang:
            return receiver
        for address in self.answers.get(hostName, []):
            if addressTypes is None or type(address) in addressTypes:
                receiver.addressResolved(address)
        receiver.resolutionComplete()
        return receiver


def test_destination_host_name_resolves_to_the_source_family():
    reactor = MemoryReactorClock()
    reactor.nameResolver = FakeResolver({
        "mx.test": [IPv6Address("TCP", "fd00::20", 0), IPv4Address("TCP", "127.0.0.20", 0)]
    })
    d = connect(make_endpoint(reactor, destination=("mx.test", 25)), reactor)
    transport = complete_connection(reactor)

    info, _ = V2Parser().feed(transport.writes[0])
    assert info.destination.host == "127.0.0.20"
    assert reactor.nameResolver.asked == [("mx.test", (IPv4Address,))]
    assert d.result.seen_peer == IPv4Address("TCP", "127.0.0.20", 25)


def test_destination_without_an_address_of_the_source_family_fails_clearly():
    reactor = MemoryReactorClock()
    reactor.nameResolver = FakeResolver({"mx.test": [IPv6Address("TCP", "fd00::20", 0)]})
    d = connect(make_endpoint(reactor, destination=("mx.test", 25)), reactor)

    failure = _failure_of(d)
    assert failure.check(DestinationUnresolvable)
    assert "mx.test" in str(failure.value) and "IPv4" in str(failure.value)
    assert reactor.tcpClients == []


def test_timeout_also_covers_a_resolution_that_never_ends():
    reactor = MemoryReactorClock()
    reactor.nameResolver = FakeResolver({}, hang=True)
    d = connect(make_endpoint(reactor, destination=("mx.test", 25), timeout=2), reactor)
    reactor.advance(2)

    assert _failure_of(d).check(ProxyConnectTimeout)
    assert reactor.tcpClients == []


def test_refusing_application_factory_gets_no_connection():
    reactor = MemoryReactorClock()

    class Refuser(Factory):
        def buildProtocol(self, addr):
            return None

    connecting = make_endpoint(reactor).connect(Refuser())
    host, port, factory, _timeout, _bind = reactor.tcpClients[-1]
    assert factory.buildProtocol(IPv4Address("TCP", host, port)) is None
    _failure_of(connecting).trap(NoProtocol)


def _failure_of(d: defer.Deferred):
    failures = []
    d.addErrback(failures.append)
    assert failures, f"expected {d!r} to have failed"
    return failures[0]


@pytest.mark.parametrize(
    ("host", "bind"), [("192.0.2.7", "192.0.2.1"), ("2001:db8::7", "2001:db8::1"), ("::1", None)]
)
def test_tcp_endpoint_connects_to_an_ip_literal_directly_with_its_timeout_and_bind(host, bind):
    reactor = MemoryReactorClock()
    tcp_endpoint(reactor, host, 2525, timeout=4.5, bind=bind).connect(Factory.forProtocol(Protocol))
    [(connected_host, port, _factory, timeout, bind_address)] = reactor.tcpClients
    assert (connected_host, port, timeout) == (host, 2525, 4.5)
    assert bind_address == ((bind, 0) if bind else None)


#: Names getaddrinfo reads as inet_aton does: octal, hex and short forms of other IPs.
NUMERIC_NAMES = ("010.0.0.1", "0177.0.0.01", "127.1", "0x7f.1", "127.0x1", "10.1.")


@pytest.mark.parametrize("name", NUMERIC_NAMES)
def test_a_numeric_destination_name_is_refused_before_any_lookup(name):
    reactor = MemoryReactorClock()
    reactor.nameResolver = FakeResolver({name: [IPv4Address("TCP", "127.0.0.1", 0)]})
    with pytest.raises(ValueError, match="last label is a number"):
        make_endpoint(reactor, destination=(name, 25))
    assert reactor.nameResolver.asked == []


@pytest.mark.parametrize("name", NUMERIC_NAMES)
def test_tcp_endpoint_refuses_a_numeric_host_name(name):
    with pytest.raises(ValueError, match=f"{name!r}.*last label is a number"):
        tcp_endpoint(MemoryReactorClock(), name, 2525)


@pytest.mark.parametrize("name", ["mx.test", "beef.cafe", "0x.example", "10.0.0.1", "::1"])
def test_real_names_and_ip_literals_are_not_numeric(name):
    from hatwist.endpoint import is_numeric_name

    assert not is_numeric_name(name)
