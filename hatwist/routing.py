"""Which way one MX address is reached from a binding (tests: tests/test_routing.py).

Pure: the decision needs the binding's delivery settings, the MX address and the proxy
servers the registry currently calls plumbed, and nothing else, so every rule below is a
row in a table-driven test.

- ``ha_proxy_bypass`` set for the domain, or no ``ha_proxy_server`` at all: one
  :class:`DirectRoute`, from ``bind_address`` when it is set (and of the MX's family).
- Otherwise one :class:`ProxyRoute` per plumbed server, in the order given (the registry
  rotates it to spread load), with the binding's source for the MX address's family.
- A family without a configured source, or no plumbed server: :class:`NoRoute`, whose
  reason names the option or the servers an operator has to look at.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import attrs

from hatwist.config import DeliverySettings, ServerAddress

#: The config key that holds the proxy source address for each IP version.
SOURCE_OPTIONS = {4: "ha_proxy_src_addr", 6: "ha_proxy_ipv6_src_addr"}


@attrs.frozen
class DirectRoute:
    """Plain TCP to the MX, optionally bound to ``bind_address`` first."""

    bind_address: str | None

    def describe(self) -> str:
        return "direct"


@attrs.frozen
class ProxyRoute:
    """Through the HAProxy ``server``, asking it to originate from ``source``."""

    server: ServerAddress
    source: str

    def describe(self) -> str:
        return f"proxy {self.server.text} from {self.source}"


@attrs.frozen
class NoRoute:
    """No way to reach this MX address right now; ``reason`` says what to fix.

    ``waiting_for_proxy`` is True only when a plumbed proxy would have made a route: the
    scheduler then holds the message for the health checker instead of spending a retry.
    """

    reason: str
    temporary: bool = True
    waiting_for_proxy: bool = False


Route = DirectRoute | ProxyRoute


def _binding_name(binding: str | None) -> str:
    return f"binding {binding}" if binding else "this binding"


def choose_routes(
    settings: DeliverySettings,
    address: str,
    plumbed: Sequence[ServerAddress],
    *,
    binding: str | None = None,
) -> tuple[Route, ...] | NoRoute:
    """
    The routes to try, in order, to reach the MX at IP ``address``.

    :param settings: the binding's settings for the destination domain.
    :param address: an IP literal from :class:`hatwist.mx.MXHost`.
    :param plumbed: the binding's proxy servers that are plumbed now, in the order to try
        (``ServerRegistry.plumbed(settings.proxy_servers)``).
    :param binding: the binding's name, for the reasons.
    :raises ValueError: if ``address`` is not an IP literal (MX resolution never yields one).
    """
    version = ipaddress.ip_address(address).version
    if settings.bypass or not settings.proxy_servers:
        bind = settings.bind_address
        if bind is not None and ipaddress.ip_address(bind).version != version:
            return NoRoute(
                f"{_binding_name(binding)} has bind_address {bind}; "
                f"IPv{version} MX address {address} cannot be reached from it"
            )
        return (DirectRoute(bind),)
    source = settings.src_ipv4 if version == 4 else settings.src_ipv6
    if source is None:
        return NoRoute(
            f"{_binding_name(binding)} has no {SOURCE_OPTIONS[version]}; "
            f"IPv{version} MX address {address} cannot go through the proxy"
        )
    wanted = set(settings.proxy_servers)
    usable = [server for server in plumbed if server in wanted]
    if not usable:
        servers = ", ".join(server.text for server in settings.proxy_servers)
        return NoRoute(
            f"no plumbed ha_proxy_server for {_binding_name(binding)} ({servers} unplumbed)",
            waiting_for_proxy=True,
        )
    return tuple(ProxyRoute(server, source) for server in usable)
