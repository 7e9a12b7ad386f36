"""hatwist.shared._values: decisions, the shares of degraded mode, key names."""

from __future__ import annotations

import pytest

from hatwist.config.values import Throttle, redacted_url
from hatwist.shared import Decision, Lease, Refusal
from hatwist.shared._values import divided_slots, divided_throttle, redis_key


@pytest.mark.parametrize(("slots", "nodes", "share"),
                         [(10, 1, 10), (10, 3, 3), (10, 0, 10), (1, 2, 0), (4, 2, 2)])  # fmt: skip
def test_a_nodes_share_of_slots_rounds_down(slots, nodes, share):
    assert divided_slots(slots, nodes) == share
    assert divided_slots(slots, nodes) * max(1, nodes) <= slots  # the fleet never exceeds


def test_a_nodes_share_of_a_throttle_keeps_the_window_and_rounds_down():
    assert divided_throttle(Throttle(10, 3600), 3) == Throttle(3, 3600)
    assert divided_throttle(Throttle(10, 3600), 1) == Throttle(10, 3600)
    assert divided_throttle(Throttle(1, 3600), 2) == 0  # nothing: wait for Redis
    assert divided_throttle(None, 5) is None


def test_keys_of_two_queues_never_collide_through_a_colon():
    one, other = ("a:b", "c"), ("a", "b:c")
    assert redis_key("hatwist", "slots", one) != redis_key("hatwist", "slots", other)
    assert redis_key("hatwist", "throttle", ("b1", "example.com")) == (
        "hatwist:throttle:b1:example.com"
    )


def test_a_password_never_reaches_a_log_line():
    assert redacted_url("redis://:s3cret@10.0.0.5:6380/2") == "redis://:***@10.0.0.5:6380/2"
    assert redacted_url("rediss://user:pw@[::1]/0") == "rediss://user:***@[::1]/0"
    assert redacted_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_decisions():
    lease = Lease(("b", "d"), "n:1")
    assert Decision.grant(lease).granted
    refused = Decision.refuse(Refusal.THROTTLE, 3.0)
    assert not refused.granted and refused.wait == 3.0
