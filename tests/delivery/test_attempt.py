"""Tests for hatwist.delivery.attempt: the walk over MX hosts, addresses and routes.

The sessions here are stand-ins with a task.Clock, so each rule of the walk is pinned
exactly (who was contacted, in which order, with which endpoint); the same behaviour on
the real HAProxy, sink and DNS is in test_attempt_rig.py.
"""

from __future__ import annotations

from contextlib import contextmanager

import attrs
import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.logger import formatEvent, globalLogPublisher

from hatwist.config import Binding, ServerAddress, TLSMode, parse_config
from hatwist.config.settings import BindingMap
from hatwist.delivery import (
    ConnectFailed,
    ConnectionLostDuringSession,
    Envelope,
    GreetingRejected,
    NoGreeting,
    RecipientResult,
    SessionTimeout,
    TLSFailed,
    UnexpectedReply,
)
from hatwist.delivery.attempt import DeliveryAgent, OutboundMessage
from hatwist.endpoint import HAProxyClientEndpoint
from hatwist.health import ServerRegistry
from hatwist.mx import MXHost, NoSuchDomain, NullMX

PROXY = ServerAddress("127.0.0.1", 5000)

CONFIG = """
binding b1 {
  ha_proxy_server = "127.0.0.1:5000"
  ha_proxy_src_addr = "127.0.0.9"
  ehlo_hostname = "relay.example.test"
  max_messages_per_connection = "2"
  connect_timeout = "7"
  smtp_timeout = "11"
  Domain bypass.test {
    ha_proxy_bypass = "true"
    bind_address = "127.0.0.30"
  }
}
"""

RCPTS = ("a@example.test", "b@example.test")


@contextmanager
def logged():
    """Every log event emitted while the block runs (the observer goes, even on failure)."""
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)


def attempt_events(events):
    """The delivery-attempt events among ``events``."""
    return [e for e in events if e.get("hatwist_event") == "delivery_attempt"]


def message(domain="example.test", binding="b1", n=1, rcpts=RCPTS) -> OutboundMessage:
    return OutboundMessage(
        id=f"m{n}",
        binding=binding,
        domain=domain,
        envelope=Envelope("s@sender.test", rcpts),
        content=b"Subject: hi\r\n\r\nhello\r\n",
    )


def delivered(rcpts=RCPTS, code=250) -> tuple[RecipientResult, ...]:
    return tuple(RecipientResult(r, code, "2.0.0 ok") for r in rcpts)


class FakeSession:
    """An OutboundSession that answers each send() from a script."""

    def __init__(self, answers) -> None:
        self.answers = list(answers)
        self.is_open = True
        self.sent = []
        self.quits = 0
        self.aborts = 0

    def send(self, envelope, content):
        self.sent.append((envelope, content))
        answer = self.answers.pop(0) if self.answers else delivered(envelope.rcpt_to)
        if isinstance(answer, Exception):
            self.is_open = False
            return defer.fail(answer)
        return defer.succeed(answer)

    def quit(self):
        self.quits += 1
        self.is_open = False
        return defer.succeed(None)

    def abort(self):
        self.aborts += 1
        self.is_open = False


class Net:
    """The MX world: resolver answers and what opening a session to each address does."""

    def __init__(self, clock: task.Clock) -> None:
        self.clock = clock
        self.hosts: dict[str, object] = {}
        self.behaviour: dict[str, object] = {}
        self.opened: list[tuple[object, dict]] = []
        self.plumbed = [PROXY]

    # MXResolver
    def resolve(self, domain):
        answer = self.hosts[domain]
        if isinstance(answer, Exception):
            return defer.fail(answer)
        return defer.succeed(answer)

    # ServerRegistry
    def registry_plumbed(self, candidates):
        return [s for s in self.plumbed if s in candidates]

    # open_session
    def open_session(self, endpoint, **kwargs):
        address = _destination(endpoint)
        self.opened.append((endpoint, kwargs))
        self.clock.advance(0.5)
        outcome = self.behaviour.get(address, None)
        if outcome is None:
            outcome = FakeSession([])
        if isinstance(outcome, Exception):
            return defer.fail(outcome)
        return defer.succeed(outcome)

    def addresses_opened(self) -> list[str]:
        return [_destination(endpoint) for endpoint, _ in self.opened]


