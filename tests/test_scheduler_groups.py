"""
Tests for binding groups as a choice (hatwist.scheduler._choice and the group queues of
._rules and ._dispatch): mail sent with X-Binding-Group is queued for the group, and each
attempt runs on one of its bindings, by binding_weight, skipping bindings without a
plumbed path for the MX's address family, under the chosen binding's own limits.
"""

from __future__ import annotations

import attrs
import pytest

from hatwist.config import group_route
from hatwist.scheduler._choice import Chooser
from tests.test_scheduler_support import World, result_for, running

SERVER = "127.0.0.1:5000"
GROUPS = f"""
retry_interval = 60
message_expiration = 3600
shutdown_grace = 10
ha_proxy_server = {SERVER}
ha_proxy_client {{
  health_check_interval = 5
}}
binding_group pool {{
  retry_interval = 300
  max_connections = 10
  binding blue {{
    ha_proxy_src_addr = 127.0.0.10
    binding_weight = 3
  }}
  binding green {{
    ha_proxy_src_addr = 127.0.0.11
  }}
  binding six {{
    ha_proxy_ipv6_src_addr = fd00::11
  }}
}}
"""

POOL = group_route("pool")
BLUE, GREEN = "127.0.0.10", "127.0.0.11"


class Families:
    """What the resolver's cache knows of each domain's MX families."""

    def __init__(self) -> None:
        self.known: dict[str, frozenset[int]] = {}

    def __call__(self, domain: str) -> frozenset[int] | None:
        return self.known.get(domain)


@pytest.fixture
def families():
    return Families()


def group_world(families, config=GROUPS, *, plumbed=(), **options):
    """A running World of ``config`` whose resolver knows dst.test as IPv4 only, with
    ``plumbed`` sources' paths checked good (a generator, as ``running``)."""
    w = World(config, families=families, **options)
    families.known["dst.test"] = frozenset({4})
    for running_world in running(w):
        for source in plumbed:
            plumb(running_world, source)
        yield running_world


@pytest.fixture
def world(families):
    yield from group_world(families)


def plumb(world, source, up=True):
    """One smtp-mode check of the proxy from every source it has seen so far: a check
    that leaves a source out forgets its path, so each says what all of them did."""
    paths = world.__dict__.setdefault("paths", {})
    paths[source] = None if up else "554 refused"
    server = world.config.proxy_servers[0]
    world.registry.record_sources(server, dict(paths), at=world.clock.seconds())


def chosen(world):
    return [outbound.binding for outbound, _ in world.agent.calls]


# -- the pure choice ----------------------------------------------------------------------


def test_weighted_round_robin_gives_each_binding_exactly_its_share_interleaved():
    chooser = Chooser()
    picks = [chooser.order("g", ["a", "b"], [("a", 3), ("b", 1)])[0] for _ in range(8)]
    assert picks.count("a") == 6 and picks.count("b") == 2
    assert picks[:4] in (["a", "a", "b", "a"], ["a", "b", "a", "a"])  # interleaved, not aaab


def test_choice_lists_the_others_by_weight_after_the_pick_for_a_refused_start():
    chooser = Chooser()
    order = chooser.order("g", ["a", "b", "c"], [("a", 1), ("b", 5), ("c", 2)])
    assert order == ["b", "c", "a"]


def test_a_binding_left_out_of_rounds_rejoins_at_its_share_and_gone_ones_are_dropped():
    chooser = Chooser()
    for _ in range(5):  # "b" unusable meanwhile: it banks no credit
        assert chooser.order("g", ["a", "b"], [("a", 1)]) == ["a"]
    picks = [chooser.order("g", ["a", "b"], [("a", 1), ("b", 1)])[0] for _ in range(4)]
    assert sorted(picks) == ["a", "a", "b", "b"]
    chooser.order("g", ["a"], [("a", 1)])
    assert list(chooser._credit["g"]) == ["a"]
    assert chooser.order("g", ["a"], []) == []
    chooser.forget([])
    assert chooser._credit == {}


# -- the scheduler -----------------------------------------------------------------------


def test_group_mail_is_queued_for_the_group_and_split_by_weight(world):
    plumb(world, BLUE)
    plumb(world, GREEN)
    for _ in range(8):
        world.submit(binding=POOL)
    assert world.scheduler.queue_depths() == {(POOL, "dst.test"): 8}
    assert sorted(chosen(world)) == ["blue"] * 6 + ["green"] * 2
    assert {outbound.group for outbound, _ in world.agent.calls} == {"pool"}


def test_a_binding_whose_source_path_is_unplumbed_is_skipped_at_once(world):
    plumb(world, BLUE, up=False)
    plumb(world, GREEN)
    for _ in range(4):
        world.submit(binding=POOL)
    assert chosen(world) == ["green"] * 4


def test_the_mx_family_decides_an_ipv6_only_binding_takes_mail_to_an_ipv6_mx(world, families):
    """blue and green have IPv4 sources only; six has an IPv6 source only."""
    plumb(world, BLUE)
    plumb(world, GREEN)
    plumb(world, "fd00::11")
    families.known["six.test"] = frozenset({6})
    for _ in range(3):
        world.submit(binding=POOL, rcpt_to=("x@six.test",))
    assert chosen(world) == ["six"] * 3


