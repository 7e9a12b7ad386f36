"""
Tests for hatwist.health.HealthChecker, driven by task.Clock and a probe whose
Deferreds the test fires by hand.
"""

import pytest
from twisted.internet import defer, task
from twisted.internet.error import ConnectingCancelledError, ConnectionRefusedError
from twisted.logger import globalLogPublisher
from zope.interface import implementer
from zope.interface.verify import verifyObject

from hatwist.config import HealthCheckMode, HealthSettings, ServerAddress
from hatwist.health import (
    HealthChecker,
    IHealthProbe,
    ServerRegistry,
    ServerState,
    SourceResults,
)

A = ServerAddress("127.0.0.1", 5000)
B = ServerAddress("proxy.example", 5000)


@implementer(IHealthProbe)
class ControlledProbe:
    """
    Hands out one pending Deferred per check and remembers it.

    ``cancelled`` counts cancellations, which stand for "aborted its connection".
    """

    def __init__(self):
        self.checks = []
        self.cancelled = 0

    def check(self, server):
        def cancel(d):
            self.cancelled += 1

        d = defer.Deferred(cancel)
        self.checks.append((server, d))
        return d

    def pending(self, server=A):
        return [d for s, d in self.checks if s == server and not d.called]

    def count(self, server=A):
        return sum(1 for s, _ in self.checks if s == server)


def settings(interval=5, timeout=1, failure=3, success=3):
    return HealthSettings(
        interval=interval,
        timeout=timeout,
        failure_threshold=failure,
        success_threshold=success,
        mode=HealthCheckMode.CONNECT,
        target=None,
    )


def make(servers=(A,), probe=None, **kw):
    s = settings(**kw)
    clock = task.Clock()
    registry = ServerRegistry(
        servers, success_threshold=s.success_threshold, failure_threshold=s.failure_threshold
    )
    probe = probe or ControlledProbe()
    checker = HealthChecker(registry, s, probe, reactor=clock)
    return checker, registry, probe, clock


def test_the_fake_probe_provides_the_interface():
    verifyObject(IHealthProbe, ControlledProbe())


def test_first_check_runs_at_start_up_then_every_interval():
    checker, registry, probe, clock = make(interval=5, timeout=1)
    checker.startService()
    assert probe.count() == 1
    probe.pending()[0].callback(None)
    clock.advance(4.9)
    assert probe.count() == 1
    clock.advance(0.1)
    assert probe.count() == 2
    probe.pending()[0].callback(None)
    clock.advance(5)
    assert probe.count() == 3
    assert registry.status(A).checks == 2
    checker.stopService()


def test_a_success_is_recorded_with_its_latency_and_time():
    checker, registry, probe, clock = make(interval=5, timeout=2)
    clock.advance(100)
    checker.startService()
    clock.advance(0.25)
    probe.pending()[0].callback(None)
    status = registry.status(A)
    assert (status.checks, status.failures) == (1, 0)
    assert status.last_check == 100.25
    assert status.last_latency == pytest.approx(0.25)
    checker.stopService()


def test_checks_of_one_server_never_overlap():
    checker, _registry, probe, clock = make(interval=1, timeout=10)
    checker.startService()
    for _ in range(5):
        clock.advance(1)
    assert probe.count() == 1
    probe.pending()[0].callback(None)
    # The next check waits for the next interval boundary, not another full interval.
    assert probe.count() == 1
    clock.advance(1)
    assert probe.count() == 2
    assert len(probe.pending()) == 1
    checker.stopService()


def test_a_check_that_never_fires_is_abandoned_at_the_timeout_and_counts_as_failure():
    checker, registry, probe, clock = make(interval=5, timeout=1)
    checker.startService()
    clock.advance(0.999)
    assert registry.status(A).checks == 0
    clock.advance(0.001)
    assert probe.cancelled == 1
    status = registry.status(A)
    assert (status.checks, status.failures) == (1, 1)
    assert status.last_error == "check timed out after 1s"
    assert status.last_check == 1.0
    # The loop goes on.
    clock.advance(4)
    assert probe.count() == 2
    checker.stopService()


