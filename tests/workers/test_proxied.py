"""Tests for hatwist.inbound._proxied: the PROXY header in front of inbound sessions.

Memory transports and task.Clock: each test drives the bytes a balancer (or a stranger)
would send and looks at what the session behind the wrapper saw.
"""

from __future__ import annotations

import ipaddress

import pytest
from twisted.internet import address, protocol, task
from twisted.internet.testing import StringTransport

from hatwist.inbound._proxied import HEADER_TIMEOUT, ProxiedInboundFactory
from hatwist.proxy import Command, ProxyHeader, encode

BALANCER = address.IPv4Address("TCP", "127.0.0.5", 40000)
CLIENT = address.IPv4Address("TCP", "127.0.0.77", 51234)
RELAY = address.IPv4Address("TCP", "127.0.0.1", 2525)
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


class Session(protocol.Protocol):
    """Stands in for InboundSession: records its peer at connect and what it reads."""

    def __init__(self, factory: SessionFactory, addr) -> None:
        self.factory = factory
        self.built_for = addr
        self.peer = None
        self.data = b""
        self.lost = False

    def connectionMade(self) -> None:
        self.peer = self.transport.getPeer()
        self.transport.write(b"220 ready\r\n")
        self.factory.sessions.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason) -> None:
        self.lost = True


class SessionFactory(protocol.Factory):
    def __init__(self) -> None:
        self.sessions: list[Session] = []

    def buildProtocol(self, addr):
        return Session(self, addr)


def connect(peer=BALANCER, allowed=LOOPBACK):
    clock = task.Clock()
    sessions = SessionFactory()
    factory = ProxiedInboundFactory(sessions, allowed_from=lambda: allowed, reactor=clock)
    proto = factory.buildProtocol(peer)
    if proto is None:
        return clock, sessions, None, None
    transport = StringTransport(hostAddress=RELAY, peerAddress=peer)
    proto.makeConnection(transport)
    return clock, sessions, proto, transport


def v2_header(src=CLIENT, dst=RELAY) -> bytes:
    return encode(ProxyHeader(Command.PROXY, src, dst))


def test_session_sees_the_header_source_as_its_peer_and_only_after_the_header():
    clock, sessions, proto, transport = connect()
    header = v2_header()
    proto.dataReceived(header[:7])  # a header split over segments
    assert sessions.sessions == [] and transport.value() == b""
    proto.dataReceived(header[7:] + b"EHLO client\r\n")
    (session,) = sessions.sessions
    assert (session.peer.host, session.peer.port) == ("127.0.0.77", 51234)
    assert session.built_for == session.peer
    assert session.data == b"EHLO client\r\n"
    assert transport.value() == b"220 ready\r\n"
    assert not clock.getDelayedCalls()  # the header deadline is gone


def test_v1_header_works_too():
    _, sessions, proto, _ = connect()
    proto.dataReceived(b"PROXY TCP4 127.0.0.77 127.0.0.1 51234 2525\r\n")
    (session,) = sessions.sessions
    assert session.peer.host == "127.0.0.77"


def test_local_header_keeps_the_real_peer():
    _, sessions, proto, _ = connect()
    proto.dataReceived(encode(ProxyHeader(Command.LOCAL, None, None)))
    (session,) = sessions.sessions
    assert session.peer == BALANCER


def test_peer_outside_listen_proxy_from_is_refused():
    stranger = address.IPv4Address("TCP", "192.0.2.9", 40000)
    _, sessions, proto, _ = connect(peer=stranger)
    assert proto is None  # Twisted closes the socket: nothing read, nothing written
    assert sessions.sessions == []


def test_ipv4_mapped_balancer_is_judged_as_ipv4():
    mapped = address.IPv6Address("TCP", "::ffff:127.0.0.5", 40000)
    _, _, proto, _ = connect(peer=mapped)
    assert proto is not None


def test_no_header_within_the_deadline_drops_the_connection():
    clock, sessions, proto, transport = connect()
    proto.dataReceived(b"\r\n\r\n")  # the start of a v2 signature, then nothing
    clock.advance(HEADER_TIMEOUT - 0.1)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting or transport.disconnected
    assert sessions.sessions == []


@pytest.mark.parametrize("garbage", [b"EHLO client\r\n", b"PROXY TCP4 nonsense\r\n"])
def test_invalid_header_drops_the_connection_without_a_session(garbage):
    clock, sessions, proto, transport = connect()
    proto.dataReceived(garbage)
    assert transport.disconnecting or transport.disconnected
    assert sessions.sessions == [] and transport.value() == b""
    assert not clock.getDelayedCalls()
    proto.dataReceived(b"more")  # after the drop: ignored, no error


def test_oversized_v2_header_is_refused_as_soon_as_its_length_arrives():
    _, sessions, proto, transport = connect()
    fixed = bytes.fromhex("0d0a0d0a000d0a515549540a") + b"\x21\x11" + (4000).to_bytes(2, "big")
    proto.dataReceived(fixed)
    assert transport.disconnecting or transport.disconnected
    assert sessions.sessions == []


def test_connection_lost_reaches_the_session():
    _, sessions, proto, _ = connect()
    proto.dataReceived(v2_header())
    proto.connectionLost(None)
    assert sessions.sessions[0].lost


def test_reload_of_listen_proxy_from_applies_to_the_next_connection():
    allowed = list(LOOPBACK)
    sessions = SessionFactory()
    factory = ProxiedInboundFactory(sessions, allowed_from=lambda: allowed, reactor=task.Clock())
    assert factory.buildProtocol(BALANCER) is not None
    allowed[:] = [ipaddress.ip_network("10.0.0.0/8")]
    assert factory.buildProtocol(BALANCER) is None


def test_connections_waiting_for_a_header_are_bounded():
    clock, sessions = task.Clock(), SessionFactory()
    factory = ProxiedInboundFactory(sessions, allowed_from=lambda: LOOPBACK, reactor=clock,
                                    max_pending=lambda: 2)
    waiting = []
    for _ in range(2):
        proto = factory.buildProtocol(BALANCER)
        proto.makeConnection(StringTransport(hostAddress=RELAY, peerAddress=BALANCER))
        waiting.append(proto)
    assert factory.buildProtocol(BALANCER) is None  # a third waits for nothing
    waiting[0].dataReceived(v2_header())  # its header came: it is a session now
    assert factory.pending == 1 and factory.buildProtocol(BALANCER) is not None
    waiting[1].connectionLost(None)
    clock.advance(HEADER_TIMEOUT + 1)
    assert factory.pending == 0