def test_after_a_failed_attempt_the_retry_takes_the_other_binding_when_the_first_went(world):
    plumb(world, BLUE)
    plumb(world, GREEN)
    world.submit(binding=POOL)
    assert chosen(world) == ["blue"]
    world.agent.answer(0, 451, "4.4.1 connection lost")
    plumb(world, BLUE, up=False)
    world.clock.advance(300)  # the group's retry_interval, not the top level's 60
    assert chosen(world) == ["blue", "green"]
    world.agent.answer(1, 250)
    assert world.scheduler.queue_depths() == {}


def test_a_bindings_exhausted_throttle_sends_the_attempt_to_another_binding(families):
    config = GROUPS.replace("    binding_weight = 3\n",
                            "    binding_weight = 3\n    outbound_throttle_messages = 1/3600\n")
    for w in group_world(families, config, plumbed=(BLUE, GREEN)):
        for _ in range(4):
            w.submit(binding=POOL)
        assert sorted(chosen(w)) == ["blue", "green", "green", "green"]


def test_connection_limits_stay_per_binding(families):
    config = GROUPS.replace("  max_connections = 10\n", "  max_connections = 1\n")
    for w in group_world(families, config, plumbed=(BLUE, GREEN)):
        for _ in range(5):
            w.submit(binding=POOL)
        # one running attempt per (binding, domain): blue and green, nothing more
        assert sorted(chosen(w)) == ["blue", "green"]
        w.agent.answer(0, 250)
        assert len(w.agent.calls) == 3


def test_with_no_binding_plumbed_the_group_waits_without_spending_attempts(world):
    plumb(world, BLUE, up=False)
    plumb(world, GREEN, up=False)
    message = world.submit(binding=POOL)
    world.clock.advance(100)
    assert world.agent.calls == []
    assert world.spool.messages[message.id].attempts == 0
    waits = [e for e in world.events if e.get("outcome") == "waiting for a plumbed proxy"]
    assert "no binding of binding_group pool" in waits[0]["reason"]
    plumb(world, GREEN)  # the registry's change releases the group queue
    assert chosen(world) == ["green"]


def test_a_choice_the_agent_found_no_path_for_goes_again_on_another_binding(world, families):
    """The MX's family was not known when blue was chosen; the agent found no plumbed
    path for it (its answer names no MX), and now the family is known: the part goes
    again at once, on a binding with a path, without waiting or counting an attempt."""
    families.known.clear()
    plumb(world, BLUE)
    plumb(world, GREEN)
    plumb(world, "fd00::11")
    world.submit(binding=POOL, rcpt_to=("x@six.test",))
    assert chosen(world) == ["blue"]
    families.known["six.test"] = frozenset({6})
    outbound, d = world.agent.calls[0]
    d.callback(attrs.evolve(result_for(outbound, 451, "4.4.0 no plumbed proxy"),
                            waiting_for_proxy=True))
    assert chosen(world) == ["blue", "six"]
    assert world.scheduler.counters()["attempts"] == 0
    assert world.scheduler.counters()["waiting"] == 0


def test_mail_for_a_group_removed_by_a_reload_is_kept_and_goes_once_it_is_back(world):
    from hatwist.config import parse_config

    plumb(world, BLUE)
    message = world.submit(binding=POOL)
    world.agent.answer(0, 451, "4.4.1 later")
    world.config = parse_config(GROUPS.replace("binding_group pool", "binding_group other"))
    world.scheduler.config_changed()
    world.clock.advance(3 * 3600)  # past the group's message_expiration: it is not known
    assert len(world.agent.calls) == 1
    assert world.scheduler.queue_depths() == {(POOL, "dst.test"): 1}
    assert message.id in world.spool.messages
    world.config = parse_config(GROUPS.replace("  retry_interval = 300\n",
                                               "  message_expiration = 86400\n"))
    world.scheduler.config_changed()
    world.clock.advance(3600)
    [(outbound, _)] = world.agent.calls[1:]
    assert (outbound.id, outbound.binding, outbound.group) == (message.id, "blue", "pool")


class NoPathAgent:
    """Says at once, every time, that it found no plumbed path (as if it and the
    registry disagreed): the scheduler must not loop on it."""

    def __init__(self):
        self.calls = []

    def pending(self):
        return []

    def deliver(self, outbound):
        from twisted.internet import defer

        self.calls.append(outbound)
        return defer.succeed(attrs.evolve(result_for(outbound, 451, "4.4.0 no path"),
                                          waiting_for_proxy=True))


def test_a_group_attempt_goes_again_at_most_once_a_turn_so_disagreement_cannot_spin(families):
    for w in group_world(families, agent=NoPathAgent(), plumbed=(BLUE,)):
        w.submit(binding=POOL)
        assert len(w.agent.calls) == 2  # the attempt, and once more at once
        assert w.scheduler.counters()["waiting"] == 1  # then it waits like any other
