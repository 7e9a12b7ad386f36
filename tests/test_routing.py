"""Tests for hatwist.routing: one row per routing rule, no I/O."""

from __future__ import annotations

import attrs
import pytest

from hatwist.config import DeliverySettings, ServerAddress, TLSMode
from hatwist.routing import DirectRoute, NoRoute, ProxyRoute, choose_routes

P1 = ServerAddress("10.0.0.1", 8085)
P2 = ServerAddress("10.0.0.2", 8085)
P6 = ServerAddress("fd00::1", 8085)

BASE = DeliverySettings(
    proxy_servers=(P1, P2),
    src_ipv4="192.0.2.10",
    src_ipv6="2001:db8::10",
    bypass=False,
    remote_smtp_port=25,
    ehlo_hostname=None,
    bind_address=None,
    tls=TLSMode.IFAVAILABLE,
    retry_interval=1800,
    message_expiration=432000,
    max_connections=10,
    max_messages_per_connection=100,
    connect_timeout=30,
    smtp_timeout=300,
)


def settings(**changes) -> DeliverySettings:
    return attrs.evolve(BASE, **changes)


ROUTES = [
    pytest.param(
        settings(),
        "198.51.100.25",
        [P1, P2],
        (ProxyRoute(P1, "192.0.2.10"), ProxyRoute(P2, "192.0.2.10")),
        id="ipv4 mx uses the ipv4 source through every plumbed server",
    ),
    pytest.param(
        settings(),
        "2001:db8::25",
        [P2, P1],
        (ProxyRoute(P2, "2001:db8::10"), ProxyRoute(P1, "2001:db8::10")),
        id="ipv6 mx uses the ipv6 source, in the registry's rotated order",
    ),
    pytest.param(
        settings(),
        "198.51.100.25",
        [P2],
        (ProxyRoute(P2, "192.0.2.10"),),
        id="unplumbed servers are left out",
    ),
    pytest.param(
        settings(),
        "198.51.100.25",
        [P1, P6],
        (ProxyRoute(P1, "192.0.2.10"),),
        id="plumbed servers of other bindings are left out",
    ),
    pytest.param(
        settings(bypass=True),
        "198.51.100.25",
        [P1, P2],
        (DirectRoute(None),),
        id="bypass goes direct even with plumbed servers",
    ),
    pytest.param(
        settings(bypass=True, bind_address="192.0.2.30", src_ipv4=None),
        "198.51.100.25",
        [],
        (DirectRoute("192.0.2.30"),),
        id="bypass goes direct from bind_address and needs no source",
    ),
    pytest.param(
        settings(proxy_servers=(), bind_address="192.0.2.30"),
        "198.51.100.25",
        [],
        (DirectRoute("192.0.2.30"),),
        id="no proxy servers configured means direct",
    ),
]


@pytest.mark.parametrize(("delivery", "address", "plumbed", "expected"), ROUTES)
def test_routes(delivery, address, plumbed, expected):
    assert choose_routes(delivery, address, plumbed, binding="b1") == expected


NO_ROUTES = [
    pytest.param(
        settings(src_ipv6=None),
        "2001:db8::25",
        [P1, P2],
        "binding b1 has no ha_proxy_ipv6_src_addr; "
        "IPv6 MX address 2001:db8::25 cannot go through the proxy",
        id="ipv6 mx without an ipv6 source",
    ),
    pytest.param(
        settings(src_ipv4=None),
        "198.51.100.25",
        [P1, P2],
        "binding b1 has no ha_proxy_src_addr; "
        "IPv4 MX address 198.51.100.25 cannot go through the proxy",
        id="ipv4 mx without an ipv4 source",
    ),
    pytest.param(
        settings(),
        "198.51.100.25",
        [],
        "no plumbed ha_proxy_server for binding b1 (10.0.0.1:8085, 10.0.0.2:8085 unplumbed)",
        id="no plumbed server",
    ),
    pytest.param(
        settings(proxy_servers=(P1,)),
        "198.51.100.25",
        [P2],
        "no plumbed ha_proxy_server for binding b1 (10.0.0.1:8085 unplumbed)",
        id="only another binding's server is plumbed",
    ),
    pytest.param(
        settings(bypass=True, bind_address="192.0.2.30"),
        "2001:db8::25",
        [P1],
        "binding b1 has bind_address 192.0.2.30; "
        "IPv6 MX address 2001:db8::25 cannot be reached from it",
        id="bypass with a bind_address of the other family",
    ),
]


