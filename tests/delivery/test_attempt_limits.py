"""Tests for the bounds of one delivery attempt (issue 11, item 5): ``mx_address_limit``,
the ``attempt_timeout`` deadline over the whole walk (hatwist.delivery._deadline), and
content read per session (``OutboundMessage.load_content``).

Stand-in sessions and a ``task.Clock``, as in test_attempt.py, so the count of addresses
tried and the instant the deadline ends the attempt are exact; the same bounds against
real sockets and the in-process DNS are in test_attempt_limits_rig.py.
"""

from __future__ import annotations

import pytest
from twisted.internet import defer, task

from hatwist.config import parse_config
from hatwist.delivery import ConnectFailed, ConnectionLostDuringSession, Envelope
from hatwist.delivery.attempt import DeliveryAgent, OutboundMessage
from hatwist.mx import MXHost

from .test_attempt import CONFIG, FakeSession, Net, Registry, delivered, message, run

#: 50 MX hosts with 20 addresses each: what a hostile domain publishes.
HOSTS = tuple(
    MXHost(f"mx{h:02d}.hostile.test", 10 + h, tuple(f"127.1.{h}.{a}" for a in range(1, 21)))
    for h in range(50)
)


@pytest.fixture
def world():
    """test_attempt.py's stand-in world: an agent, the MX world and the registry."""
    clock = task.Clock()
    net = Net(clock)
    registry = Registry(net)
    agent = DeliveryAgent(
        parse_config(CONFIG), registry, net, reactor=clock, open_session=net.open_session,
        default_ehlo_hostname="default.test",
    )  # fmt: skip
    yield agent, net, registry
    agent.close()
    clock.advance(3600)


def _config(**keys: str):
    """The test config with ``keys`` set at the top level (inherited by binding b1)."""
    top = "".join(f'{k} = "{v}"\n' for k, v in keys.items())
    return parse_config(top + CONFIG)


def _all_refuse(net):
    net.hosts["hostile.test"] = HOSTS
    for host in HOSTS:
        for address in host.addresses:
            net.behaviour[address] = ConnectFailed("connection refused")


def _hostile(n=1):
    return message("hostile.test", rcpts=("x@hostile.test",), n=n)


# -- mx_address_limit ---------------------------------------------------------------------


def test_only_mx_address_limit_addresses_are_tried_best_first(world):
    agent, net, _ = world
    _all_refuse(net)
    result = run(agent, _hostile())
    assert net.addresses_opened() == [f"127.1.0.{a}" for a in range(1, 6)]
    [recipient] = result.recipients
    assert (recipient.code, recipient.kind) == (451, "temporary")
    assert "mx_address_limit 5 reached, 995 more not tried" in result.error


def test_the_limit_counts_over_all_mx_hosts(world):
    agent, net, _ = world
    agent.config = _config(mx_address_limit="3")
    net.hosts["hostile.test"] = tuple(
        MXHost(f"mx{h}.hostile.test", 10 + h, (f"127.1.{h}.1",)) for h in range(10)
    )
    for h in range(10):
        net.behaviour[f"127.1.{h}.1"] = ConnectFailed("connection refused")
    result = run(agent, _hostile())
    assert net.addresses_opened() == ["127.1.0.1", "127.1.1.1", "127.1.2.1"]
    assert "mx_address_limit 3 reached, 7 more not tried" in result.error


def test_addresses_without_a_route_do_not_count(world):
    agent, net, _ = world
    agent.config = _config(mx_address_limit="2")
    # Binding b1 has no IPv6 source: its IPv6 MX addresses have no route.
    net.hosts["hostile.test"] = (
        MXHost("mx1.hostile.test", 10, ("fd00::1", "fd00::2", "fd00::3", "127.1.0.1")),
        MXHost("mx2.hostile.test", 20, ("127.1.1.1", "127.1.2.1")),
    )
    for address in ("127.1.0.1", "127.1.1.1", "127.1.2.1"):
        net.behaviour[address] = ConnectFailed("connection refused")
    result = run(agent, _hostile())
    assert net.addresses_opened() == ["127.1.0.1", "127.1.1.1"]
    assert "1 more not tried" in result.error


def test_an_mx_within_the_limit_takes_the_message(world):
    agent, net, _ = world
    _all_refuse(net)
    net.behaviour["127.1.0.5"] = FakeSession([])
    result = run(agent, _hostile())
    assert result.mx_address == "127.1.0.5" and result.error is None
    assert [r.kind for r in result.recipients] == ["delivered"]


# -- attempt_timeout ----------------------------------------------------------------------


def _tarpit_connects(agent, net, seconds):
    """Every connect succeeds only after ``seconds`` (then is refused); cancels counted."""
    started, cancelled = [], []

    def open_session(endpoint, **kwargs):
        net.opened.append((endpoint, kwargs))
        started.append(net.clock.seconds())
        d = defer.Deferred(lambda d: cancelled.append(net.clock.seconds()))
        call = net.clock.callLater(seconds, d.errback, ConnectFailed(f"no connect in {seconds}s"))
        d.addBoth(lambda r: (call.cancel() if call.active() else None, r)[1])
        return d

    agent._open_session = open_session
    return started, cancelled


