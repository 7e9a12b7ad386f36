# -*- test-case-name: tests.workers.test_proxied -*-
"""
The inbound listener behind a balancer: a PROXY v1/v2 header in front of each session.

With ``listen_proxy_protocol`` on, a balancer (HAProxy ``send-proxy-v2``) connects for the
client and says who the client is in a header before the first SMTP byte. This wrapper
reads that header with hatwist's own incremental parser (Twisted's server wrapper calls
the session's ``connectionMade`` before the header has arrived, so the greeting and the
relay decision would see the balancer, and it mishandles a header split over segments),
and only then starts the session, on a transport whose ``getPeer()`` is the header's
source. So ``relay_from``, the logs, the ``Received:`` line and every per-client limit
judge the client, without the session knowing a balancer exists.

Promises:
  - a peer outside ``listen_proxy_from`` is refused: closed at once, before any byte is
    read or written, and logged;
  - a listed peer gets no greeting until its header is complete; no valid header within
    :data:`HEADER_TIMEOUT` seconds, a malformed one, or one longer than the parser's
    bound, and the connection is dropped and logged;
  - at most ``max_pending`` connections wait for their header at once (the sessions'
    own limits count only once the client is known); one more is refused and logged;
  - a ``LOCAL`` header (the balancer's own health check) keeps the real peer;
  - bytes after the header in the same segment reach the session untouched.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import address, protocol
from twisted.internet.interfaces import IAddress
from twisted.logger import Logger
from twisted.protocols import policies
from zope.interface import directlyProvides, providedBy

from hatwist.proxy import Command, HeaderParser, ProxyHeader, ProxyProtocolError

__all__ = ["HEADER_TIMEOUT", "ProxiedInboundFactory"]

#: Seconds a listed peer has to send its complete header (a balancer sends it at once).
HEADER_TIMEOUT = 5.0
#: Connections waiting for their header at once, by default.
MAX_PENDING = 100
#: A v2 header's largest declared length accepted: addresses and a few TLVs.
MAX_HEADER_LENGTH = 512

Networks = Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]


def _ip(peer: IAddress) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    host = getattr(peer, "host", None)
    try:
        ip = ipaddress.ip_address(host) if host is not None else None
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # a dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d
    return ip


def _describe(peer: IAddress) -> str:
    host, port = getattr(peer, "host", None), getattr(peer, "port", None)
    return str(peer) if host is None else f"{host}:{port}"


def client_address(header: ProxyHeader, peer: IAddress) -> IAddress:
    """The address the session should see: the header's source for a relayed TCP
    connection, the real peer for ``LOCAL`` or an address family without one."""
    source = header.source
    if header.command != Command.PROXY or not isinstance(
        source, address.IPv4Address | address.IPv6Address
    ):
        return peer
    return source


class _ProxiedConnection(policies.ProtocolWrapper):
    """Reads the header, then becomes the session's transport with the client as peer."""

    log = Logger(namespace="hatwist.inbound")

    def __init__(self, factory: ProxiedInboundFactory, peer: IAddress) -> None:
        super().__init__(factory, None)  # the session is built once the header is read
        self._waiting = True  # counted in factory.pending until the header is read
        self._peer = peer
        self._client: IAddress | None = None
        self._parser: HeaderParser | None = HeaderParser(MAX_HEADER_LENGTH)
        self._timer: Any = None

    def makeConnection(self, transport: Any) -> None:
        # As ProtocolWrapper (the session sees the transport's interfaces, STARTTLS
        # included), but the session is not started here: its peer is not known yet.
        directlyProvides(self, providedBy(transport))
        protocol.Protocol.makeConnection(self, transport)

    def connectionMade(self) -> None:
        self.factory.pending += 1
        self._timer = self.factory.reactor.callLater(self.factory.header_timeout, self._expired)

    def _expired(self) -> None:
        self._timer = None
        self.log.warn(
            "dropped {peer}: no complete PROXY header within {timeout}s",
            peer=_describe(self._peer), timeout=self.factory.header_timeout,
        )
        self._drop()

    def _drop(self) -> None:
        self._parser = None
        self._done_waiting()
        self.transport.abortConnection()

    def _done_waiting(self) -> None:
        if self._waiting:
            self._waiting = False
            self.factory.pending -= 1

    def dataReceived(self, data: bytes) -> None:
        if self.wrappedProtocol is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        if self._parser is None:
            return  # dropped; the rest is discarded
        try:
            header, rest = self._parser.feed(data)
        except ProxyProtocolError as error:
            self._cancel_timer()
            self.log.warn("dropped {peer}: invalid PROXY header: {error}",
                          peer=_describe(self._peer), error=str(error))
            self._drop()
            return
        if header is None:
            return
        self._cancel_timer()
        self._parser = None
        self._done_waiting()
        self._start_session(client_address(header, self._peer), rest)

    def _start_session(self, client: IAddress, rest: bytes) -> None:
        self._client = client
        session = self.factory.wrappedFactory.buildProtocol(client)
        if session is None:
            self.transport.loseConnection()
            return
        self.wrappedProtocol = session
        session.makeConnection(self)
        if rest and self.wrappedProtocol is not None and self.connected:
            session.dataReceived(rest)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def logPrefix(self) -> str:
        return "ProxiedInbound"

    def getPeer(self) -> IAddress:
        """The client as the balancer's header named it (the real peer until then)."""
        return self._client if self._client is not None else self._peer

    def connectionLost(self, reason: Any) -> None:
        self._cancel_timer()
        self._done_waiting()
        self.disconnecting = True
        self.connected = False
        parser, self._parser = self._parser, None
        if parser is not None:
            try:
                parser.finish()
            except ProxyProtocolError as error:
                self.log.info("{peer} went away in its PROXY header: {error}",
                              peer=_describe(self._peer), error=str(error))
        if self.wrappedProtocol is not None:
            self.wrappedProtocol.connectionLost(reason)
            self.wrappedProtocol = None


