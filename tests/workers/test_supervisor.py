"""Tests for hatwist.workers._supervisor with a memory reactor and fake worker processes.

The real processes, signals and sockets are in tests.workers.test_relay_workers; here the
clock is task.Clock's, so restart back-off and stop deadlines are exact.
"""

from __future__ import annotations

import signal

import pytest
from twisted.internet import error
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from hatwist.config import parse_config
from hatwist.workers import Supervisor
from hatwist.workers._supervisor import FIRST_BACKOFF, MAX_BACKOFF, STOP_MARGIN


class FakeProcess:
    def __init__(self, reactor: ProcessReactor, proto, argv) -> None:
        self.child_fds: dict | None = None
        self.reactor = reactor
        self.proto = proto
        self.argv = argv
        self.pid = reactor.next_pid
        reactor.next_pid += 1
        self.signals: list[str] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)

    def end(self, *, signal: int | None = None, code: int | None = None) -> None:
        reason = (error.ProcessTerminated(exitCode=code, signal=signal) if signal or code
                  else error.ProcessDone(0))
        self.proto.processEnded(Failure(reason))


class ProcessReactor(MemoryReactorClock):
    def __init__(self) -> None:
        super().__init__()
        self.next_pid = 1000
        self.processes: list[FakeProcess] = []

    def spawnProcess(self, proto, executable, args, env=None, path=None, childFDs=None,
                     **kwargs):
        process = FakeProcess(self, proto, list(args))
        self.processes.append(process)
        process.child_fds = childFDs
        return process


@pytest.fixture
def supervised(tmp_path):
    config = parse_config(f'workers = 2\nspool_dir = "{tmp_path}/spool"\n'
                          "listen = 127.0.0.1:0\nshutdown_grace = 5\n")
    reactor = ProcessReactor()
    supervisor = Supervisor(config, reactor=reactor,
                            argv_for=lambda n: ["worker", str(n)], cwd=str(tmp_path))
    supervisor.privilegedStartService()
    supervisor.startService()
    yield reactor, supervisor
    supervisor._close_listeners()
    if supervisor._previous_hup is not None:  # startService routed the real SIGHUP
        signal.signal(signal.SIGHUP, supervisor._previous_hup)


def test_starts_one_process_per_worker_with_its_own_listening_socket_and_a_partition(
        supervised, tmp_path):
    reactor, supervisor = supervised
    assert [p.argv for p in reactor.processes] == [["worker", "1"], ["worker", "2"]]
    one, two = (process.child_fds[3] for process in reactor.processes)
    assert (one, two) == (supervisor.listen_fd(1), supervisor.listen_fd(2)) and one != two
    names = {s.getsockname() for s in supervisor.listen_sockets}
    assert len(names) == 1 and names.pop()[1] != 0  # port 0: chosen once, shared
    assert (tmp_path / "spool" / "worker-1").is_dir()
    assert (tmp_path / "spool" / "worker-2").is_dir()


def test_a_dead_worker_is_restarted_with_backoff_for_quick_deaths(supervised):
    reactor, supervisor = supervised
    first = reactor.processes[0]
    first.end(signal=9)
    slot = supervisor.slots[0]
    assert slot.state == "restarting" and slot.pid is None
    reactor.advance(FIRST_BACKOFF - 0.01)
    assert len(reactor.processes) == 2
    reactor.advance(0.02)
    assert [p.argv for p in reactor.processes[2:]] == [["worker", "1"]]
    assert reactor.processes[2].child_fds[3] == supervisor.listen_fd(1)  # the same socket
    assert slot.restarts == 1 and slot.pid == reactor.processes[2].pid
    # Dies again at once: twice the wait, and so on up to the cap.
    reactor.processes[2].end(code=1)
    reactor.advance(FIRST_BACKOFF * 2 - 0.01)
    assert len(reactor.processes) == 3
    reactor.advance(0.02)
    assert len(reactor.processes) == 4
    for _ in range(12):
        reactor.processes[-1].end(code=1)
        reactor.advance(MAX_BACKOFF)
    assert slot.restarts == 14
    # A worker that ran a while is restarted after the first, short wait again.
    reactor.advance(60)
    reactor.processes[-1].end(signal=9)
    reactor.advance(FIRST_BACKOFF)
    assert slot.restarts == 15
    assert supervisor.slots[1].restarts == 0  # the sibling was never touched


def test_stop_terms_every_worker_and_kills_one_that_overruns(supervised):
    reactor, supervisor = supervised
    one, two = reactor.processes
    stopped = supervisor.stopService()
    assert one.signals == ["TERM"] and two.signals == ["TERM"]
    assert supervisor.listen_sockets == []  # new connections are refused from now on
    one.end(signal=15)
    reactor.advance(5 + STOP_MARGIN - 0.1)
    assert two.signals == ["TERM"] and not stopped.called
    reactor.advance(0.2)
    assert two.signals == ["TERM", "KILL"]
    two.end(signal=9)
    assert stopped.called
    assert len(reactor.processes) == 2  # nothing restarted while stopping
    reactor.advance(MAX_BACKOFF)
    assert len(reactor.processes) == 2


def test_a_restart_pending_at_stop_is_cancelled(supervised):
    reactor, supervisor = supervised
    reactor.processes[0].end(signal=9)
    stopped = supervisor.stopService()
    reactor.processes[1].end(signal=15)
    assert stopped.called
    reactor.advance(MAX_BACKOFF)
    assert len(reactor.processes) == 2


def test_a_single_relays_spool_left_in_spool_dir_is_named_at_start(tmp_path):
    from twisted.logger import globalLogPublisher

    from hatwist.spool._db import DATABASE

    (tmp_path / "spool").mkdir()
    (tmp_path / "spool" / DATABASE).write_bytes(b"")
    (tmp_path / "spool" / "worker-3").mkdir()
    config = parse_config(f'workers = 2\nspool_dir = "{tmp_path}/spool"\nlisten = 127.0.0.1:0\n')
    supervisor = Supervisor(config, reactor=ProcessReactor(), argv_for=lambda n: ["w"],
                            cwd=str(tmp_path))
    seen = []
    globalLogPublisher.addObserver(seen.append)
    try:
        supervisor._warn_orphan_partitions()
    finally:
        globalLogPublisher.removeObserver(seen.append)
    texts = [e["log_format"] for e in seen
             if str(e.get("log_namespace")).startswith("hatwist.workers")]
    assert any("single relay's spool" in t for t in texts)
    assert any("belongs to worker {n}" in t for t in texts)
