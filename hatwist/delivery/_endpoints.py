# -*- test-case-name: tests.delivery.test_attempt_rig -*-
"""
The client endpoint that carries a route to one MX address: plain TCP (bound to the
route's ``bind_address`` when set), or TCP to the HAProxy server wrapped in
:class:`~hatwist.endpoint.HAProxyClientEndpoint`, whose PROXY header asks HAProxy to
originate from the route's source. Building an endpoint connects nothing.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IStreamClientEndpoint

from hatwist.endpoint import HAProxyClientEndpoint, tcp_endpoint
from hatwist.routing import DirectRoute, Route


def route_endpoint(
    reactor: Any, route: Route, address: str, port: int, timeout: float
) -> IStreamClientEndpoint:
    """
    An endpoint to ``address``:``port`` over ``route`` whose connect gives up after
    ``timeout`` seconds (for a proxied route: reaching the proxy, one deadline).
    """
    if isinstance(route, DirectRoute):
        return tcp_endpoint(reactor, address, port, timeout=timeout, bind=route.bind_address)
    return HAProxyClientEndpoint(
        reactor,
        tcp_endpoint(reactor, route.server.host, route.server.port, timeout=timeout),
        source=(route.source, 0),
        destination=(address, port),
        timeout=timeout,
    )