def _destination(endpoint) -> str:
    if isinstance(endpoint, HAProxyClientEndpoint):
        return endpoint._destination[0]
    return endpoint._host


class Registry:
    def __init__(self, net: Net) -> None:
        self.net = net
        self.calls = 0
        self.sources: list[str | None] = []

    def plumbed(self, candidates, source=None):
        self.calls += 1
        self.sources.append(source)
        return self.net.registry_plumbed(tuple(candidates))


@pytest.fixture
def world():
    clock = task.Clock()
    net = Net(clock)
    registry = Registry(net)
    agent = DeliveryAgent(
        parse_config(CONFIG),
        registry,
        net,
        reactor=clock,
        open_session=net.open_session,
        default_ehlo_hostname="default.test",
    )
    yield agent, net, registry
    agent.close()
    clock.advance(3600)


def run(agent, msg):
    results = []
    agent.deliver(msg).addBoth(results.append)
    [result] = results
    assert not isinstance(result, defer.Failure), result
    return result


def two_mx(net, first="127.0.0.20", second="127.0.0.21"):
    net.hosts["example.test"] = (
        MXHost("mx1.example.test", 10, (first,)),
        MXHost("mx2.example.test", 20, (second,)),
    )


def test_delivers_through_the_proxy_with_the_binding_source(world):
    agent, net, _ = world
    two_mx(net)
    result = run(agent, message())
    assert [r.kind for r in result.recipients] == ["delivered", "delivered"]
    assert (result.route, result.mx_host, result.mx_address) == (
        "proxy 127.0.0.1:5000 from 127.0.0.9",
        "mx1.example.test",
        "127.0.0.20",
    )
    assert result.error is None
    [(endpoint, kwargs)] = net.opened
    assert isinstance(endpoint, HAProxyClientEndpoint)
    assert endpoint._source == ("127.0.0.9", 0)
    assert endpoint._destination == ("127.0.0.20", 25)
    assert kwargs["ehlo_hostname"] == "relay.example.test"
    assert kwargs["tls"] is TLSMode.IFAVAILABLE
    assert kwargs["tls_hostname"] == "mx1.example.test"
    assert (kwargs["connect_timeout"], kwargs["command_timeout"]) == (7, 11)


def test_bypass_connects_directly_from_bind_address(world):
    agent, net, registry = world
    net.hosts["bypass.test"] = (MXHost("mx.bypass.test", 10, ("127.0.0.20",)),)
    result = run(agent, message("bypass.test", rcpts=("x@bypass.test",)))
    assert result.route == "direct"
    [(endpoint, _)] = net.opened
    assert isinstance(endpoint, TCP4ClientEndpoint)
    assert (endpoint._host, endpoint._port, endpoint._bindAddress) == (
        "127.0.0.20",
        25,
        ("127.0.0.30", 0),
    )
    assert registry.calls == 0


def test_direct_to_an_ipv6_mx_uses_a_tcp6_endpoint(world):
    agent, net, _ = world
    agent.config = parse_config('binding b1 {\n  ehlo_hostname = "r.test"\n}\n')
    net.hosts["example.test"] = (MXHost("mx.example.test", 10, ("::1",)),)
    result = run(agent, message())
    assert result.route == "direct"
    [(endpoint, _)] = net.opened
    assert isinstance(endpoint, TCP6ClientEndpoint)
    assert endpoint._bindAddress is None


@pytest.mark.parametrize(
    "first_mx",
    [
        ConnectFailed("connection refused"),
        NoGreeting("connection closed before the 220 banner"),
        GreetingRejected(421, "4.3.2 busy"),
        GreetingRejected(554, "5.3.2 go away"),
        FakeSession([UnexpectedReply("MAIL", "garbage")]),
        # Nothing is the peer's before its reply to the final dot (Postfix moves on too).
        FakeSession([ConnectionLostDuringSession("RCPT", "reset")]),
        FakeSession([SessionTimeout("DATA", 11)]),
    ],
    ids=[
        "connect refused",
        "no greeting",
        "4xx greeting",
        "5xx greeting",
        "broke at MAIL",
        "lost at RCPT",
        "no 354",
    ],
)
def test_moves_on_to_the_next_mx_after_a_session_that_never_took_the_message(world, first_mx):
    agent, net, _ = world
    two_mx(net)
    net.behaviour["127.0.0.20"] = first_mx
    result = run(agent, message())
    assert net.addresses_opened() == ["127.0.0.20", "127.0.0.21"]
    assert [r.kind for r in result.recipients] == ["delivered", "delivered"]
    assert result.mx_host == "mx2.example.test"
    # Only a silent proxied session counts as "proxy connected, no greeting", even when a
    # later MX took the message.
    silent = isinstance(first_mx, NoGreeting)
    assert result.no_greeting == (("127.0.0.1:5000",) if silent else ())