def test_a_probe_whose_canceller_reports_its_own_error_still_counts_as_a_timeout():
    @implementer(IHealthProbe)
    class ConnectingProbe:
        def check(self, server):
            # Like a cancelled endpoint connect: ConnectingCancelledError, not CancelledError.
            return defer.Deferred(lambda d: d.errback(ConnectingCancelledError(None)))

    checker, registry, _probe, clock = make(probe=ConnectingProbe(), timeout=1)
    checker.startService()
    clock.advance(1)
    assert registry.status(A).last_error == "check timed out after 1s"
    checker.stopService()


def test_timeouts_unplumb_after_the_failure_threshold():
    checker, registry, _probe, clock = make(interval=5, timeout=1, failure=3)
    checker.startService()
    clock.pump([1, 4, 1, 4])
    assert registry.is_plumbed(A)
    clock.advance(1)
    assert not registry.is_plumbed(A)
    assert registry.status(A).consecutive_failures == 3
    checker.stopService()


def test_successes_plumb_again_after_the_success_threshold():
    checker, registry, probe, clock = make(interval=5, timeout=1, failure=1, success=2)
    checker.startService()
    probe.pending()[0].errback(ConnectionRefusedError())
    assert not registry.is_plumbed(A)
    assert registry.status(A).last_error.startswith("ConnectionRefusedError: ")
    clock.advance(5)
    probe.pending()[0].callback(None)
    assert not registry.is_plumbed(A)
    clock.advance(5)
    probe.pending()[0].callback(None)
    assert registry.is_plumbed(A)
    checker.stopService()


def test_an_exception_raised_by_the_probe_is_a_failure_and_the_loop_goes_on():
    @implementer(IHealthProbe)
    class BrokenProbe:
        calls = 0

        def check(self, server):
            self.calls += 1
            raise RuntimeError("probe bug")

    probe = BrokenProbe()
    checker, registry, _, clock = make(probe=probe, interval=5)
    checker.startService()
    clock.advance(5)
    clock.advance(5)
    assert probe.calls == 3
    status = registry.status(A)
    assert status.failures == 3
    assert status.last_error == "RuntimeError: probe bug"
    assert not registry.is_plumbed(A)
    checker.stopService()


def test_a_probe_returning_a_failed_deferred_does_not_stop_the_loop():
    @implementer(IHealthProbe)
    class FailingProbe:
        def check(self, server):
            return defer.fail(ValueError())

    checker, registry, _, clock = make(probe=FailingProbe(), interval=5)
    checker.startService()
    clock.advance(5)
    assert registry.status(A).failures == 2
    assert registry.status(A).last_error == "ValueError"
    checker.stopService()


def test_a_failing_state_change_subscriber_does_not_stop_the_loop():
    checker, registry, probe, clock = make(interval=5, failure=1)

    def broken(change):
        raise RuntimeError("subscriber bug")

    registry.subscribe(broken)
    checker.startService()
    probe.pending()[0].errback(ConnectionRefusedError())
    clock.advance(5)
    assert probe.count() == 2
    checker.stopService()


def test_each_server_has_its_own_loop():
    checker, registry, probe, clock = make(servers=(A, B), interval=5, failure=1)
    checker.startService()
    assert (probe.count(A), probe.count(B)) == (1, 1)
    probe.pending(A)[0].errback(ConnectionRefusedError())
    clock.advance(1)  # B's check times out too
    assert [s.state for s in registry.snapshot()] == [ServerState.UNPLUMBED] * 2
    clock.advance(4)
    assert (probe.count(A), probe.count(B)) == (2, 2)
    checker.stopService()


