# -*- test-case-name: tests.workers.test_supervisor -*-
"""
``twistd hatwist`` with ``workers > 1``: one small process that keeps N relay workers up.

The supervisor does no mail work at all, so it has nothing to lose when a worker dies.
It binds ``listen`` once per worker (N sockets in one SO_REUSEPORT group, the first
bound exclusively: see :mod:`._endpoints`) and hands worker N socket N, starts worker N
on spool partition ``spool_dir/worker-N``, and when a worker exits it starts another on
the same partition and the same socket: its spool recovery picks up whatever the dead
one had accepted, and it accepts what the kernel queued on the socket meanwhile. Quick
repeated deaths back off (up to :data:`MAX_BACKOFF`), so a worker that cannot start does
not spin.

Signals keep today's promises across processes: SIGTERM (twistd stops the service)
sends SIGTERM to every worker and waits for each to finish its own graceful stop
(``shutdown_grace`` and then some), killing only a worker that overruns. SIGHUP is
validated here first: an invalid file is refused once, in the supervisor's log, and
the workers never see it; a valid one is passed on as SIGHUP to every worker, each of
which reloads atomically as a single relay does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application import service
from twisted.internet import defer, error, protocol, threads
from twisted.logger import Logger

from hatwist._signals import install_sighup
from hatwist.config import Config, ConfigError, load_config
from hatwist.spool._db import DATABASE as SINGLE_RELAY_SPOOL

from ._endpoints import listening_sockets
from ._log import WORKER_ENV
from ._share import partition_dir

__all__ = ["MAX_BACKOFF", "STOP_MARGIN", "Supervisor", "WorkerSlot"]

#: Seconds before restarting a worker that died; doubled for each quick death in a row.
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
#: A worker that ran at least this long died "slowly": the next restart is immediate-ish.
QUICK_DEATH = 10.0
#: Seconds beyond ``shutdown_grace`` a worker gets to stop after SIGTERM before SIGKILL.
STOP_MARGIN = 10.0
#: The worker's descriptor number for the inherited listening socket.
LISTEN_FD = 3
#: Exit status when the relay cannot start, as a single relay's (hatwist.tap).
EXIT_CANNOT_START = 2


class WorkerSlot(protocol.ProcessProtocol):
    """Worker number ``worker``: whichever process currently runs it, and its history."""

    log = Logger(namespace="hatwist.workers")

    def __init__(self, supervisor: Supervisor, worker: int) -> None:
        self.supervisor = supervisor
        self.worker = worker
        self.process: Any = None
        self.pid: int | None = None
        self.state = "starting"
        self.restarts = 0
        self.started_at = 0.0
        self._quick_deaths = 0
        self._restart: Any = None
        self._ended: list[defer.Deferred[None]] = []

    # -- lifecycle driven by the supervisor -----------------------------------------

    def spawn(self) -> None:
        supervisor = self.supervisor
        argv = supervisor.argv_for(self.worker)
        self.started_at = supervisor.reactor.seconds()
        self.state = "running"
        self.process = supervisor.reactor.spawnProcess(
            self, argv[0], argv,
            env={**os.environ, "PYTHONUNBUFFERED": "1", WORKER_ENV: str(self.worker)},
            path=supervisor.cwd,
            childFDs={0: "w", 1: 1, 2: 2, LISTEN_FD: supervisor.listen_fd(self.worker)},
        )
        self.pid = self.process.pid
        self.log.info("worker {worker} started (pid {pid}) on spool partition {partition}",
                      worker=self.worker, pid=self.pid,
                      partition=partition_dir(supervisor.config.service.spool_dir, self.worker))

    def signal(self, name: str) -> None:
        if self.process is not None and self.pid is not None:
            with contextlib.suppress(error.ProcessExitedAlready, OSError):
                self.process.signalProcess(name)

    def ended(self) -> defer.Deferred[None]:
        """Fires once no process runs this worker (at once if none does)."""
        if self.pid is None:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred(self._ended.remove)  # cancel: forget it
        self._ended.append(d)
        return d

    def cancel_restart(self) -> None:
        if self._restart is not None and self._restart.active():
            self._restart.cancel()
        self._restart = None

    # -- ProcessProtocol ------------------------------------------------------------

    def processEnded(self, reason: Any) -> None:
        value = reason.value
        how = (f"exit status {value.exitCode}" if value.exitCode is not None
               else f"signal {value.signal}")
        pid, self.pid, self.process = self.pid, None, None
        waiters, self._ended = self._ended, []
        for d in waiters:
            d.callback(None)
        supervisor = self.supervisor
        if supervisor.stopping:
            self.state = "stopped"
            self.log.info("worker {worker} (pid {pid}) stopped: {how}",
                          worker=self.worker, pid=pid, how=how)
            return
        lived = supervisor.reactor.seconds() - self.started_at
        self._quick_deaths = self._quick_deaths + 1 if lived < QUICK_DEATH else 0
        delay = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** max(0, self._quick_deaths - 1))
        self.state = "restarting"
        self.log.error(
            "worker {worker} (pid {pid}) died ({how}) after {lived:.1f}s; restarting it on "
            "the same spool partition in {delay}s",
            worker=self.worker, pid=pid, how=how, lived=lived, delay=delay,
        )
        self._restart = supervisor.reactor.callLater(delay, self._respawn)

    def _respawn(self) -> None:
        self._restart = None
        if self.supervisor.stopping:
            return
        self.restarts += 1
        try:
            self.spawn()
        except Exception:
            self.log.failure("worker {worker} could not be started", worker=self.worker)
            self.state = "restarting"
            self._restart = self.supervisor.reactor.callLater(MAX_BACKOFF, self._respawn)


class Supervisor(service.MultiService):
    """
    Runs ``config.service.workers`` worker processes; see the module docstring.

    :param argv_for: the command line of worker N (built by ``hatwist.tap``, which knows
        how twistd runs a worker).
    :param load: reads and validates the config file (off the reactor thread) at SIGHUP.
    """

    log = Logger(namespace="hatwist.workers")

    def __init__(
        self, config: Config, *, reactor: Any, argv_for: Callable[[int], Sequence[str]],
        load: Callable[[str], Config] = load_config, cwd: str | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.argv_for = argv_for
        self.cwd = cwd or os.getcwd()
        self.workers = config.service.workers
        self.slots = [WorkerSlot(self, n) for n in range(1, self.workers + 1)]
        self.stopping = False
        #: Worker N's listening socket is ``listen_sockets[N - 1]`` (empty once closed).
        self.listen_sockets: list[socket.socket] = []
        self._load = load
        self._previous_hup: Any = None
        #: Errors that end twistd with one line and exit status 2 (set by the wiring).
        self.startup_errors: tuple[type[Exception], ...] = (BindError,)
        self.exit_on_startup_error = False
        self.status_listener: Any = None

    def listen_fd(self, worker: int) -> int:
        """The descriptor of worker ``worker``'s listening socket (in this process)."""
        assert self.listen_sockets, "not bound"
        return self.listen_sockets[worker - 1].fileno()

    def _close_listeners(self) -> None:
        sockets, self.listen_sockets = self.listen_sockets, []
        for sock in sockets:
            sock.close()

    # -- start ----------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        """Bind ``listen`` (before twistd drops privileges) and make the partitions."""
        try:
            self._bind()
            super().privilegedStartService()
        except Exception as e:
            self._close_listeners()
            if self.exit_on_startup_error and isinstance(e, self.startup_errors):
                self.log.critical("cannot start: {error}", error=str(e))
                print(f"hatwist: cannot start: {e}", file=sys.stderr)
                raise SystemExit(EXIT_CANNOT_START) from None
            raise

    def _bind(self) -> None:
        listen = self.config.service.listen
        family = socket.AF_INET6 if listen.ip_version == 6 else socket.AF_INET
        try:
            self.listen_sockets = listening_sockets(listen.host, listen.port, family,
                                                    self.workers)
        except OSError as e:
            raise BindError(f"listen {listen}: {_why(e)}") from None
        spool_dir = self.config.service.spool_dir
        os.makedirs(spool_dir, mode=0o700, exist_ok=True)
        for slot in self.slots:
            with contextlib.suppress(FileExistsError):
                os.mkdir(partition_dir(spool_dir, slot.worker), 0o700)

    def startService(self) -> None:
        if not self.listen_sockets:
            self.privilegedStartService()
        self.log.info("hatwist supervisor starting {count} workers: config {config}, "
                      "listen {listen}", count=self.workers, config=self.config.filename,
                      listen=str(self.config.service.listen))
        self._warn_orphan_partitions()
        super().startService()
        for slot in self.slots:
            slot.spawn()
        self._previous_hup = install_sighup(self.reactor, self.reload)

    def _warn_orphan_partitions(self) -> None:
        spool_dir = self.config.service.spool_dir
        if os.path.exists(os.path.join(spool_dir, SINGLE_RELAY_SPOOL)):
            self.log.warn(
                "{spool_dir} holds a single relay's spool ({name}): no worker delivers its "
                "mail (each uses spool_dir/worker-N); run once with workers = 1 to drain it",
                spool_dir=spool_dir, name=SINGLE_RELAY_SPOOL)
        with contextlib.suppress(OSError):
            for name in sorted(os.listdir(spool_dir)):
                number = name.removeprefix("worker-")
                if number != name and number.isdigit() and int(number) > self.workers:
                    self.log.warn(
                        "spool partition {partition} belongs to worker {n} but workers = "
                        "{workers}: its mail waits until a relay runs that many workers",
                        partition=os.path.join(spool_dir, name), n=int(number),
                        workers=self.workers)

    # -- reload ---------------------------------------------------------------------

    def reload(self) -> defer.Deferred[bool]:
        """Validate the file; pass SIGHUP to every worker only when it is valid."""
        filename = self.config.filename
        d = threads.deferToThread(self._load, filename)
        d.addCallbacks(self._forward_reload, self._reload_refused, errbackArgs=(filename,))
        return d

    def _forward_reload(self, config: Config) -> bool:
        if config.service.workers != self.workers:
            self.log.warn("config reload: workers is {new} in the file but {running} run; "
                          "the new value takes effect at the next restart",
                          new=config.service.workers, running=self.workers)
        for slot in self.slots:
            slot.signal("HUP")
        self.log.info("config {filename} is valid; SIGHUP sent to {count} workers",
                      filename=config.filename, count=self.workers)
        return True

    def _reload_refused(self, failure: Any, filename: str) -> bool:
        self.log.error(
            "config reload refused, keeping the running config: {error}",
            error=str(failure.value) if failure.check(ConfigError, OSError)
            else failure.getTraceback(), filename=filename,
        )
        return False

    # -- stop -----------------------------------------------------------------------

    def stopService(self) -> defer.Deferred[None]:
        self.stopping = True
        if self._previous_hup is not None:
            signal.signal(signal.SIGHUP, self._previous_hup)
            self._previous_hup = None
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        for slot in self.slots:
            slot.cancel_restart()
            if slot.pid is not None:
                slot.state = "stopping"
                slot.signal("TERM")
        # The supervisor's copies of the listening sockets go now: once every worker has
        # stopped listening, new connections are refused, as with a single relay.
        self._close_listeners()
        allowed = self.config.service.shutdown_grace + STOP_MARGIN
        end = self.reactor.seconds() + allowed
        for slot in self.slots:  # all stop at once; each gets the same deadline
            try:
                left = max(0.1, end - self.reactor.seconds())
                await slot.ended().addTimeout(left, self.reactor)
            except defer.TimeoutError:
                self.log.error("worker {worker} did not stop within {allowed}s: killed",
                               worker=slot.worker, allowed=allowed)
                slot.signal("KILL")
                await slot.ended()
        try:
            await defer.maybeDeferred(super().stopService)
        finally:
            self._close_listeners()


class BindError(Exception):
    """``listen`` cannot be bound; the message names the address and the OS's reason."""


def _why(e: OSError) -> str:
    text = e.strerror or str(e)
    return text[:1].lower() + text[1:]

