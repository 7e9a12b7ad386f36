# -*- test-case-name: tests.health.test_checker -*-
"""
The health checker: one ``LoopingCall`` per proxy server, feeding the registry.

Promises, each of which a naive loop breaks:

- the first check of every server runs at start-up, then one every ``interval``;
- a check never overlaps the previous one for the same server (``LoopingCall``
  waits for the Deferred a check returns before scheduling the next);
- a check is abandoned after ``timeout`` seconds and counted as a failure; the
  probe's Deferred is cancelled, which makes the probe drop its connection;
- nothing raised inside a check stops the loop: a ``LoopingCall`` whose call
  fails stops for good, so every error becomes a recorded failure.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from hatwist.config import HealthSettings

from ._errors import CheckTimedOut, describe
from ._interfaces import IHealthProbe, SourceResults
from ._registry import ServerRegistry

_log = Logger()


class _Check:
    """
    One run of the probe against one server, with its own deadline.

    ``done`` always fires with None: the outcome goes to the registry, never
    back to the ``LoopingCall``.
    """

    def __init__(self, checker: HealthChecker, server: Any) -> None:
        self._checker = checker
        self._server = server
        self._timed_out = False
        self._cancelled = False
        reactor = checker._reactor
        self._started = reactor.seconds()
        self.done: Deferred[None] = Deferred()
        self._probing: Deferred[Any] = maybeDeferred(checker._probe.check, server)
        if self._probing.called:
            self._deadline = None
        else:
            self._deadline = reactor.callLater(checker._settings.timeout, self._time_out)
        self._probing.addBoth(self._finished)

    def _time_out(self) -> None:
        self._timed_out = True
        self._probing.cancel()

    def cancel(self) -> None:
        """
        Abandon the check without recording anything (the checker is stopping).
        """
        self._cancelled = True
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._probing.cancel()

    def _finished(self, outcome: object) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        if not self._cancelled:
            try:
                self._record(outcome)
            except Exception:
                _log.failure("recording the health check of {server} failed", server=self._server)
        self.done.callback(None)

    def _record(self, outcome: object) -> None:
        checker = self._checker
        now = checker._reactor.seconds()
        if self._server not in checker._registry.servers:
            return  # dropped by a config reload while we were probing
        latency = now - self._started
        if isinstance(outcome, SourceResults):
            # Even at the timeout: the probe said which sources answered in time.
            checker._registry.record_sources(
                self._server, outcome.as_dict(), at=now, latency=latency
            )
            return
        if self._timed_out:
            error = describe(CheckTimedOut(checker._settings.timeout))
        elif isinstance(outcome, Failure):
            error = describe(outcome.value)
        else:
            checker._registry.record_success(self._server, at=now, latency=latency)
            return
        checker._registry.record_failure(self._server, at=now, error=error)


class HealthChecker(Service):
    """
    Keeps the registry's view of every proxy server current by probing it.

    Which servers to probe comes from the registry; after a config reload,
    update the registry first, then call L{reconfigure}.
    """

    name = "hatwist-health"

    def __init__(
        self,
        registry: ServerRegistry,
        settings: HealthSettings,
        probe: IHealthProbe,
        *,
        reactor: IReactorTime,
    ) -> None:
        self._registry = registry
        self._settings = settings
        self._probe = probe
        self._reactor = reactor
        self._loops: dict[Any, LoopingCall] = {}
        self._checks: dict[Any, _Check] = {}

    def startService(self) -> None:
        super().startService()
        self._sync_loops()

    def stopService(self) -> Deferred[None]:
        """
        Stop every loop and abandon the checks in flight; fires once they are.
        """
        super().stopService()
        pending = [check.done for check in self._checks.values()]
        for server in list(self._loops):
            self._stop_loop(server)
        return gatherResults(pending).addCallback(lambda _: None)

    def reconfigure(self, settings: HealthSettings, probe: IHealthProbe) -> None:
        """
        Adopt new settings and probe, and follow the registry's current servers.

        Loops of servers that were dropped stop; new servers get a loop whose
        first check runs now; a changed interval or a new probe restarts the
        remaining loops (also checking at once).
        """
        restart = settings.interval != self._settings.interval or probe is not self._probe
        self._settings = settings
        self._probe = probe
        if not self.running:
            return
        if restart:
            for server in list(self._loops):
                self._stop_loop(server)
        self._sync_loops()

    def _sync_loops(self) -> None:
        wanted = self._registry.servers
        for server in list(self._loops):
            if server not in wanted:
                self._stop_loop(server)
        for server in wanted:
            if server not in self._loops:
                loop = LoopingCall(self._check, server)
                loop.clock = self._reactor
                self._loops[server] = loop
                loop.start(self._settings.interval, now=True).addErrback(self._loop_died, server)

    def _stop_loop(self, server: Any) -> None:
        loop = self._loops.pop(server)
        if loop.running:
            loop.stop()
        check = self._checks.pop(server, None)
        if check is not None:
            check.cancel()

    def _check(self, server: Any) -> Deferred[None]:
        check = _Check(self, server)
        if not check.done.called:
            self._checks[server] = check
            check.done.addBoth(self._forget, server, check)
        return check.done

    def _forget(self, result: object, server: Any, check: _Check) -> object:
        if self._checks.get(server) is check:
            del self._checks[server]
        return result

    def _loop_died(self, failure: Failure, server: Any) -> None:
        # Unreachable by design (_Check.done never fails); logged loudly if it ever is.
        _log.failure("health check loop for {server} stopped", failure, server=server)