def test_the_attempt_deadline_ends_a_walk_of_slow_connects(world):
    agent, net, _ = world
    agent.config = _config(attempt_timeout="70", connect_timeout="30")
    net.hosts["hostile.test"] = HOSTS
    started, cancelled = _tarpit_connects(agent, net, 30)
    results = []
    agent.deliver(_hostile()).addBoth(results.append)
    for step in (30, 30, 9):  # one at a time: each connect starts when the last failed
        net.clock.advance(step)
    assert not results  # still walking: two connects failed, the third in progress
    net.clock.advance(1)
    [result] = results
    assert started == [0, 30, 60] and cancelled == [70]
    assert result.duration == 70
    [recipient] = result.recipients
    assert (recipient.code, recipient.kind) == (451, "temporary")
    assert result.error.startswith(
        "attempt deadline of 70s passed at mx00.hostile.test [127.1.0.3] via proxy"
    )
    assert "before: mx00.hostile.test [127.1.0.1]" in result.error
    net.clock.advance(1000)
    assert len(started) == 3  # nothing more was tried after the deadline


class StalledSession(FakeSession):
    """A session that never answers the message's final dot; cancelling aborts it."""

    def send(self, envelope, content):
        self.sent.append((envelope, content))

        def cancel(d):
            self.abort()
            d.errback(ConnectionLostDuringSession("end of data", "aborted locally"))

        return defer.Deferred(cancel)


def test_the_attempt_deadline_aborts_a_session_in_flight(world):
    agent, net, _ = world
    agent.config = _config(attempt_timeout="100")
    net.hosts["hostile.test"] = HOSTS[:1]
    stalled = net.behaviour["127.1.0.1"] = StalledSession([])
    results = []
    agent.deliver(_hostile()).addBoth(results.append)
    net.clock.advance(99)
    assert not results and stalled.sent
    net.clock.advance(1)
    [result] = results
    assert stalled.aborts == 1
    assert result.recipients[0].code == 451
    assert "attempt deadline of 100s passed at mx00.hostile.test [127.1.0.1]" in result.error
    assert "connection lost during end of data: aborted locally" in result.error
    assert net.addresses_opened() == ["127.1.0.1"]  # never sent anywhere else


def test_the_attempt_deadline_covers_the_mx_lookup(world):
    agent, net, _ = world
    agent.config = _config(attempt_timeout="40")
    lookups = []
    net.resolve = lambda domain: defer.Deferred(lookups.append)
    results = []
    agent.deliver(_hostile()).addBoth(results.append)
    net.clock.advance(40)
    [result] = results
    assert len(lookups) == 1  # the lookup was cancelled
    assert result.error == "attempt deadline of 40s passed resolving hostile.test"
    assert result.recipients[0].code == 451


def test_an_attempt_leaves_no_deadline_timer_behind(world):
    agent, net, _ = world
    net.hosts["hostile.test"] = HOSTS[:1]
    run(agent, _hostile())
    assert all(call.getTime() != 600 for call in net.clock.getDelayedCalls())


# -- content read per session -------------------------------------------------------------


def _loaded_message(loads, content=b"Subject: big\r\n\r\nbody\r\n"):
    def load():
        loads.append(True)
        return defer.succeed(content)

    return OutboundMessage(
        id="m1",
        binding="b1",
        domain="hostile.test",
        envelope=Envelope("s@sender.test", ("x@hostile.test",)),
        load_content=load,
    )


def test_content_is_read_only_once_a_session_is_ready(world):
    agent, net, _ = world
    _all_refuse(net)
    session = net.behaviour["127.1.0.3"] = FakeSession([])
    loads = []
    result = run(agent, _loaded_message(loads))
    assert loads == [True]  # not for the two addresses that refused
    assert [content for _, content in session.sent] == [b"Subject: big\r\n\r\nbody\r\n"]
    assert result.recipients == delivered(("x@hostile.test",))


def test_content_is_not_read_when_no_session_opens(world):
    agent, net, _ = world
    _all_refuse(net)
    loads = []
    result = run(agent, _loaded_message(loads))
    assert loads == [] and result.recipients[0].code == 451


def test_content_that_cannot_be_read_defers_and_keeps_the_session(world):
    agent, net, _ = world
    net.hosts["hostile.test"] = HOSTS[:1]
    session = net.behaviour["127.1.0.1"] = FakeSession([])
    message = OutboundMessage(
        id="m1",
        binding="b1",
        domain="hostile.test",
        envelope=Envelope("s@sender.test", ("x@hostile.test",)),
        load_content=lambda: defer.fail(OSError("spool file gone")),
    )
    result = run(agent, message)
    assert result.recipients[0].code == 451 and "spool file gone" in result.error
    assert session.sent == [] and session.aborts == 0
    # The session said nothing about that message: the next one uses it.
    run(agent, _hostile(n=2))
    assert len(net.opened) == 1 and len(session.sent) == 1


@pytest.mark.parametrize("key", ["mx_address_limit", "attempt_timeout"])
def test_the_limits_are_resolved_per_binding_and_domain(key):
    config = parse_config(
        f'{key} = "9"\nbinding b1 {{\n  Domain slow.test {{\n    {key} = "3"\n  }}\n}}\n'
    )
    assert getattr(config.binding("b1").settings_for("other.test"), key) == 9
    assert getattr(config.binding("b1").settings_for("slow.test"), key) == 3
