# -*- test-case-name: tests.delivery.test_attempt_rig -*-
"""
The client endpoint that carries a route to one MX address: plain TCP (bound to the
route's ``bind_address`` when set), or TCP to the HAProxy server wrapped in
:class:`~hatwist.endpoint.HAProxyClientEndpoint`, whose PROXY header asks HAProxy to
originate from the route's source. Building an endpoint connects nothing.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint

from hatwist.endpoint import HAProxyClientEndpoint
from hatwist.routing import DirectRoute, Route


def _tcp_endpoint(
    reactor: Any, host: str, port: int, timeout: float, bind: str | None = None
) -> IStreamClientEndpoint:
    endpoint = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
    bind_address = (bind, 0) if bind else None
    return endpoint(reactor, host, port, timeout=timeout, bindAddress=bind_address)


def route_endpoint(
    reactor: Any, route: Route, address: str, port: int, timeout: float
) -> IStreamClientEndpoint:
    """
    An endpoint to ``address``:``port`` over ``route`` whose connect gives up after
    ``timeout`` seconds (for a proxied route: reaching the proxy, one deadline).

    A proxy configured by host name goes through ``HostnameEndpoint``, so the name is
    resolved again at each connect; an IP literal needs no lookup.
    """
    if isinstance(route, DirectRoute):
        return _tcp_endpoint(reactor, address, port, timeout, route.bind_address)
    server = route.server
    if server.ip_version is None:
        proxy: IStreamClientEndpoint = HostnameEndpoint(
            reactor, server.host, server.port, timeout=timeout
        )
    else:
        proxy = _tcp_endpoint(reactor, server.host, server.port, timeout)
    return HAProxyClientEndpoint(
        reactor,
        proxy,
        source=(route.source, 0),
        destination=(address, port),
        timeout=timeout,
    )