def test_tries_every_address_of_a_host_before_the_next_host(world):
    agent, net, _ = world
    net.hosts["example.test"] = (
        MXHost("mx1.example.test", 10, ("127.0.0.20", "127.0.0.22")),
        MXHost("mx2.example.test", 20, ("127.0.0.21",)),
    )
    net.behaviour["127.0.0.20"] = ConnectFailed("refused")
    result = run(agent, message())
    assert net.addresses_opened() == ["127.0.0.20", "127.0.0.22"]
    assert result.mx_address == "127.0.0.22"


def test_tries_each_plumbed_proxy_in_the_registry_order(world):
    agent, net, registry = world
    second = ServerAddress("127.0.0.2", 5000)
    # Built by hand: parse_config cannot take two servers in one value yet (reported).
    b1 = agent.config.binding("b1")
    base = attrs.evolve(b1.settings_for("example.test"), proxy_servers=(PROXY, second))
    agent.config = attrs.evolve(
        agent.config, bindings=BindingMap({"b1": Binding("b1", None, base=base)})
    )
    net.plumbed = [second, PROXY]
    net.hosts["example.test"] = (MXHost("mx1.example.test", 10, ("127.0.0.20",)),)
    attempts = []

    def open_session(endpoint, **kwargs):
        attempts.append(endpoint._proxy._host)
        if len(attempts) == 1:
            return defer.fail(ConnectFailed("proxy down"))
        return defer.succeed(FakeSession([]))

    agent._open_session = open_session
    result = run(agent, message())
    assert attempts == ["127.0.0.2", "127.0.0.1"]
    assert result.route == "proxy 127.0.0.1:5000 from 127.0.0.9"
    assert registry.calls == 1


def test_first_per_recipient_answers_end_the_attempt_even_when_temporary(world):
    agent, net, _ = world
    two_mx(net)
    answers = (
        RecipientResult("a@example.test", 451, "4.2.0 later"),
        RecipientResult("b@example.test", 550, "5.1.1 unknown"),
    )
    net.behaviour["127.0.0.20"] = FakeSession([answers])
    result = run(agent, message())
    assert net.addresses_opened() == ["127.0.0.20"]
    assert result.recipients == answers
    assert result.addresses("temporary") == ("a@example.test",)
    assert result.addresses("permanent") == ("b@example.test",)
    assert result.error is None


def test_a_session_lost_awaiting_the_final_reply_stops_the_attempt(world):
    agent, net, _ = world
    two_mx(net)
    lost = ConnectionLostDuringSession("end of data", "reset")
    net.behaviour["127.0.0.20"] = FakeSession([lost])
    result = run(agent, message())
    assert net.addresses_opened() == ["127.0.0.20"]
    assert {(r.code, r.kind) for r in result.recipients} == {(451, "temporary")}
    assert "connection lost during end of data" in result.error
    assert "mx1.example.test [127.0.0.20]" in result.error


def test_when_every_mx_fails_every_recipient_is_temporary_with_all_reasons(world):
    agent, net, _ = world
    two_mx(net)
    net.behaviour["127.0.0.20"] = ConnectFailed("connection refused")
    net.behaviour["127.0.0.21"] = NoGreeting("connection closed before the 220 banner")
    result = run(agent, message())
    assert [r.code for r in result.recipients] == [451, 451]
    assert all(r.response.startswith("4.4.1 ") for r in result.recipients)
    assert result.error.startswith("no MX of example.test took the message: ")
    assert (
        "mx1.example.test [127.0.0.20] via proxy 127.0.0.1:5000 from 127.0.0.9: "
        "connection refused" in result.error
    )
    assert "proxy connected, no greeting" in result.error
    assert (result.mx_host, result.mx_address) == ("mx2.example.test", "127.0.0.21")
    assert result.no_greeting == ("127.0.0.1:5000",)


