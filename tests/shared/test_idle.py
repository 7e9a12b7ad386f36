"""hatwist.shared._idle: given-back slots kept a moment for the next start."""

from __future__ import annotations

from hatwist.shared import Lease
from hatwist.shared._idle import IdleLeases

A, B = ("b1", "a.example"), ("b1", "b.example")


def test_the_newest_idle_lease_of_a_queue_is_taken_first():
    idle = IdleLeases(linger=1.0)
    idle.add(Lease(A, "1"), 0.0)
    idle.add(Lease(A, "2"), 0.5)
    assert idle.take(B) is None
    assert idle.take(A) == Lease(A, "2")
    assert len(idle) == 1


def test_leases_idle_for_the_linger_are_handed_out_for_release():
    idle = IdleLeases(linger=1.0)
    idle.add(Lease(A, "1"), 0.0)
    idle.add(Lease(B, "2"), 0.6)
    assert idle.next_expiry() == 1.0
    assert idle.expired(0.9) == []
    assert idle.expired(1.0) == [Lease(A, "1")]
    assert idle.next_expiry() == 1.6
    assert idle.take_all() == [Lease(B, "2")]
    assert len(idle) == 0 and idle.next_expiry() is None
