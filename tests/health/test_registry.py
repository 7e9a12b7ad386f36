"""
Tests for hatwist.health's registry: thresholds, counters, rotation, reloads.
"""

import pytest
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from hatwist.health import (
    ServerRegistry,
    ServerState,
    StateChange,
    UnknownServerError,
)

A, B, C = "10.0.0.1:5000", "10.0.0.2:5000", "proxy.example:5000"


def registry(servers=(A, B, C), *, success=3, failure=3):
    return ServerRegistry(servers, success_threshold=success, failure_threshold=failure)


def fail(reg, server, times, *, start=0.0, error="refused"):
    return [reg.record_failure(server, at=start + i, error=error) for i in range(times)]


def succeed(reg, server, times, *, start=0.0):
    return [reg.record_success(server, at=start + i, latency=0.01) for i in range(times)]


def test_every_server_starts_plumbed_and_unchecked():
    reg = registry()
    assert [s.state for s in reg.snapshot()] == [ServerState.PLUMBED] * 3
    status = reg.status(A)
    assert (status.checks, status.failures, status.state_changes) == (0, 0, 0)
    assert (status.last_check, status.last_error, status.last_latency) == (None, None, None)
    assert reg.is_plumbed(A)


def test_unplumbed_after_failure_threshold_consecutive_failures():
    reg = registry(failure=3)
    changes = fail(reg, A, 3, error="connection refused")
    assert changes[:2] == [None, None]
    assert changes[2] == StateChange(
        server=A,
        old=ServerState.PLUMBED,
        new=ServerState.UNPLUMBED,
        reason="3 consecutive failed checks, last: connection refused",
        at=2.0,
    )
    assert not reg.is_plumbed(A)
    assert reg.is_plumbed(B)


def test_a_success_resets_the_failure_run():
    reg = registry(failure=3)
    fail(reg, A, 2)
    reg.record_success(A, at=2.0)
    fail(reg, A, 2, start=3.0)
    assert reg.is_plumbed(A)
    assert reg.status(A).consecutive_failures == 2
    assert fail(reg, A, 1, start=5.0)[0] is not None


def test_plumbed_again_after_success_threshold_consecutive_successes():
    reg = registry(success=2, failure=1)
    fail(reg, A, 1)
    changes = succeed(reg, A, 2, start=10.0)
    assert changes[0] is None
    assert changes[1] == StateChange(
        server=A,
        old=ServerState.UNPLUMBED,
        new=ServerState.PLUMBED,
        reason="2 consecutive successful checks",
        at=11.0,
    )
    assert reg.is_plumbed(A)


def test_a_failure_resets_the_success_run():
    reg = registry(success=2, failure=1)
    fail(reg, A, 1)
    succeed(reg, A, 1, start=1.0)
    fail(reg, A, 1, start=2.0)
    succeed(reg, A, 1, start=3.0)
    assert not reg.is_plumbed(A)


def test_thresholds_of_one_flip_on_the_first_result():
    reg = registry(success=1, failure=1)
    assert fail(reg, A, 1)[0].new is ServerState.UNPLUMBED
    assert succeed(reg, A, 1)[0].new is ServerState.PLUMBED


def test_more_failures_when_already_unplumbed_change_nothing():
    reg = registry(failure=2)
    changes = fail(reg, A, 5)
    assert [c is not None for c in changes] == [False, True, False, False, False]
    assert reg.status(A).state_changes == 1


def test_counters_and_last_values():
    reg = registry(failure=2, success=2)
    reg.record_success(A, at=1.0, latency=0.25)
    reg.record_failure(A, at=2.0, error="timed out")
    reg.record_failure(A, at=3.0, error="refused")
    reg.record_success(A, at=4.0, latency=0.5)
    status = reg.status(A)
    assert status.checks == 4
    assert status.failures == 2
    assert status.state_changes == 1
    assert status.state is ServerState.UNPLUMBED
    assert (status.consecutive_successes, status.consecutive_failures) == (1, 0)
    assert status.last_check == 4.0
    # The latest failure's reason and the latest success's latency both survive.
    assert status.last_error == "refused"
    assert status.last_latency == 0.5


def test_snapshot_is_in_config_order_and_distinct():
    reg = registry((C, A, C, B, A))
    assert reg.servers == (C, A, B)
    assert [s.server for s in reg.snapshot()] == [C, A, B]


def test_snapshot_values_do_not_change_behind_the_callers_back():
    reg = registry()
    before = reg.status(A)
    fail(reg, A, 1)
    assert before.checks == 0