def test_asks_the_registry_for_servers_plumbed_from_the_bindings_source(world):
    agent, net, registry = world
    two_mx(net)
    run(agent, message())
    assert registry.sources == ["127.0.0.9"]  # once per attempt and address family


def test_a_proxy_whose_path_from_the_source_is_unplumbed_is_waited_for():
    """The smtp health check failed only from 127.0.0.9: that binding's mail waits,
    while the proxy stays plumbed for other sources."""
    clock = task.Clock()
    net = Net(clock)
    two_mx(net)
    registry = ServerRegistry([PROXY], success_threshold=1, failure_threshold=1)
    registry.record_sources(
        PROXY, {"127.0.0.9": "no banner", "127.0.0.10": None}, at=clock.seconds()
    )
    agent = DeliveryAgent(
        parse_config(CONFIG),
        registry,
        net,
        reactor=clock,
        open_session=net.open_session,
        default_ehlo_hostname="default.test",
    )
    try:
        result = run(agent, message())
    finally:
        agent.close()
    assert registry.is_plumbed(PROXY) and not registry.is_plumbed(PROXY, "127.0.0.9")
    assert net.opened == []
    assert result.waiting_for_proxy is True
    assert result.addresses("temporary") == RCPTS


def test_a_proxy_refusing_every_connect_is_waited_for_not_retried(world):
    """HAProxy died between two health checks: hold for the checker, spend no retry."""
    agent, net, _ = world
    two_mx(net)
    net.behaviour["127.0.0.20"] = ConnectFailed("connection refused")
    net.behaviour["127.0.0.21"] = ConnectFailed("connection refused")
    result = run(agent, message())
    assert result.addresses("temporary") == RCPTS
    assert result.waiting_for_proxy is True


def test_a_refused_direct_connect_is_an_ordinary_retry(world):
    agent, net, _ = world
    net.hosts["bypass.test"] = (MXHost("mx.bypass.test", 10, ("127.0.0.20",)),)
    net.behaviour["127.0.0.20"] = ConnectFailed("connection refused")
    result = run(agent, message("bypass.test", rcpts=("x@bypass.test",)))
    assert result.addresses("temporary") == ("x@bypass.test",)
    assert result.waiting_for_proxy is False


def test_a_proxy_connect_failure_beside_another_failure_is_an_ordinary_retry(world):
    agent, net, _ = world
    two_mx(net)
    net.behaviour["127.0.0.20"] = ConnectFailed("connection refused")
    net.behaviour["127.0.0.21"] = GreetingRejected(421, "4.3.2 busy")
    result = run(agent, message())
    assert result.waiting_for_proxy is False


def test_ipv6_mx_without_an_ipv6_source_fails_naming_the_option(world):
    agent, net, _ = world
    net.hosts["example.test"] = (MXHost("mx6.example.test", 10, ("fd00::20",)),)
    result = run(agent, message())
    assert net.opened == []
    assert [r.code for r in result.recipients] == [451, 451]
    assert result.error == (
        "no usable route to any MX of example.test: binding b1 has no "
        "ha_proxy_ipv6_src_addr; IPv6 MX address fd00::20 cannot go through the proxy"
    )
    assert result.recipients[0].response == "4.4.4 " + result.error


def test_skipped_addresses_appear_in_the_reason_when_nothing_else_worked(world):
    agent, net, _ = world
    net.hosts["example.test"] = (MXHost("mx.example.test", 10, ("fd00::20", "127.0.0.20")),)
    net.behaviour["127.0.0.20"] = ConnectFailed("connection refused")
    result = run(agent, message())
    assert net.addresses_opened() == ["127.0.0.20"]
    assert "connection refused" in result.error
    assert "ha_proxy_ipv6_src_addr" in result.error
    assert result.waiting_for_proxy is False


