# -*- test-case-name: tests.test_endpoint -*-
"""
The client side of the PROXY protocol hop, as an ordinary Twisted endpoint.

:class:`HAProxyClientEndpoint` wraps any endpoint that reaches an HAProxy listening with
``accept-proxy`` and, the moment the connection is made, writes one PROXY header naming the
source IP HAProxy should originate from and the destination it should connect to. The
application protocol (an SMTP client, a health probe) then talks to the destination as if
connected directly: its ``transport.getPeer()`` reports the destination and
``transport.getHost()`` the requested source, because that is the conversation it is in.
``transport.startTLS`` passes straight through, so STARTTLS works end to end.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

import attrs
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import (
    IAddress,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IResolutionReceiver,
    IStreamClientEndpoint,
)
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from zope.interface import implementer

from hatwist.proxy import TLV, proxy_header_bytes

__all__ = [
    "DestinationUnresolvable",
    "HAProxyClientEndpoint",
    "ProxyConnectTimeout",
    "is_numeric_name",
    "tcp_endpoint",
]

#: A last label that is a number, decimal or ``0x`` hex (the same rule as
#: ``hatwist.config.converters``, which cannot import this module).
_NUMERIC_LAST_LABEL = re.compile(r"(?:[0-9]+|0x[0-9a-f]*)\Z", re.IGNORECASE)


class ProxyConnectTimeout(defer.TimeoutError):
    """The proxy could not be reached (destination resolved, TCP connected) in time."""


class DestinationUnresolvable(ValueError):
    """A destination host name has no address of the source address's family."""


def address_family(ip: str) -> int:
    """4 or 6 for an IP literal; ValueError naming the literal otherwise."""
    return ipaddress.ip_address(ip).version


@attrs.frozen
class _Addresses:
    """What the application sees as its two ends of the proxied conversation."""

    host: IAddress
    peer: IAddress


def _tcp_address(ip: str, port: int) -> IAddress:
    cls = IPv6Address if address_family(ip) == 6 else IPv4Address
    return cls("TCP", ip, port)


class _HeaderWriter(ProtocolWrapper):
    """
    Writes the PROXY header as the first and only write of connectionMade.

    One write matters: receivers (Twisted's own parser, older nginx) drop a header split
    across segments. ProtocolWrapper calls our connectionMade before handing itself to the
    wrapped protocol as its transport, so the header always precedes application bytes.
    """

    factory: _HeaderWritingFactory

    def connectionMade(self) -> None:
        self.transport.write(self.factory.header)

    def getPeer(self) -> IAddress:
        return self.factory.addresses.peer

    def getHost(self) -> IAddress:
        return self.factory.addresses.host


class _HeaderWritingFactory(WrappingFactory):
    protocol = _HeaderWriter
    #: Quiet: a factory per connection would log "Starting/Stopping factory" for every
    #: proxied delivery and health check.
    noisy = False

    def __init__(
        self, wrapped: IProtocolFactory, header: bytes, addresses: _Addresses
    ) -> None:
        super().__init__(wrapped)
        self.header = header
        self.addresses = addresses

    def buildProtocol(self, addr: IAddress) -> _HeaderWriter | None:
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return self.protocol(self, wrapped)