def test_plumbed_rotates_so_connections_spread_evenly():
    reg = registry()
    orders = [reg.plumbed([A, B, C]) for _ in range(6)]
    assert orders[:3] == [[A, B, C], [B, C, A], [C, A, B]]
    assert orders[3:] == orders[:3]
    firsts = [order[0] for order in orders]
    assert sorted(firsts) == sorted([A, B, C] * 2)


def test_plumbed_leaves_out_unplumbed_servers_and_spreads_over_the_rest():
    reg = registry(failure=1)
    fail(reg, B, 1)
    orders = [reg.plumbed([A, B, C]) for _ in range(4)]
    assert orders == [[A, C], [C, A], [A, C], [C, A]]


def test_plumbed_is_empty_when_every_candidate_is_unplumbed():
    reg = registry(failure=1)
    fail(reg, A, 1)
    fail(reg, B, 1)
    assert reg.plumbed([A, B]) == []
    assert reg.plumbed([]) == []


def test_plumbed_rotation_is_per_candidate_list():
    reg = registry()
    # Interleaved callers with different server lists each get their own turn.
    firsts_ab, firsts_bc = [], []
    for _ in range(4):
        firsts_ab.append(reg.plumbed([A, B])[0])
        firsts_bc.append(reg.plumbed([B, C])[0])
    assert firsts_ab == [A, B, A, B]
    assert firsts_bc == [B, C, B, C]


def test_plumbed_rotates_each_source_on_its_own():
    """An attempt asks once per family, each with its source: neither family's turn
    may move the other's (issue 12: one proxy took every IPv4 delivery)."""
    reg = registry()
    firsts_v4, firsts_v6 = [], []
    for _ in range(4):  # attempts to a dual-stack MX whose IPv4 address failed
        firsts_v4.append(reg.plumbed([A, B], source="192.0.2.9")[0])
        firsts_v6.append(reg.plumbed([A, B], source="2001:db8::9")[0])
    assert firsts_v4 == [A, B, A, B]
    assert firsts_v6 == [A, B, A, B]


def test_unknown_server_is_an_error_naming_it_and_the_known_ones():
    reg = registry((A, B))
    with pytest.raises(UnknownServerError) as caught:
        reg.record_failure(C, at=0.0, error="x")
    assert str(caught.value) == (f"proxy server {C} is not configured (configured: {A}, {B})")
    with pytest.raises(LookupError):
        reg.plumbed([A, C])


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "3"])
def test_thresholds_must_be_whole_numbers_of_at_least_one(bad):
    with pytest.raises(ValueError, match="success_threshold"):
        registry(success=bad)
    with pytest.raises(ValueError, match="failure_threshold"):
        registry(failure=bad)


def test_update_servers_keeps_state_of_servers_that_remain():
    reg = registry((A, B), failure=1)
    fail(reg, A, 1, error="refused")
    reg.update_servers([C, A], success_threshold=1, failure_threshold=5)
    assert reg.servers == (C, A)
    assert not reg.is_plumbed(A)
    assert reg.status(A).last_error == "refused"
    assert reg.status(A).failures == 1
    assert reg.is_plumbed(C)
    with pytest.raises(UnknownServerError):
        reg.status(B)
    # The new thresholds apply from the next check on.
    assert succeed(reg, A, 1)[0].new is ServerState.PLUMBED
    assert fail(reg, C, 4) == [None] * 4


def test_update_servers_forgets_a_dropped_server_for_good():
    reg = registry((A, B), failure=1)
    fail(reg, B, 1)
    reg.update_servers([A], success_threshold=3, failure_threshold=3)
    reg.update_servers([A, B], success_threshold=3, failure_threshold=3)
    assert reg.is_plumbed(B)
    assert reg.status(B).checks == 0


def test_subscribers_get_every_change_until_they_unsubscribe():
    reg = registry(success=1, failure=1)
    seen = []
    unsubscribe = reg.subscribe(seen.append)
    fail(reg, A, 1)
    succeed(reg, A, 1)
    unsubscribe()
    fail(reg, A, 1)
    assert [(c.old, c.new) for c in seen] == [
        (ServerState.PLUMBED, ServerState.UNPLUMBED),
        (ServerState.UNPLUMBED, ServerState.PLUMBED),
    ]
    unsubscribe()  # a second call is harmless


def test_a_failing_subscriber_does_not_hide_the_change_from_others():
    reg = registry(failure=1)
    seen = []
    events = []

    def broken(change):
        raise RuntimeError("observer bug")

    reg.subscribe(broken)
    reg.subscribe(seen.append)
    globalLogPublisher.addObserver(events.append)
    try:
        change = fail(reg, A, 1)[0]
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert seen == [change]
    assert any(e.get("log_failure") is not None for e in events)


