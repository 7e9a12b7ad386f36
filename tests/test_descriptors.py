"""hatwist._descriptors: the start-up check that the configured bounds fit RLIMIT_NOFILE."""

from __future__ import annotations

import resource

import attrs
import pytest
import pytest_twisted
from twisted.internet import defer

from hatwist import _descriptors
from hatwist._descriptors import MARGIN, check_descriptor_limit, descriptors_needed
from hatwist.config import parse_config

from .delivery.test_attempt import logged
from .test_tap import CONFIG, relay_for

SERVICE = parse_config(
    "max_inbound_connections = 100\nmax_deliveries_in_flight = 50\nstatus_max_connections = 10\n"
).service


class Limits:
    """getrlimit/setrlimit stand-ins: the process's limits are left alone."""

    def __init__(self, soft, hard, refuse=False):
        self.soft, self.hard, self.refuse = soft, hard, refuse
        self.set_to = []

    def getrlimit(self, which):
        assert which == resource.RLIMIT_NOFILE
        return self.soft, self.hard

    def setrlimit(self, which, limits):
        if self.refuse:
            raise ValueError("not allowed")
        self.set_to.append(limits)
        self.soft, self.hard = limits


def _check(limits):
    with logged() as events:
        found = check_descriptor_limit(
            SERVICE, 2, getrlimit=limits.getrlimit, setrlimit=limits.setrlimit
        )
    return found, [e for e in events if e.get("log_namespace") == "hatwist.descriptors"]


def test_the_bounds_add_up_with_a_margin():
    assert descriptors_needed(SERVICE, 2) == 100 + 2 * 50 + 10 + 4 + MARGIN


def test_enough_descriptors_changes_nothing_and_says_nothing():
    limits = Limits(4096, 4096)
    found, events = _check(limits)
    assert found.enough and limits.set_to == [] and events == []


def test_a_low_soft_limit_is_raised_to_the_hard_limit():
    limits = Limits(256, 8192)
    found, events = _check(limits)
    assert limits.set_to == [(8192, 8192)] and found.enough
    [event] = events
    assert event["before"] == 256 and event["soft"] == 8192


def test_a_hard_limit_too_low_too_is_a_warning_naming_the_keys():
    limits = Limits(128, 256)
    found, events = _check(limits)
    assert limits.set_to == [(256, 256)] and not found.enough
    warning = events[-1]
    assert warning["log_level"].name == "warn"
    text = warning["log_format"]
    for key in ("max_inbound_connections", "max_deliveries_in_flight", "status_max_connections"):
        assert key in text
    assert warning["soft"] == 256 and warning["needed"] == descriptors_needed(SERVICE, 2)


def test_an_unlimited_hard_limit_raises_the_soft_one_to_what_is_needed():
    limits = Limits(100, resource.RLIM_INFINITY)
    found, _ = _check(limits)
    assert limits.set_to == [(descriptors_needed(SERVICE, 2), resource.RLIM_INFINITY)]
    assert found.enough


def test_a_refused_raise_leaves_the_limit_and_warns():
    limits = Limits(100, 8192, refuse=True)
    found, events = _check(limits)
    assert found.soft == 100 and not found.enough
    assert [e["log_level"].name for e in events] == ["warn"]


@pytest_twisted.ensureDeferred
async def test_the_relay_checks_at_start_and_its_status_site_has_the_configured_bounds(
    tmp_path, reactor, monkeypatch
):
    limits = Limits(64, 64)
    monkeypatch.setattr(_descriptors, "raise_descriptor_limit", _fake(limits))
    text = CONFIG + "status_max_connections = 7\nstatus_idle_timeout = 9\n"
    relay = relay_for(tmp_path, reactor, text)
    assert (relay.status_site.max_connections, relay.status_site.timeOut) == (7, 9)
    with logged() as events:
        relay.startService()
    try:
        warnings = [e for e in events if e.get("log_namespace") == "hatwist.descriptors"]
        assert [e["log_level"].name for e in warnings] == ["warn"]
    finally:
        await defer.maybeDeferred(relay.stopService).addTimeout(10, reactor)


def _fake(limits):
    real = _descriptors.raise_descriptor_limit

    def raise_limit(needed, **_):
        return real(needed, getrlimit=limits.getrlimit, setrlimit=limits.setrlimit)

    return raise_limit


def test_descriptor_limit_values_are_frozen():
    found = check_descriptor_limit(SERVICE, 0, getrlimit=Limits(10**6, 10**6).getrlimit)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        found.soft = 1