@pytest.mark.parametrize(("delivery", "address", "plumbed", "reason"), NO_ROUTES)
def test_no_route_names_what_to_fix(delivery, address, plumbed, reason):
    route = choose_routes(delivery, address, plumbed, binding="b1")
    assert isinstance(route, NoRoute)
    assert route.reason == reason
    assert route.temporary is True
    # Only a missing plumbed proxy is worth waiting for; a missing option is not.
    assert route.waiting_for_proxy is reason.startswith("no plumbed")


def test_route_descriptions_for_logs():
    assert DirectRoute("192.0.2.30").describe() == "direct"
    assert ProxyRoute(ServerAddress("fd00::1", 8085), "2001:db8::10").describe() == (
        "proxy [fd00::1]:8085 from 2001:db8::10"
    )
    assert (
        ProxyRoute(
            ServerAddress("proxy.example", 8085, "proxy.example:8085"), "192.0.2.10"
        ).describe()
        == "proxy proxy.example:8085 from 192.0.2.10"
    )


def test_reason_without_a_binding_name_still_reads():
    result = choose_routes(settings(src_ipv6=None), "2001:db8::25", [P1])
    assert isinstance(result, NoRoute)
    assert result.reason.startswith("this binding has no ha_proxy_ipv6_src_addr")


def test_address_must_be_an_ip_literal():
    with pytest.raises(ValueError):
        choose_routes(settings(), "mx.example.test", [P1])


ROTATION_CONFIG = """
binding b1 {
  ha_proxy_server = "127.0.0.1:5000 127.0.0.2:5000"
  ha_proxy_src_addr = "127.0.0.9"
  ha_proxy_ipv6_src_addr = "fd00::9"
  max_messages_per_connection = 1
}
"""


def test_proxy_rotation_spreads_each_family_over_the_proxies_attempt_by_attempt():
    """The delivery agent with the real registry: every attempt to a dual-stack MX
    whose IPv4 address is down asks for both families' proxies; each family must still
    alternate over the two proxies (issue 12: IPv6 always went through one)."""
    from twisted.internet import task

    from hatwist.config import parse_config
    from hatwist.delivery import ConnectFailed
    from hatwist.delivery.attempt import DeliveryAgent
    from hatwist.health import ServerRegistry
    from hatwist.mx import MXHost
    from tests.delivery.test_attempt import Net, message, run

    clock = task.Clock()
    net = Net(clock)
    net.hosts["ds.test"] = (MXHost("mx.ds.test", 10, ("127.0.0.21", "fd00::21")),)
    net.hosts["v4.test"] = (MXHost("mx.v4.test", 10, ("127.0.0.20",)),)
    net.behaviour["127.0.0.21"] = ConnectFailed("IPv4 path down")
    p1, p2 = ServerAddress("127.0.0.1", 5000), ServerAddress("127.0.0.2", 5000)
    registry = ServerRegistry([p1, p2], success_threshold=1, failure_threshold=1)
    agent = DeliveryAgent(
        parse_config(ROTATION_CONFIG),
        registry,
        net,
        reactor=clock,
        open_session=net.open_session,
        default_ehlo_hostname="relay.test",
    )
    try:
        v6_routes = [
            run(agent, message("ds.test", n=n, rcpts=("a@ds.test",))).route for n in range(4)
        ]
        v4_routes = [
            run(agent, message("v4.test", n=n, rcpts=("a@v4.test",))).route for n in range(4)
        ]
    finally:
        agent.close()
    assert v6_routes == [
        "proxy 127.0.0.1:5000 from fd00::9",
        "proxy 127.0.0.2:5000 from fd00::9",
    ] * 2
    assert v4_routes == [
        "proxy 127.0.0.1:5000 from 127.0.0.9",
        "proxy 127.0.0.2:5000 from 127.0.0.9",
    ] * 2
