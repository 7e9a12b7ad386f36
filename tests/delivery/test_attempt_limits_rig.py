"""The bounds of one delivery attempt against real sockets and the in-process DNS
(issue 11, item 5): a domain that publishes many MX hosts, each with several addresses,
all on loopback (127.1.H.A), every one of them listening.

The exact instants are pinned with a ``task.Clock`` in test_attempt_limits.py; here the
point is that the real resolver, endpoints and client obey the same bounds.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import protocol
from twisted.internet.task import deferLater

from hatwist.config import parse_config
from hatwist.delivery import Envelope
from hatwist.delivery.attempt import DeliveryAgent, OutboundMessage
from hatwist.health import ServerRegistry
from hatwist.mx import MAX_MX_HOSTS, MXResolver, build_resolver

from .test_client_support import within

pytestmark = pytest.mark.integration

HOSTS, PER_HOST = 20, 3


class _Peer(protocol.Protocol):
    def connectionMade(self) -> None:
        self.address = self.transport.getHost().host
        self.factory.connected.append(self.address)
        if self.factory.greeting is not None:
            self.transport.write(self.factory.greeting)
            self.transport.loseConnection()

    def connectionLost(self, reason) -> None:
        self.factory.lost.append(self.address)


class HostileMX(protocol.Factory):
    """Listens on every address of the hostile domain, on one port; records connects.
    With ``greeting`` it says that and hangs up; without, it never says anything."""

    protocol = _Peer

    def __init__(self, greeting: bytes | None) -> None:
        self.greeting = greeting
        self.connected: list[str] = []
        self.lost: list[str] = []
        self.ports: list = []

    def listen(self, reactor, addresses) -> int:
        first = reactor.listenTCP(0, self, interface=addresses[0])
        number = first.getHost().port
        self.ports = [first] + [
            reactor.listenTCP(number, self, interface=a) for a in addresses[1:]
        ]
        return number

    async def stop(self) -> None:
        for port in self.ports:
            await port.stopListening()


def _publish(dns_server) -> list[str]:
    dns_server.add_mx("hostile.test", [(10 + h, f"mx{h:02d}.hostile.test") for h in range(HOSTS)])
    addresses = []
    for h in range(HOSTS):
        for a in range(1, PER_HOST + 1):
            dns_server.add_a(f"mx{h:02d}.hostile.test", f"127.1.{h}.{a}")
            addresses.append(f"127.1.{h}.{a}")
    return addresses


async def _attempt(reactor, dns_server, mx: HostileMX, keys: str):
    port = mx.listen(reactor, _publish(dns_server))
    config = parse_config(
        f'binding b1 {{\n  ha_proxy_bypass = "true"\n  remote_smtp_port = "{port}"\n'
        f'  ehlo_hostname = "relay.test"\n  tls = "no"\n{keys}}}\n'
    )
    resolver = MXResolver(build_resolver(dns_server.address, reactor=reactor), reactor=reactor)
    registry = ServerRegistry((), success_threshold=1, failure_threshold=1)
    agent = DeliveryAgent(config, registry, resolver, reactor=reactor)
    message = OutboundMessage(
        id="m1", binding="b1", domain="hostile.test",
        envelope=Envelope("s@relay.test", ("r@hostile.test",)), content=b"Subject: x\r\n\r\nx\r\n",
    )  # fmt: skip
    try:
        return await within(reactor, agent.deliver(message), 20)
    finally:
        await agent.close()
        resolver.close()


@pytest_twisted.ensureDeferred
async def test_only_mx_address_limit_of_sixty_listening_addresses_are_tried(reactor, dns_server):
    mx = HostileMX(b"421 4.3.2 busy, come back later\r\n")
    try:
        result = await _attempt(reactor, dns_server, mx, "")  # the default limit: 5
    finally:
        await mx.stop()
    assert len(mx.connected) == 5
    # Best first: every address of the best host, then the next host's.
    assert {a.rsplit(".", 1)[0] for a in mx.connected} == {"127.1.0", "127.1.1"}
    assert result.recipients[0].code == 451
    # Only the best MAX_MX_HOSTS hosts are looked up at all (3 addresses each here).
    assert MAX_MX_HOSTS == 10
    assert "mx_address_limit 5 reached, 25 more not tried" in result.error


@pytest_twisted.ensureDeferred
async def test_the_attempt_deadline_holds_against_silent_mx_hosts(reactor, dns_server):
    mx = HostileMX(None)  # accepts, never greets: each would cost the 30 s connect deadline
    keys = '  connect_timeout = "30"\n  attempt_timeout = "1"\n'
    try:
        started = reactor.seconds()
        result = await _attempt(reactor, dns_server, mx, keys)
        elapsed = reactor.seconds() - started
        while not mx.lost:  # the abort reaches the listener a moment later
            await deferLater(reactor, 0.01)
    finally:
        await mx.stop()
    assert result.error.startswith("attempt deadline of 1s passed at mx00.hostile.test [127.1.0.")
    assert result.recipients[0].code == 451
    assert len(mx.connected) == 1 and mx.lost == mx.connected  # aborted, not left open
    assert elapsed < 30  # ended by the attempt's deadline, not by the connect deadline