def test_state_change_is_a_structured_log_event():
    reg = registry(failure=1, success=1)
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        fail(reg, A, 1, error="connection refused")
        succeed(reg, A, 1)
    finally:
        globalLogPublisher.removeObserver(events.append)
    flips = [e for e in events if e.get("hatwist_event") == "proxy_state_change"]
    assert [(e["server"], e["old"], e["new"]) for e in flips] == [
        (A, "plumbed", "unplumbed"),
        (A, "unplumbed", "plumbed"),
    ]
    assert flips[0]["reason"] == "1 consecutive failed check, last: connection refused"
    assert flips[0]["source"] is None
    assert formatEvent(flips[0]) == (
        f"proxy {A} plumbed -> unplumbed: 1 consecutive failed check, last: connection refused"
    )
    assert flips[0]["log_level"] is LogLevel.warn
    assert flips[1]["log_level"] is LogLevel.info


# -- per (server, source) paths: the smtp-mode check's verdict per source address -------

GOOD, BAD = "192.0.2.10", "192.0.2.11"


def test_a_failing_source_unplumbs_only_its_path_and_the_server_stays_usable():
    reg = registry((A,), failure=2)
    changes = [reg.record_sources(A, {GOOD: None, BAD: "no banner"}, at=t) for t in (1.0, 2.0)]
    assert changes[0] == []
    (change,) = changes[1]
    assert (change.server, change.source, change.new) == (A, BAD, ServerState.UNPLUMBED)
    assert change.reason == "2 consecutive failed checks, last: no banner"
    assert reg.is_plumbed(A) and reg.is_plumbed(A, source=GOOD)
    assert not reg.is_plumbed(A, source=BAD)
    assert reg.plumbed([A], source=GOOD) == [A]
    assert reg.plumbed([A], source=BAD) == []
    status = reg.status(A)
    assert (status.state, status.failures, status.consecutive_successes) == (
        ServerState.PLUMBED,
        0,
        2,
    )
    assert [(p.source, p.state, p.consecutive_failures) for p in status.paths] == [
        (GOOD, ServerState.PLUMBED, 0),
        (BAD, ServerState.UNPLUMBED, 2),
    ]
    assert status.paths[1].last_error == "no banner"


def test_when_every_source_fails_the_server_fails_too_naming_each_source():
    reg = registry((A,), failure=1)
    changes = reg.record_sources(A, {GOOD: "refused", BAD: "timed out"}, at=1.0)
    assert {(c.source, c.new) for c in changes} == {
        (None, ServerState.UNPLUMBED),
        (GOOD, ServerState.UNPLUMBED),
        (BAD, ServerState.UNPLUMBED),
    }
    assert reg.status(A).last_error == f"source {GOOD}: refused; source {BAD}: timed out"
    assert not reg.is_plumbed(A) and not reg.is_plumbed(A, source=GOOD)


def test_a_path_is_plumbed_again_after_the_success_threshold():
    reg = registry((A,), failure=1, success=2)
    reg.record_sources(A, {GOOD: None, BAD: "no banner"}, at=1.0)
    assert reg.record_sources(A, {GOOD: None, BAD: None}, at=2.0) == []
    assert not reg.is_plumbed(A, source=BAD)
    (change,) = reg.record_sources(A, {GOOD: None, BAD: None}, at=3.0)
    assert (change.source, change.old, change.new) == (
        BAD,
        ServerState.UNPLUMBED,
        ServerState.PLUMBED,
    )
    assert reg.is_plumbed(A, source=BAD)


def test_a_source_no_longer_checked_is_forgotten_and_an_unknown_one_follows_the_server():
    reg = registry((A,), failure=1)
    reg.record_sources(A, {GOOD: None, BAD: "no banner"}, at=1.0)
    reg.record_sources(A, {GOOD: None}, at=2.0)  # a reload dropped the binding using BAD
    assert [p.source for p in reg.status(A).paths] == [GOOD]
    assert reg.is_plumbed(A, source=BAD)
    fail(reg, A, 1)
    assert not reg.is_plumbed(A, source="192.0.2.99")


def test_a_path_state_change_is_logged_with_its_source():
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        registry((A,), failure=1).record_sources(A, {GOOD: None, BAD: "no banner"}, at=1.0)
    finally:
        globalLogPublisher.removeObserver(events.append)
    (event,) = [e for e in events if e.get("new") == "unplumbed"]
    assert (event["server"], event["source"], event["old"]) == (A, BAD, "plumbed")
    assert event["hatwist_event"] == "proxy_state_change"
    assert event["log_level"] is LogLevel.warn
    assert formatEvent(event).startswith(f"proxy {A} from source {BAD} plumbed -> unplumbed: ")
