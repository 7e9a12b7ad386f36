"""Tests for hatwist.web._deliveries: delivery counts read from the agent's log events."""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.logger import globalLogPublisher

from hatwist.config import ServerAddress, parse_config
from hatwist.delivery import Envelope, NoGreeting, RecipientResult
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


def test_tls_skipped_counted_per_binding_for_attempts_that_went_in_plaintext():
    metrics = DeliveryMetrics()
    skipped = "STARTTLS failed (TLS handshake failed); retried in plaintext"
    metrics(attempt_event("b1", tls_skipped=skipped))
    metrics(attempt_event("b1", tls_skipped="STARTTLS refused: 454 4.7.0 not now"))
    metrics(attempt_event("b2", tls_skipped=skipped))
    metrics(attempt_event("b2", tls_skipped=None))  # TLS used, not offered, or not wanted
    metrics(attempt_event("b3"))  # an event from before the field existed
    assert metrics.tls_skipped() == {"b1": 2, "b2": 1}
    assert metrics.tls_skipped_total() == 3


def test_malformed_tls_skipped_is_not_counted():
    metrics = DeliveryMetrics()
    metrics(attempt_event(tls_skipped=""))
    metrics(attempt_event(tls_skipped=True))
    metrics(attempt_event(codes=None) | {"codes": "garbage", "tls_skipped": "x"})
    assert (metrics.tls_skipped(), metrics.tls_skipped_total()) == ({}, 0)


CONFIG = """
binding b1 {
  ha_proxy_server = "127.0.0.1:5000"
  ha_proxy_src_addr = "127.0.0.9"
}
"""


class PlaintextSession:
    """An outbound session that took the message in plaintext after STARTTLS was skipped."""

    tls_skipped = "STARTTLS failed (TLS handshake failed: reset); retried in plaintext"
    is_open = True

    def send(self, envelope, content):
        return defer.succeed(tuple(RecipientResult(r, 250, "2.0.0 ok") for r in envelope.rcpt_to))

    def quit(self):
        self.is_open = False
        return defer.succeed(None)

    def abort(self):
        self.is_open = False


def count_one_real_attempt(open_session) -> DeliveryMetrics:
    """The counts of one DeliveryAgent attempt whose sessions ``open_session`` makes."""
    clock = task.Clock()
    proxy = ServerAddress("127.0.0.1", 5000)
    mx = MXHost("mx1.example.test", 10, ("127.0.0.20",))

    class Resolver:
        def resolve(self, domain):
            return defer.succeed((mx,))

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
    return metrics


def test_counts_the_real_delivery_agents_event_for_a_silent_proxy():
    """Pins the coupling: the field names DeliveryMetrics reads are the ones the agent
    emits, for the case operators care most about (proxy connected, no greeting)."""

    def open_session(endpoint, **kwargs):
        return defer.fail(NoGreeting("connection closed before the 220 banner"))

    metrics = count_one_real_attempt(open_session)
    assert metrics.results() == {("b1", "proxy 127.0.0.1:5000 from 127.0.0.9", "temporary"): 2}
    assert metrics.no_greeting() == {("b1", "127.0.0.1:5000"): 1}
    assert metrics.tls_skipped() == {}


def test_counts_the_real_delivery_agents_event_for_a_plaintext_fallback():
    """The same coupling for ``tls_skipped``: an attempt delivered in plaintext because
    STARTTLS failed counts once for its binding."""
    metrics = count_one_real_attempt(lambda endpoint, **kwargs: defer.succeed(PlaintextSession()))
    assert metrics.results() == {("b1", "proxy 127.0.0.1:5000 from 127.0.0.9", "delivered"): 2}
    assert metrics.tls_skipped() == {"b1": 1}