class ProxiedInboundFactory(protocol.Factory):
    """
    Listen with this in front of the inbound factory when ``listen_proxy_protocol`` is on.

    :param wrapped: the ``InboundFactory``; its sessions are built with the client's address.
    :param allowed_from: returns the balancers' networks (``listen_proxy_from``), asked at
        each connection so that a reload applies to the next one.
    :param reactor: an ``IReactorTime`` for the header deadline.
    :param max_pending: returns how many connections may wait for their header at once.
    """

    log = Logger(namespace="hatwist.inbound")
    noisy = False

    def __init__(
        self, wrapped: protocol.Factory, *, allowed_from: Callable[[], Networks], reactor: Any,
        header_timeout: float = HEADER_TIMEOUT,
        max_pending: Callable[[], int] = lambda: MAX_PENDING,
    ) -> None:
        self.wrappedFactory = wrapped
        self.allowed_from = allowed_from
        self.max_pending = max_pending
        self.pending = 0
        self.reactor = reactor
        self.header_timeout = header_timeout

    def logPrefix(self) -> str:
        # "InboundFactory starting on PORT": the same line as without a balancer.
        return self.wrappedFactory.logPrefix()

    def doStart(self) -> None:
        self.wrappedFactory.doStart()

    def doStop(self) -> None:
        self.wrappedFactory.doStop()

    def buildProtocol(self, addr: IAddress) -> _ProxiedConnection | None:
        ip = _ip(addr)
        if ip is None or not any(ip in network for network in self.allowed_from()):
            self.log.warn(
                "refused {peer}: not in listen_proxy_from (listen_proxy_protocol is on)",
                peer=_describe(addr),
            )
            return None  # Twisted closes the socket without reading or writing
        if self.pending >= self.max_pending():
            self.log.warn("refused {peer}: {count} connections wait for a PROXY header already",
                          peer=_describe(addr), count=self.pending)
            return None
        return _ProxiedConnection(self, addr)

    # policies.ProtocolWrapper reports its lifetime to its factory.
    def registerProtocol(self, connection: _ProxiedConnection) -> None:
        pass

    def unregisterProtocol(self, connection: _ProxiedConnection) -> None:
        pass
