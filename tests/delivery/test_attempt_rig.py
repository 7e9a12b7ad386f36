"""End-to-end tests for hatwist.delivery.attempt on the real rig.

Real HAProxy (``usesrc clientip``) on 127.0.0.1, the recording SMTP sink on 127.0.0.20,
the in-process authoritative DNS server, and the real client: the sink's view of the peer
address proves which source IP and route a message took.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer

from hatwist.config import parse_config
from hatwist.delivery import Envelope
from hatwist.delivery.attempt import DeliveryAgent, OutboundMessage
from hatwist.health import ServerRegistry
from hatwist.mx import MXResolver, build_resolver
from tests.rig.sink import SILENT, SMTPSink

pytestmark = pytest.mark.integration

#: Deadline on every awaited Deferred: a broken test fails instead of hanging.
DEADLINE = 20.0

PROXY_SOURCE = "127.0.0.9"
BIND_ADDRESS = "127.0.0.30"
RCPTS = ("a@example.test", "b@example.test")


def config_text(haproxy, sink, extra: str = "", tls: str = "no") -> str:
    return f"""
binding b1 {{
  ha_proxy_server = "{haproxy.server_text}"
  ha_proxy_src_addr = "{PROXY_SOURCE}"
  remote_smtp_port = "{sink.port}"
  ehlo_hostname = "relay.hatwist.test"
  tls = "{tls}"
  connect_timeout = "2"
  smtp_timeout = "5"
  max_messages_per_connection = "3"
  Domain bypass.test {{
    ha_proxy_bypass = "true"
    bind_address = "{BIND_ADDRESS}"
  }}
{extra}
}}
"""


@pytest_twisted.async_yield_fixture
async def agent(reactor, haproxy, smtp_sink, dns_server):
    config = parse_config(config_text(haproxy, smtp_sink))
    registry = ServerRegistry(config.proxy_servers, success_threshold=1, failure_threshold=1)
    resolver = MXResolver(build_resolver(dns_server.address, reactor=reactor), reactor=reactor)
    delivery = DeliveryAgent(config, registry, resolver, reactor=reactor)
    try:
        yield delivery
    finally:
        await delivery.close()
        await smtp_sink.wait_closed(timeout=DEADLINE)


def message(domain="example.test", n=1, rcpts=RCPTS) -> OutboundMessage:
    return OutboundMessage(
        id=f"m{n}",
        binding="b1",
        domain=domain,
        envelope=Envelope("sender@hatwist.test", rcpts),
        content=f"Subject: test {n}\r\n\r\nbody {n}\r\n".encode(),
    )


def deliver(reactor, agent, msg):
    return agent.deliver(msg).addTimeout(DEADLINE, reactor)


def one_mx(dns_server, domain="example.test", address="127.0.0.20"):
    dns_server.add_mx(domain, [(10, f"mx.{domain}")])
    dns_server.add_a(f"mx.{domain}", address)


@pytest_twisted.ensureDeferred
async def test_proxied_message_arrives_from_the_binding_source(
    reactor, agent, smtp_sink, dns_server
):
    one_mx(dns_server)
    result = await deliver(reactor, agent, message())
    assert result.addresses("delivered") == RCPTS
    assert result.route.startswith("proxy 127.0.0.1:") and result.route.endswith(PROXY_SOURCE)
    assert (result.mx_host, result.mx_address) == ("mx.example.test", "127.0.0.20")
    [received] = smtp_sink.messages
    assert received.peer[0] == PROXY_SOURCE
    assert received.helo == "relay.hatwist.test"
    assert received.rcpt_tos == RCPTS
    assert b"body 1" in received.data


@pytest_twisted.ensureDeferred
async def test_bypassed_domain_arrives_from_bind_address(reactor, agent, smtp_sink, dns_server):
    one_mx(dns_server, "bypass.test")
    result = await deliver(reactor, agent, message("bypass.test", rcpts=("x@bypass.test",)))
    assert result.route == "direct"
    assert result.addresses("delivered") == ("x@bypass.test",)
    [received] = smtp_sink.messages
    assert received.peer[0] == BIND_ADDRESS


@pytest_twisted.ensureDeferred
async def test_ipv6_only_mx_with_only_an_ipv4_source_fails_with_the_reason(
    reactor, agent, smtp_sink, dns_server
):
    dns_server.add_mx("example.test", [(10, "mx6.example.test")])
    dns_server.add_aaaa("mx6.example.test", "fd00::20")
    result = await deliver(reactor, agent, message())
    assert result.addresses("temporary") == RCPTS
    assert "binding b1 has no ha_proxy_ipv6_src_addr" in result.error
    assert "IPv6 MX address fd00::20 cannot go through the proxy" in result.error
    assert smtp_sink.sessions == []


@pytest_twisted.ensureDeferred
async def test_null_mx_bounces_with_556(reactor, agent, smtp_sink, dns_server):
    dns_server.add_mx("example.test", [(0, ".")])
    result = await deliver(reactor, agent, message())
    assert [r.code for r in result.recipients] == [556, 556]
    assert result.recipients[0].response.startswith("5.1.10 ")
    assert "example.test" in result.error


@pytest_twisted.ensureDeferred
async def test_nxdomain_bounces(reactor, agent, smtp_sink, dns_server):
    result = await deliver(reactor, agent, message("nowhere.test", rcpts=("x@nowhere.test",)))
    assert result.addresses("permanent") == ("x@nowhere.test",)
    assert "nowhere.test" in result.error


@pytest_twisted.ensureDeferred
async def test_per_recipient_4xx_and_5xx(reactor, agent, smtp_sink, dns_server):
    one_mx(dns_server)
    rcpts = ("ok@example.test", "later@example.test", "gone@example.test")
    smtp_sink.recipient_replies["later@example.test"] = (451, "4.2.1 mailbox busy")
    smtp_sink.recipient_replies["gone@example.test"] = (550, "5.1.1 no such user")
    result = await deliver(reactor, agent, message(rcpts=rcpts))
    assert result.addresses("delivered") == ("ok@example.test",)
    assert result.addresses("temporary") == ("later@example.test",)
    assert result.addresses("permanent") == ("gone@example.test",)
    codes = {r.address: r.code for r in result.recipients}
    assert codes == {"ok@example.test": 250, "later@example.test": 451, "gone@example.test": 550}
    assert result.error is None
    [received] = smtp_sink.messages
    assert received.rcpt_tos == ("ok@example.test",)


@pytest_twisted.ensureDeferred
async def test_first_mx_refusing_connections_falls_through_to_the_second(
    reactor, agent, smtp_sink, dns_server
):
    # Nothing listens on 127.0.0.21: HAProxy's connect is refused and it closes our side.
    dns_server.add_mx("example.test", [(10, "mx1.example.test"), (20, "mx2.example.test")])
    dns_server.add_a("mx1.example.test", "127.0.0.21")
    dns_server.add_a("mx2.example.test", "127.0.0.20")
    result = await deliver(reactor, agent, message())
    assert result.addresses("delivered") == RCPTS
    assert (result.mx_host, result.mx_address) == ("mx2.example.test", "127.0.0.20")
    assert smtp_sink.messages[0].peer[0] == PROXY_SOURCE


@pytest_twisted.ensureDeferred
async def test_every_mx_failing_reports_proxy_connected_no_greeting(
    reactor, agent, smtp_sink, dns_server
):
    one_mx(dns_server, address="127.0.0.21")
    result = await deliver(reactor, agent, message())
    assert result.addresses("temporary") == RCPTS
    assert "mx.example.test [127.0.0.21]" in result.error
    assert "proxy connected, no greeting" in result.error


@pytest_twisted.ensureDeferred
async def test_a_greeting_that_never_comes_moves_on_to_the_next_mx(
    reactor, agent, smtp_sink, dns_server
):
    silent = await SMTPSink.start(reactor, host="127.0.0.22", port=smtp_sink.port)
    silent.greeting = SILENT
    try:
        dns_server.add_mx("example.test", [(10, "mx1.example.test"), (20, "mx2.example.test")])
        dns_server.add_a("mx1.example.test", "127.0.0.22")
        dns_server.add_a("mx2.example.test", "127.0.0.20")
        result = await deliver(reactor, agent, message())
        assert result.mx_address == "127.0.0.20"
        assert result.addresses("delivered") == RCPTS
        assert len(silent.sessions) == 1 and silent.messages == []
        assert len(result.no_greeting) == 1
    finally:
        await silent.stop()


@pytest_twisted.ensureDeferred
async def test_a_server_dropping_mid_data_stops_the_attempt(reactor, agent, smtp_sink, dns_server):
    other = await SMTPSink.start(reactor, host="127.0.0.22", port=smtp_sink.port)
    try:
        dns_server.add_mx("example.test", [(10, "mx1.example.test"), (20, "mx2.example.test")])
        dns_server.add_a("mx1.example.test", "127.0.0.20")
        dns_server.add_a("mx2.example.test", "127.0.0.22")
        smtp_sink.drop_in_data = True
        result = await deliver(reactor, agent, message())
        assert result.addresses("temporary") == RCPTS
        assert "mx1.example.test [127.0.0.20]" in result.error
        assert other.sessions == []
    finally:
        await other.stop()


@pytest_twisted.ensureDeferred
async def test_several_messages_reuse_one_session(reactor, agent, smtp_sink, dns_server):
    one_mx(dns_server)
    for n in range(1, 4):
        result = await deliver(reactor, agent, message(n=n))
        assert result.addresses("delivered") == RCPTS
    assert len(smtp_sink.messages) == 3
    assert len(smtp_sink.sessions) == 1
    # max_messages_per_connection = 3: the session was closed after the third message.
    await smtp_sink.wait_closed(timeout=DEADLINE)
    result = await deliver(reactor, agent, message(n=4))
    assert result.addresses("delivered") == RCPTS
    assert len(smtp_sink.sessions) == 2


@pytest_twisted.ensureDeferred
async def test_concurrent_messages_each_get_a_session(reactor, agent, smtp_sink, dns_server):
    one_mx(dns_server)
    results = await defer.gatherResults([deliver(reactor, agent, message(n=n)) for n in range(3)])
    assert all(r.addresses("delivered") == RCPTS for r in results)
    assert len(smtp_sink.messages) == 3