def test_no_plumbed_proxy_fails_temporarily_naming_the_servers(world):
    agent, net, _ = world
    net.plumbed = []
    two_mx(net)
    result = run(agent, message())
    assert net.opened == []
    assert "no plumbed ha_proxy_server for binding b1 (127.0.0.1:5000 unplumbed)" in result.error
    assert result.addresses("temporary") == RCPTS
    assert result.waiting_for_proxy is True


@pytest.mark.parametrize(
    ("error", "code", "status"),
    [
        (NullMX("example.test", "domain example.test accepts no mail (null MX)"), 556, "5.1.10"),
        (NoSuchDomain("example.test", "domain example.test does not exist"), 550, "5.1.2"),
    ],
    ids=["null mx", "nxdomain"],
)
def test_permanent_dns_answers_bounce_every_recipient(world, error, code, status):
    agent, net, _ = world
    net.hosts["example.test"] = error
    result = run(agent, message())
    assert net.opened == []
    assert [r.code for r in result.recipients] == [code, code]
    assert result.recipients[0].response == f"{status} {error.reason}"
    assert result.addresses("permanent") == RCPTS
    assert result.error == error.reason
    assert result.mx_host is None and result.route is None


def test_unknown_binding_is_a_temporary_configuration_problem(world):
    agent, _net, _ = world
    result = run(agent, message(binding="nope"))
    assert result.addresses("temporary") == RCPTS
    assert result.recipients[0].response.startswith("4.3.5 ")
    assert "nope" in result.error


def test_an_unexpected_bug_still_yields_temporary_results(world):
    agent, net, _ = world
    net.hosts["example.test"] = RuntimeError("boom")
    with logged() as events:
        result = run(agent, message())
    assert result.addresses("temporary") == RCPTS
    assert "RuntimeError: boom" in result.error
    assert any(e.get("log_failure") for e in events)


def test_one_structured_log_event_per_attempt(world):
    agent, net, _ = world
    two_mx(net)
    net.behaviour["127.0.0.20"] = ConnectFailed("refused")
    with logged() as events:
        run(agent, message())
    [event] = [e for e in events if e.get("log_namespace") == "hatwist.delivery.attempt"]
    assert event["message_id"] == "m1"
    assert event["binding"] == "b1"
    assert event["route"] == "proxy 127.0.0.1:5000 from 127.0.0.9"
    assert (event["mx_host"], event["mx_address"]) == ("mx2.example.test", "127.0.0.21")
    assert event["codes"] == {"a@example.test": 250, "b@example.test": 250}
    assert event["duration"] == 1.0  # two session opens of 0.5 s on the test clock
    assert event["error"] is None


def test_several_messages_reuse_one_session_up_to_the_limit(world):
    agent, net, _ = world
    two_mx(net)
    first = FakeSession([])
    second = FakeSession([])
    sessions = iter([first, second])
    opened = []

    def open_session(endpoint, **kwargs):
        opened.append(endpoint)
        return defer.succeed(next(sessions))

    agent._open_session = open_session
    for n in range(3):
        assert run(agent, message(n=n)).addresses("delivered") == RCPTS
    assert len(opened) == 2
    assert len(first.sent) == 2 and first.quits == 1  # max_messages_per_connection = 2
    assert len(second.sent) == 1 and second.quits == 0
    assert agent.pool.idle_count() == 1


def test_a_reused_session_the_peer_dropped_is_replaced_by_a_fresh_one(world):
    agent, net, _ = world
    two_mx(net)
    stale = FakeSession([delivered(), ConnectionLostDuringSession("RSET", "reset by peer")])
    fresh = FakeSession([])
    sessions = iter([stale, fresh])
    agent._open_session = lambda endpoint, **kw: defer.succeed(next(sessions))
    run(agent, message(n=1))
    result = run(agent, message(n=2))
    assert result.addresses("delivered") == RCPTS
    assert len(fresh.sent) == 1
    assert result.mx_address == "127.0.0.20"


def test_a_reused_session_lost_mid_data_is_not_retried(world):
    agent, net, _ = world
    two_mx(net)
    stale = FakeSession([delivered(), ConnectionLostDuringSession("end of data", "reset")])
    sessions = iter([stale])
    agent._open_session = lambda endpoint, **kw: defer.succeed(next(sessions))
    run(agent, message(n=1))
    result = run(agent, message(n=2))
    assert result.addresses("temporary") == RCPTS
    assert "connection lost during end of data" in result.error