def test_stop_cancels_checks_in_flight_records_nothing_and_leaves_no_timer():
    checker, registry, probe, clock = make(servers=(A, B), interval=5, timeout=1)
    checker.startService()
    probe.pending(B)[0].callback(None)
    stopped = checker.stopService()
    assert stopped.called
    assert probe.cancelled == 1
    assert registry.status(A).checks == 0
    assert clock.getDelayedCalls() == []
    clock.advance(10)
    assert (probe.count(A), probe.count(B)) == (1, 1)
    assert not checker.running


def test_reconfigure_follows_the_registry_and_the_new_interval():
    checker, registry, probe, clock = make(servers=(A,), interval=5, timeout=1)
    checker.startService()
    probe.pending(A)[0].callback(None)
    registry.update_servers([B], success_threshold=3, failure_threshold=3)
    checker.reconfigure(settings(interval=2, timeout=1), probe)
    assert probe.count(B) == 1  # a new server is checked at once
    probe.pending(B)[0].callback(None)
    clock.advance(2)
    assert probe.count(B) == 2
    clock.advance(10)
    assert probe.count(A) == 1  # the dropped server is no longer checked
    checker.stopService()


def test_a_result_for_a_server_dropped_meanwhile_is_ignored():
    @implementer(IHealthProbe)
    class Uncancellable:
        def __init__(self):
            self.pending = []

        def check(self, server):
            d = defer.Deferred()
            self.pending.append(d)
            return d

    probe = Uncancellable()
    checker, registry, _, clock = make(servers=(A, B), probe=probe, timeout=1)
    checker.startService()
    registry.update_servers([B], success_threshold=3, failure_threshold=3)
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        clock.advance(1)  # A's check times out with A no longer in the registry
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert [s.server for s in registry.snapshot()] == [B]
    assert registry.status(B).failures == 1
    assert [e for e in events if e.get("log_failure")] == []
    checker.stopService()


def test_an_error_while_recording_a_result_does_not_stop_the_loop():
    class BrokenRegistry(ServerRegistry):
        def record_success(self, server, **kw):
            raise RuntimeError("registry bug")

    s = settings(interval=5)
    clock = task.Clock()
    registry = BrokenRegistry([A], success_threshold=3, failure_threshold=3)
    probe = ControlledProbe()
    checker = HealthChecker(registry, s, probe, reactor=clock)
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        checker.startService()
        probe.pending()[0].callback(None)
        clock.advance(5)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert probe.count() == 2
    assert [e["log_failure"].value.args for e in events if e.get("log_failure")] == [
        ("registry bug",)
    ]
    checker.stopService()


def test_a_per_source_verdict_is_recorded_per_path():
    checker, registry, probe, clock = make(failure=1)
    checker.startService()
    clock.advance(0.25)
    (d,) = probe.pending()
    d.callback(SourceResults([("192.0.2.10", None), ("192.0.2.11", "no banner")]))
    status = registry.status(A)
    assert (status.state, status.checks, status.last_latency) == (ServerState.PLUMBED, 1, 0.25)
    assert {p.source: p.state for p in status.paths} == {
        "192.0.2.10": ServerState.PLUMBED,
        "192.0.2.11": ServerState.UNPLUMBED,
    }
    checker.stopService()


def test_a_probe_reporting_per_source_at_the_timeout_keeps_the_sources_that_answered():
    @implementer(IHealthProbe)
    class HalfAnsweredProbe:
        def check(self, server):
            # Like SMTPBannerProbe: cancelled, it reports which sources answered in time.
            return defer.Deferred(
                lambda d: d.callback(
                    SourceResults([("192.0.2.10", None), ("192.0.2.11", "timed out after 1s")])
                )
            )

    checker, registry, _probe, clock = make(probe=HalfAnsweredProbe(), timeout=1, failure=1)
    checker.startService()
    clock.advance(1)
    assert registry.is_plumbed(A, source="192.0.2.10")
    assert not registry.is_plumbed(A, source="192.0.2.11")
    assert registry.status(A).failures == 0
    checker.stopService()
