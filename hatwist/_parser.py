# -*- test-case-name: tests.test_parser -*-
"""
The ``haproxy:`` *client* endpoint string, so any Twisted program can reach a destination
through a PROXY-protocol hop with ``clientFromString``::

    haproxy:PROXYHOST:PROXYPORT:src=SRC_IP:dst=DST:dport=PORT
        [:sport=N][:version=1|2][:timeout=SECONDS][:bindAddress=IP]

``PROXYHOST`` is an IPv4 literal, an IPv6 literal with every colon escaped
(``\\:\\:1``), or a host name. ``dst`` is an IP literal or a host name resolved at connect
time to an address of ``src``'s family. Every mistake is a ValueError at parse time that
names the argument, because an endpoint string usually comes from a config file and the
operator needs to know which part to fix.

Twisted's own ``haproxy:`` prefix is a *server* parser; this client parser shares the
prefix without clashing.
"""

from __future__ import annotations

import ipaddress
import re

from twisted.internet.interfaces import IStreamClientEndpointStringParserWithReactor
from twisted.plugin import IPlugin
from zope.interface import implementer

from hatwist.endpoint import HAProxyClientEndpoint, is_ip_literal, is_numeric_name, tcp_endpoint

__all__ = ["HAProxyClientParser"]

_REQUIRED = ("src", "dst", "dport")
_OPTIONAL = ("sport", "version", "timeout", "bindAddress")
# ``\Z``, not ``$``: ``$`` also matches before a trailing newline, which would let
# ``dst=mx.example\n`` through to the resolver.
_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?\Z"
)
# Only ASCII digits: ``int()`` also takes ``2_5``, `` 25 `` and other scripts' digits.
_DIGITS = re.compile(r"[0-9]{1,5}\Z")
# Plain decimal seconds: ``float()`` also takes ``inf``, ``nan``, ``1e9`` and ``1_0``.
_SECONDS = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?\Z")


def _ip(name: str, value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"haproxy: {name}={value!r} is not an IP address") from None


def _port(name: str, value: str, minimum: int = 1) -> int:
    """A port in ``minimum``-65535; only a source port may be 0 (the kernel picks it)."""
    if not _DIGITS.match(value):
        raise ValueError(f"haproxy: {name}={value!r} is not a port number")
    port = int(value)
    if not minimum <= port <= 65535:
        raise ValueError(f"haproxy: {name}={port} is out of range {minimum}-65535")
    return port


def _host(name: str, value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOSTNAME.match(value):
            raise ValueError(
                f"haproxy: {name}={value!r} is neither an IP address nor a host name"
            ) from None
        if is_numeric_name(value):
            raise ValueError(
                f"haproxy: {name}={value!r} is not a host name (its last label is a number)"
                " and not an IP address in dotted-quad form either; write the address"
                " as four decimal numbers, e.g. 10.0.0.1"
            ) from None
    return value


def _timeout(value: str) -> float:
    if not _SECONDS.match(value):
        raise ValueError(
            f"haproxy: timeout={value!r} is not a number of seconds (e.g. 30 or 2.5)"
        )
    timeout = float(value)
    if not timeout > 0:
        raise ValueError(f"haproxy: timeout={value!r} must be greater than 0")
    return timeout


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class HAProxyClientParser:
    """Parses ``haproxy:`` client endpoint strings into :class:`HAProxyClientEndpoint`."""

    prefix = "haproxy"

    def parseStreamClient(
        self, reactor: object, *args: str, **kwargs: str
    ) -> HAProxyClientEndpoint:
        if len(args) != 2:
            raise ValueError(
                "haproxy: expected haproxy:PROXYHOST:PROXYPORT:src=IP:dst=HOST:dport=PORT "
                f"(PROXYHOST and PROXYPORT positional), got {len(args)} positional "
                f"argument(s) {list(args)!r}; escape IPv6 colons as \\:"
            )
        unknown = sorted(set(kwargs) - set(_REQUIRED) - set(_OPTIONAL))
        if unknown:
            raise ValueError(
                f"haproxy: unknown option(s) {', '.join(unknown)}; "
                f"known: {', '.join(_REQUIRED + _OPTIONAL)}"
            )
        missing = [name for name in _REQUIRED if name not in kwargs]
        if missing:
            raise ValueError(f"haproxy: missing required option(s) {', '.join(missing)}")

        proxy_host = _host("PROXYHOST", args[0])
        proxy_port = _port("PROXYPORT", args[1])
        src = _ip("src", kwargs["src"])
        dst = _host("dst", kwargs["dst"])
        if is_ip_literal(dst) and ipaddress.ip_address(dst).version != src.version:
            raise ValueError(
                f"haproxy: src={src} is IPv{src.version} but dst={dst} is not; "
                "a PROXY header cannot mix address families"
            )
        dport = _port("dport", kwargs["dport"])
        sport = _port("sport", kwargs.get("sport", "0"), minimum=0)
        version = kwargs.get("version", "2")
        if version not in ("1", "2"):
            raise ValueError(f"haproxy: version={version!r} must be 1 or 2")
        timeout = _timeout(kwargs.get("timeout", "30"))
        bind = kwargs.get("bindAddress")
        if bind is not None:
            bind = str(_ip("bindAddress", bind))

        proxy = tcp_endpoint(reactor, proxy_host, proxy_port, timeout=timeout, bind=bind)
        return HAProxyClientEndpoint(
            reactor,
            proxy,
            source=(str(src), sport),
            destination=(dst, dport),
            version=int(version),
            timeout=timeout,
        )