def test_sessions_are_not_shared_between_domains(world):
    agent, net, _ = world
    two_mx(net)
    net.hosts["other.test"] = net.hosts["example.test"]
    run(agent, message())
    run(agent, message("other.test", rcpts=("c@other.test",)))
    assert len(net.opened) == 2


@pytest_twisted.ensureDeferred
async def test_deliver_returns_a_deferred_for_a_slow_session(world):
    agent, net, _ = world
    two_mx(net)
    pending = defer.Deferred()
    agent._open_session = lambda endpoint, **kw: pending
    d = agent.deliver(message())
    assert not d.called
    pending.callback(FakeSession([]))
    result = await d
    assert result.addresses("delivered") == RCPTS


def test_cancelling_an_attempt_aborts_it_without_trying_other_routes(world):
    agent, net, _ = world
    two_mx(net)
    cancelled = []
    agent._open_session = lambda endpoint, **kw: defer.Deferred(cancelled.append)
    d = agent.deliver(message())
    failures = []
    d.addErrback(failures.append)
    d.cancel()
    assert len(cancelled) == 1
    [failure] = failures
    assert failure.check(defer.CancelledError)


# -- tls = ifavailable: a failed STARTTLS is retried once in plaintext ----------------------


class Opens:
    """``open_session`` answering each call from a script; records (address, tls)."""

    def __init__(self, *outcomes) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[tuple[str, TLSMode]] = []

    def __call__(self, endpoint, **kwargs):
        self.calls.append((_destination(endpoint), kwargs["tls"]))
        outcome = self.outcomes.pop(0) if self.outcomes else FakeSession([])
        if isinstance(outcome, Exception):
            return defer.fail(outcome)
        return defer.succeed(outcome)


def with_tls(agent, mode: str) -> None:
    agent.config = parse_config(CONFIG.replace("binding b1 {", f'binding b1 {{\n  tls = "{mode}"'))


@pytest.mark.parametrize(
    "failure",
    [
        TLSFailed("TLS handshake failed: Connection lost"),
        SessionTimeout("STARTTLS", 11),
        ConnectionLostDuringSession("STARTTLS", "reset"),
    ],
    ids=["handshake reset", "handshake stalled", "lost after STARTTLS"],
)
def test_ifavailable_retries_a_failed_starttls_once_in_plaintext_on_the_same_route(world, failure):
    agent, net, _ = world
    two_mx(net)
    plaintext = FakeSession([])
    agent._open_session = opens = Opens(failure, plaintext)
    result = run(agent, message())
    assert opens.calls == [
        ("127.0.0.20", TLSMode.IFAVAILABLE),
        ("127.0.0.20", TLSMode.NO),
    ]
    assert len(plaintext.sent) == 1
    assert result.addresses("delivered") == RCPTS
    assert result.mx_address == "127.0.0.20"
    assert result.route == "proxy 127.0.0.1:5000 from 127.0.0.9"
    assert result.tls_skipped == f"STARTTLS failed ({failure}); retried in plaintext"


@pytest.mark.parametrize(
    "failure",
    [
        TLSFailed("TLS handshake failed: Connection lost"),
        SessionTimeout("STARTTLS", 11),
    ],
    ids=["handshake reset", "handshake stalled"],
)
def test_required_never_retries_in_plaintext(world, failure):
    agent, net, _ = world
    with_tls(agent, "required")
    two_mx(net)
    agent._open_session = opens = Opens(failure, FakeSession([]))
    result = run(agent, message())
    assert opens.calls == [
        ("127.0.0.20", TLSMode.REQUIRED),
        ("127.0.0.21", TLSMode.REQUIRED),
    ]
    assert result.mx_address == "127.0.0.21"
    assert result.tls_skipped is None


def test_required_with_a_failed_handshake_everywhere_is_temporary_naming_tls(world):
    agent, net, _ = world
    with_tls(agent, "required")
    net.hosts["example.test"] = (MXHost("mx1.example.test", 10, ("127.0.0.20",)),)
    agent._open_session = opens = Opens(TLSFailed("TLS handshake failed: Connection lost"))
    result = run(agent, message())
    assert opens.calls == [("127.0.0.20", TLSMode.REQUIRED)]
    assert result.addresses("temporary") == RCPTS
    assert "TLS handshake failed" in result.error


