"""End-to-end tests for ``tls`` in hatwist.delivery.attempt on the real rig.

Real HAProxy, the in-process DNS server and the sink on 127.0.0.20 offering STARTTLS
(``break_starttls``: it says 220 to STARTTLS, then resets the handshake). Under
``ifavailable`` the message must still arrive, over a second, plaintext session through
the same proxy and source; under ``required`` it must not arrive at all.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.logger import formatEvent, globalLogPublisher

from hatwist.config import parse_config
from hatwist.delivery.attempt import DeliveryAgent
from hatwist.health import ServerRegistry
from hatwist.mx import MXResolver, build_resolver

from .test_attempt_rig import DEADLINE, PROXY_SOURCE, RCPTS, config_text, deliver, message, one_mx

pytestmark = pytest.mark.integration

EHLO = "EHLO relay.hatwist.test"


@pytest_twisted.async_yield_fixture
async def make_agent(reactor, haproxy, tls_smtp_sink, dns_server):
    """``make_agent(tls)``: a DeliveryAgent for binding b1 with that ``tls`` setting,
    trusting the sink's CA; closed (and the sink's sessions awaited) after the test."""
    agents = []

    def make(tls: str) -> DeliveryAgent:
        config = parse_config(config_text(haproxy, tls_smtp_sink, tls=tls))
        registry = ServerRegistry(config.proxy_servers, success_threshold=1, failure_threshold=1)
        resolver = MXResolver(build_resolver(dns_server.address, reactor=reactor), reactor=reactor)
        agent = DeliveryAgent(
            config, registry, resolver, reactor=reactor, trust_root=tls_smtp_sink.ca.trust_root()
        )
        agents.append(agent)
        return agent

    try:
        yield make
    finally:
        for agent in agents:
            await agent.close()
        await tls_smtp_sink.wait_closed(timeout=DEADLINE)


@pytest.fixture
def attempt_events():
    events = []

    def observe(event):
        if event.get("hatwist_event") == "delivery_attempt":
            events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


@pytest_twisted.ensureDeferred
async def test_ifavailable_delivers_in_plaintext_after_the_mx_reset_the_handshake(
    reactor, make_agent, tls_smtp_sink, dns_server, attempt_events
):
    sink = tls_smtp_sink
    sink.break_starttls = True
    one_mx(dns_server)
    agent = make_agent("ifavailable")
    result = await deliver(reactor, agent, message())
    assert result.addresses("delivered") == RCPTS
    assert result.route.endswith(PROXY_SOURCE) and result.mx_address == "127.0.0.20"
    # Two sessions through HAProxy from the binding's source: TLS tried, then plaintext.
    first, second = sink.sessions
    assert first.commands == [EHLO, "STARTTLS"]
    assert second.commands[0] == EHLO and "STARTTLS" not in second.commands
    assert {s.peer[0] for s in sink.sessions} == {PROXY_SOURCE}
    [received] = sink.messages
    assert not received.tls and b"body 1" in received.data
    assert result.tls_skipped.startswith("STARTTLS failed (TLS handshake failed")
    assert result.tls_skipped.endswith("; retried in plaintext")
    [event] = attempt_events
    assert event["tls_skipped"] == result.tls_skipped
    assert f"; TLS skipped: {result.tls_skipped}" in formatEvent(event)


@pytest_twisted.ensureDeferred
async def test_the_plaintext_session_carries_the_next_message_without_a_new_handshake(
    reactor, make_agent, tls_smtp_sink, dns_server
):
    sink = tls_smtp_sink
    sink.break_starttls = True
    one_mx(dns_server)
    agent = make_agent("ifavailable")
    first = await deliver(reactor, agent, message(n=1))
    second = await deliver(reactor, agent, message(n=2))
    assert second.addresses("delivered") == RCPTS
    assert second.tls_skipped == first.tls_skipped
    assert len(sink.sessions) == 2 and len(sink.sessions[1].messages) == 2


@pytest_twisted.ensureDeferred
async def test_ifavailable_uses_tls_when_the_handshake_works(
    reactor, make_agent, tls_smtp_sink, dns_server
):
    one_mx(dns_server)
    result = await deliver(reactor, make_agent("ifavailable"), message())
    assert result.addresses("delivered") == RCPTS
    assert result.tls_skipped is None
    assert len(tls_smtp_sink.sessions) == 1 and tls_smtp_sink.messages[0].tls


@pytest_twisted.ensureDeferred
async def test_required_fails_temporarily_and_never_sends_in_plaintext(
    reactor, make_agent, tls_smtp_sink, dns_server
):
    sink = tls_smtp_sink
    sink.break_starttls = True
    one_mx(dns_server)
    result = await deliver(reactor, make_agent("required"), message())
    assert result.addresses("temporary") == RCPTS
    assert "TLS handshake failed" in result.error
    assert result.tls_skipped is None
    await sink.wait_closed(timeout=DEADLINE)
    assert [s.commands for s in sink.sessions] == [[EHLO, "STARTTLS"]]
    assert sink.messages == []