@implementer(IStreamClientEndpoint)
class HAProxyClientEndpoint:
    """
    Connect through an HAProxy ``accept-proxy`` listener to ``destination``, originating
    from ``source``.

    :param reactor: provides ``IReactorTime`` (for the timeout) and, when ``destination``
        names a host, ``IReactorPluggableNameResolver``.
    :param proxy: an endpoint that reaches the proxy (TCP4, TCP6, HostnameEndpoint, ...).
    :param source: ``(ip, port)`` written as the header's source; port 0 is usual.
    :param destination: ``(ip_or_host, port)``; a host name is resolved at each connect to
        an address of the source's family (the header cannot mix families). A name whose
        last label is a number (``127.1``, ``010.0.0.1``) is refused with ``ValueError``:
        the resolver would read it as another address (see :func:`is_numeric_name`).
    :param version: PROXY protocol version, 2 (binary, default) or 1 (text).
    :param timeout: seconds allowed for resolving the destination and connecting to the
        proxy; ``None`` leaves it to ``proxy``. Cancelling the Deferred from
        :meth:`connect` aborts cleanly at any stage.
    :param tlvs: v2 TLVs to append to the header.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        proxy: IStreamClientEndpoint,
        source: tuple[str, int],
        destination: tuple[str, int],
        *,
        version: int = 2,
        timeout: float | None = None,
        tlvs: Sequence[TLV] = (),
    ) -> None:
        src_ip, src_port = source
        self._family = address_family(src_ip)
        _refuse_numeric("destination", destination[0])
        if version not in (1, 2):
            raise ValueError(f"version must be 1 or 2, not {version!r}")
        self._reactor = reactor
        self._proxy = proxy
        self._source = (src_ip, int(src_port))
        self._destination = (destination[0], int(destination[1]))
        self._version = version
        self._timeout = timeout
        self._tlvs = tuple(tlvs)
        #: The header for an IP-literal destination, made once: making it here also fails
        #: now, not at connect time, for a header that can never be valid. A host name's
        #: header waits for the address each connect resolves.
        self._header: bytes | None = None
        if is_ip_literal(destination[0]):
            self._header = self._header_for(destination[0])

    def __repr__(self) -> str:
        return (
            f"<HAProxyClientEndpoint via {self._proxy!r} "
            f"src={self._source[0]} dst={self._destination[0]}:{self._destination[1]}>"
        )

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        d = defer.Deferred.fromCoroutine(self._connect(protocolFactory))
        if self._timeout is not None:
            d.addTimeout(self._timeout, self._reactor, onTimeoutCancel=self._timed_out)
        return d

    def _timed_out(self, result: object, timeout: float) -> object:
        raise ProxyConnectTimeout(
            f"could not reach the proxy {self._proxy!r} within {timeout:g}s"
        )

    async def _connect(self, protocolFactory: IProtocolFactory) -> IProtocol:
        dst_host, dst_port = self._destination
        if self._header is not None:
            dst_ip, header = dst_host, self._header
        else:
            dst_ip = await self._resolve(dst_host)
            header = self._header_for(dst_ip)
        addresses = _Addresses(
            host=_tcp_address(*self._source), peer=_tcp_address(dst_ip, dst_port)
        )
        wrapper = await self._proxy.connect(
            _HeaderWritingFactory(protocolFactory, header, addresses)
        )
        return wrapper.wrappedProtocol

    def _header_for(self, dst_ip: str) -> bytes:
        return proxy_header_bytes(
            self._source,
            (dst_ip, self._destination[1]),
            version=self._version,
            tlvs=self._tlvs,
        )

    async def _resolve(self, host: str) -> str:
        wanted = IPv6Address if self._family == 6 else IPv4Address
        receiver = _FirstAddress()
        self._reactor.nameResolver.resolveHostName(
            receiver, host, self._destination[1], addressTypes=[wanted]
        )
        address = await receiver.deferred
        if address is None:
            raise DestinationUnresolvable(
                f"destination {host!r} has no IPv{self._family} address "
                f"(the source {self._source[0]} is IPv{self._family})"
            )
        return address.host


@implementer(IResolutionReceiver)
class _FirstAddress:
    """Collects the first resolved address; fires ``deferred`` when resolution ends."""

    def __init__(self) -> None:
        self.deferred: defer.Deferred[IAddress | None] = defer.Deferred()
        self._first: IAddress | None = None

    def resolutionBegan(self, resolutionInProgress: object) -> None:
        pass

    def addressResolved(self, address: IAddress) -> None:
        if self._first is None:
            self._first = address

    def resolutionComplete(self) -> None:
        if not self.deferred.called:  # it may have been cancelled meanwhile
            self.deferred.callback(self._first)


def is_numeric_name(text: str) -> bool:
    """
    True for a "host name" whose last label is all digits or ``0x`` hex: ``010.0.0.1``,
    ``127.1``, ``0x7f.1``.

    Why: such a name is no IP literal (``ipaddress`` reads only four decimal parts), yet
    ``getaddrinfo`` reads it the way ``inet_aton`` does -- ``010`` as octal 8, ``127.1`` as
    127.0.0.1 -- so it would silently reach an address nobody wrote. No real host name
    ends in a numeric label (RFC 3696 section 2), so refusing them loses nothing.
    """
    if is_ip_literal(text):
        return False
    last = text.rstrip(".").rpartition(".")[2]
    return bool(_NUMERIC_LAST_LABEL.match(last))


def _refuse_numeric(what: str, host: str) -> None:
    if is_numeric_name(host):
        raise ValueError(
            f"{what} {host!r} is not a host name (its last label is a number) and not a"
            " dotted-quad IP address either; the resolver would read it as some other address"
        )


def is_ip_literal(text: str) -> bool:
    """True for an IPv4 or IPv6 literal (no brackets, no port)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def tcp_endpoint(
    reactor: object, host: str, port: int, *, timeout: float = 30, bind: str | None = None
) -> IStreamClientEndpoint:
    """
    A plain TCP client endpoint to ``host``:``port`` (the proxy an
    :class:`HAProxyClientEndpoint` wraps, or an MX reached directly), bound to ``bind``
    when set.

    An IP literal gets ``TCP4ClientEndpoint`` or ``TCP6ClientEndpoint``, which skip the
    resolver and its thread pool; a host name gets ``HostnameEndpoint``, which resolves it
    again at every connect, so a proxy whose address changed is found without a restart.
    A numeric "name" such as ``127.1`` raises ``ValueError`` (:func:`is_numeric_name`).
    """
    bind_address = (bind, 0) if bind else None
    _refuse_numeric("host", host)
    if not is_ip_literal(host):
        return HostnameEndpoint(reactor, host, port, timeout=timeout, bindAddress=bind_address)
    cls = TCP6ClientEndpoint if address_family(host) == 6 else TCP4ClientEndpoint
    return cls(reactor, host, port, timeout=timeout, bindAddress=bind_address)