@pytest.mark.parametrize(
    "failure",
    [
        GreetingRejected(421, "4.3.2 shutting down", stage="STARTTLS"),
        ConnectFailed("connection refused"),
        SessionTimeout("EHLO", 11),
    ],
    ids=["421 to STARTTLS", "connect refused", "no EHLO reply"],
)
def test_ifavailable_does_not_retry_in_plaintext_after_other_failures(world, failure):
    agent, net, _ = world
    two_mx(net)
    agent._open_session = opens = Opens(failure, FakeSession([]))
    result = run(agent, message())
    assert [tls for _, tls in opens.calls] == [TLSMode.IFAVAILABLE, TLSMode.IFAVAILABLE]
    assert result.mx_address == "127.0.0.21"


def test_tls_no_never_retries(world):
    agent, net, _ = world
    with_tls(agent, "no")
    two_mx(net)
    agent._open_session = opens = Opens(ConnectionLostDuringSession("EHLO", "reset"))
    run(agent, message())
    assert opens.calls == [("127.0.0.20", TLSMode.NO), ("127.0.0.21", TLSMode.NO)]


def test_a_failed_plaintext_retry_moves_on_with_both_reasons(world):
    agent, net, _ = world
    net.hosts["example.test"] = (MXHost("mx1.example.test", 10, ("127.0.0.20",)),)
    agent._open_session = opens = Opens(
        TLSFailed("TLS handshake failed: Connection lost"),
        NoGreeting("connection closed before the 220 banner"),
    )
    result = run(agent, message())
    assert len(opens.calls) == 2  # once, not again and again
    assert result.addresses("temporary") == RCPTS
    assert (
        "TLS handshake failed: Connection lost; then without STARTTLS: "
        "proxy connected, no greeting" in result.error
    )
    assert result.no_greeting == ("127.0.0.1:5000",)


def test_a_plaintext_session_is_reused_by_the_next_message_and_says_so(world):
    agent, net, _ = world
    two_mx(net)
    plaintext = FakeSession([])
    agent._open_session = opens = Opens(TLSFailed("TLS handshake failed: reset"), plaintext)
    with logged() as events:
        results = [run(agent, message(n=n)) for n in (1, 2)]
    events = attempt_events(events)
    assert len(opens.calls) == 2 and len(plaintext.sent) == 2
    skipped = "STARTTLS failed (TLS handshake failed: reset); retried in plaintext"
    assert [r.tls_skipped for r in results] == [skipped, skipped]
    assert [e["tls_skipped"] for e in events] == [skipped, skipped]
    assert all(f"; TLS skipped: {skipped}" in formatEvent(e) for e in events)


def test_a_refused_starttls_is_reported_as_skipped_tls(world):
    agent, net, _ = world
    two_mx(net)
    session = FakeSession([])
    session.tls_skipped = "STARTTLS refused: 454 4.7.0 not now"
    agent._open_session = Opens(session)
    result = run(agent, message())
    assert result.tls_skipped == "STARTTLS refused: 454 4.7.0 not now"


def test_an_attempt_with_tls_says_nothing_was_skipped(world):
    agent, net, _ = world
    two_mx(net)
    with logged() as events:
        result = run(agent, message())
    [event] = attempt_events(events)
    assert result.tls_skipped is None and event["tls_skipped"] is None
    assert "TLS skipped" not in formatEvent(event)


def test_a_session_opened_under_ifavailable_is_not_lent_once_tls_is_required(world):
    """A reload from ifavailable to required must not send over a plaintext (or
    unverified) session parked before it."""
    agent, net, _ = world
    two_mx(net)
    first, second = FakeSession([]), FakeSession([])
    agent._open_session = opens = Opens(first, second)
    run(agent, message(n=1))
    with_tls(agent, "required")
    run(agent, message(n=2))
    assert [tls for _, tls in opens.calls] == [TLSMode.IFAVAILABLE, TLSMode.REQUIRED]
    assert (len(first.sent), len(second.sent)) == (1, 1)
