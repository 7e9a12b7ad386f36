"""Tests for hatwist.web._deliveries: delivery counts read from the agent's log events."""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.logger import globalLogPublisher

from hatwist.config import ServerAddress, parse_config
from hatwist.delivery import Envelope, NoGreeting
from hatwist.delivery.attempt import DeliveryAgent, OutboundMessage
from hatwist.health import ServerRegistry
from hatwist.mx import MXHost
from hatwist.web import DeliveryMetrics
from tests.web.support import attempt_event

NO_GREETING_ERROR = (
    "no MX of example.test took the message: "
    "mx1.example.test [127.0.0.20] via proxy 127.0.0.1:5000 from 127.0.0.9: "
    "proxy connected, no greeting (connection closed before the 220 banner); "
    "mx2.example.test [::20] via proxy [::1]:5001 from ::9: "
    "proxy connected, no greeting (no banner within 30s)"
)


def test_counts_each_recipient_by_binding_route_and_result():
    metrics = DeliveryMetrics()
    metrics(attempt_event("b1", "direct", {"a@x.test": 250, "b@x.test": 550, "c@x.test": 250}))
    metrics(attempt_event("b1", "proxy 127.0.0.1:5000 from 127.0.0.9", {"a@y.test": 451}))
    metrics(attempt_event("b2", "direct", {"a@x.test": 251}))
    assert metrics.results() == {
        ("b1", "direct", "delivered"): 2,
        ("b1", "direct", "permanent"): 1,
        ("b1", "proxy 127.0.0.1:5000 from 127.0.0.9", "temporary"): 1,
        ("b2", "direct", "delivered"): 1,
    }
    assert metrics.result_totals() == {"delivered": 3, "temporary": 1, "permanent": 1}
    assert metrics.attempts == 3


def test_attempt_that_reached_no_mx_counts_under_route_none():
    metrics = DeliveryMetrics()
    metrics(attempt_event(route=None, codes={"a@nx.test": 550}, error="NXDOMAIN"))
    assert metrics.results() == {("b1", "none", "permanent"): 1}


def test_other_log_events_are_ignored():
    metrics = DeliveryMetrics()
    metrics({"log_format": "proxy {server} plumbed -> unplumbed", "server": "x", "binding": "b"})
    metrics({"hatwist_event": "something_else", "binding": "b1", "codes": {"a@x": 250}})
    assert (metrics.attempts, metrics.results(), metrics.no_greeting()) == (0, {}, {})


def test_malformed_attempt_event_is_skipped_not_raised():
    metrics = DeliveryMetrics()
    metrics(attempt_event(codes=None) | {"codes": "garbage"})
    metrics(attempt_event(codes={"a@x.test": "250", "b@x.test": True, "c@x.test": 999}))
    metrics(attempt_event(codes={}, no_greeting=5))
    assert metrics.results() == {} and metrics.no_greeting() == {}
    assert metrics.result_totals() == {"delivered": 0, "temporary": 0, "permanent": 0}


def test_no_greeting_counted_per_proxy_server_from_the_structured_field():
    metrics = DeliveryMetrics()
    # An attempt that met a silent proxy, then delivered through another one: only a
    # structured field can say so, since a delivered attempt has no error text.
    metrics(attempt_event(no_greeting=["127.0.0.1:5000", "[::1]:5001"], error=None))
    metrics(attempt_event(error=NO_GREETING_ERROR))  # text alone is never parsed
    assert metrics.no_greeting() == {("b1", "127.0.0.1:5000"): 1, ("b1", "[::1]:5001"): 1}


CONFIG = """
binding b1 {
  ha_proxy_server = "127.0.0.1:5000"
  ha_proxy_src_addr = "127.0.0.9"
}
"""


def test_counts_the_real_delivery_agents_event_for_a_silent_proxy():
    """Pins the coupling: the field names DeliveryMetrics reads are the ones the agent
    emits, for the case operators care most about (proxy connected, no greeting)."""
    clock = task.Clock()
    proxy = ServerAddress("127.0.0.1", 5000)
    mx = MXHost("mx1.example.test", 10, ("127.0.0.20",))

    class Resolver:
        def resolve(self, domain):
            return defer.succeed((mx,))

    def open_session(endpoint, **kwargs):
        return defer.fail(NoGreeting("connection closed before the 220 banner"))

    agent = DeliveryAgent(
        parse_config(CONFIG),
        ServerRegistry([proxy], success_threshold=1, failure_threshold=1),
        Resolver(),
        reactor=clock,
        open_session=open_session,
        default_ehlo_hostname="relay.test",
    )
    metrics = DeliveryMetrics()
    message = OutboundMessage(
        id="m1",
        binding="b1",
        domain="example.test",
        envelope=Envelope("s@sender.test", ("a@example.test", "b@example.test")),
        content=b"Subject: hi\r\n\r\nhello\r\n",
    )
    globalLogPublisher.addObserver(metrics)
    try:
        results = []
        agent.deliver(message).addBoth(results.append)
    finally:
        globalLogPublisher.removeObserver(metrics)
        agent.close()
    assert len(results) == 1
    assert metrics.attempts == 1
    assert metrics.results() == {("b1", "proxy 127.0.0.1:5000 from 127.0.0.9", "temporary"): 2}
    assert metrics.no_greeting() == {("b1", "127.0.0.1:5000"): 1}
