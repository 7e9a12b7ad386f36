# -*- test-case-name: tests.health.test_registry -*-
"""
The proxy server registry: which ``ha_proxy_server`` may carry mail right now.

Pure: no reactor, no I/O. Check results arrive with their time (``at``) from
whoever ran the check, so the rules below are testable without any clock.

Rules (HAProxy's rise/fall): every server starts plumbed; ``failure_threshold``
consecutive failed checks flip it to unplumbed, ``success_threshold``
consecutive successful checks flip it back. Every flip is logged as a
structured event and handed to each subscriber.

The smtp-mode check proves each source address a server is used with, so it
reports per source (L{ServerRegistry.record_sources}). Each (server, source)
*path* then has its own rise/fall, and the server itself counts a success when
any of its paths passed: one source address gone bad behind HAProxy stops only
the bindings that send from it, not every binding sharing the proxy.
"""

from __future__ import annotations

import bisect
import enum
import itertools
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

import attrs
from twisted.logger import Logger

from ._errors import UnknownServerError

_log = Logger()

#: The ``hatwist_event`` field of the log event every state change emits.
STATE_CHANGE_EVENT = "proxy_state_change"


class ServerState(enum.Enum):
    """
    Whether a proxy server is used for deliveries (the seed's words).
    """

    PLUMBED = "plumbed"
    UNPLUMBED = "unplumbed"


#: Upper bounds (seconds) of the check-latency histogram's buckets; the last bucket
#: (infinity) is implied. A check over health_check_timeout fails, so the top bound only
#: catches timeouts set above 5 s.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@attrs.frozen
class StateChange:
    """
    One flip of a server's state, with the reason an operator would need.
    """

    server: Any
    old: ServerState
    new: ServerState
    reason: str
    at: float
    source: str | None = None
    """The source address of the path that flipped; None for the server itself."""


@attrs.frozen
class ServerStatus:
    """
    A snapshot of one server's health, for the status page and metrics.

    ``last_error`` is the reason of the latest *failed* check and
    ``last_latency`` the duration of the latest *successful* one; both survive
    checks of the other kind, so a flapping server keeps its evidence.
    ``latency_buckets`` counts the successful checks by duration, cumulatively per
    upper bound of :data:`LATENCY_BUCKETS` (the last bound is infinity), and
    ``latency_sum`` adds their durations: a Prometheus histogram, kept in a few ints.

    ``paths`` holds one status per source address the smtp-mode check proved
    (``source`` set, ``paths`` empty), in the order the check reported them.
    """

    server: Any
    state: ServerState
    consecutive_successes: int
    consecutive_failures: int
    last_check: float | None
    last_error: str | None
    last_latency: float | None
    checks: int
    failures: int
    state_changes: int
    source: str | None = None
    paths: tuple[ServerStatus, ...] = ()
    latency_buckets: tuple[int, ...] = ()
    latency_sum: float = 0.0


@attrs.define
class _Record:
    """
    The mutable state behind a L{ServerStatus}: of a server, or of one of its paths.
    """

    server: Any
    source: str | None = None
    state: ServerState = ServerState.PLUMBED
    consecutive_successes: int = 0
    consecutive_failures: int = 0
    last_check: float | None = None
    last_error: str | None = None
    last_latency: float | None = None
    checks: int = 0
    failures: int = 0
    state_changes: int = 0
    paths: dict[str, _Record] = attrs.Factory(dict)
    latency_counts: list[int] = attrs.Factory(lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0

    def observe_latency(self, seconds: float) -> None:
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def status(self) -> ServerStatus:
        fields = attrs.asdict(self, recurse=False)
        fields["paths"] = tuple(path.status() for path in self.paths.values())
        fields["latency_buckets"] = tuple(itertools.accumulate(fields.pop("latency_counts")))
        return ServerStatus(**fields)


def _checked_threshold(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, not {value!r}")
    return value


class ServerRegistry:
    """
    Every distinct proxy server in the config, in config order, with its state.

    The delivery side asks L{plumbed} which servers it may use; the health
    checker reports results with L{record_success} and L{record_failure}.
    """

    def __init__(
        self, servers: Iterable[Hashable], *, success_threshold: int, failure_threshold: int
    ) -> None:
        self._records: dict[Any, _Record] = {}
        self._observers: list[Callable[[StateChange], None]] = []
        self._rotation: dict[tuple[tuple[Any, ...], str | None], int] = {}
        self.update_servers(
            servers, success_threshold=success_threshold, failure_threshold=failure_threshold
        )

    @property
    def servers(self) -> tuple[Any, ...]:
        """
        The servers held, in config order.
        """
        return tuple(self._records)

    @property
    def success_threshold(self) -> int:
        return self._success_threshold

    @property
    def failure_threshold(self) -> int:
        return self._failure_threshold

    def update_servers(
        self, servers: Iterable[Hashable], *, success_threshold: int, failure_threshold: int
    ) -> None:
        """
        Adopt a reloaded config's servers and thresholds.

        Servers that remain keep their state and counters (a reload must not
        re-plumb a dead proxy); new ones start plumbed; dropped ones are
        forgotten. New thresholds apply from the next recorded check.
        """
        self._success_threshold = _checked_threshold("success_threshold", success_threshold)
        self._failure_threshold = _checked_threshold("failure_threshold", failure_threshold)
        old = self._records
        self._records = {s: old.get(s) or _Record(server=s) for s in dict.fromkeys(servers)}
        self._rotation.clear()

    def _record(self, server: Any) -> _Record:
        try:
            return self._records[server]
        except KeyError:
            raise UnknownServerError(server, self.servers) from None

    def record_success(
        self, server: Any, *, at: float, latency: float | None = None
    ) -> StateChange | None:
        """
        Count a successful check; return the state change it caused, if any.
        """
        return self._succeeded(self._record(server), at, latency)

    def record_failure(self, server: Any, *, at: float, error: str) -> StateChange | None:
        """
        Count a failed check with its reason; return the state change it caused, if any.
        """
        return self._failed(self._record(server), at, error)

    def record_sources(
        self,
        server: Any,
        results: Mapping[str, str | None],
        *,
        at: float,
        latency: float | None = None,
    ) -> list[StateChange]:
        """
        Count one check that tried each source address: C{results} maps each source
        to None (it passed) or the reason it failed.

        Every path is counted on its own; the server counts a success when any
        path passed, else a failure naming every source. Paths of sources the
        check no longer tried (a reload dropped them) are forgotten.
        """
        record = self._record(server)
        changes = []
        paths = {}
        for source, error in results.items():
            path = record.paths.get(source) or _Record(server=server, source=source)
            paths[source] = path
            if error is None:
                changes.append(self._succeeded(path, at, latency))
            else:
                changes.append(self._failed(path, at, error))
        record.paths = paths
        if not results or any(error is None for error in results.values()):
            changes.append(self._succeeded(record, at, latency))
        else:
            reasons = "; ".join(f"source {src}: {error}" for src, error in results.items())
            changes.append(self._failed(record, at, reasons))
        return [change for change in changes if change is not None]

    def _succeeded(self, record: _Record, at: float, latency: float | None) -> StateChange | None:
        record.checks += 1
        record.consecutive_successes += 1
        record.consecutive_failures = 0
        record.last_check = at
        record.last_latency = latency
        if latency is not None:
            record.observe_latency(latency)
        if (
            record.state is ServerState.UNPLUMBED
            and record.consecutive_successes >= self._success_threshold
        ):
            n = record.consecutive_successes
            reason = f"{n} consecutive successful check{'s' * (n != 1)}"
            return self._change(record, ServerState.PLUMBED, reason, at)
        return None

    def _failed(self, record: _Record, at: float, error: str) -> StateChange | None:
        record.checks += 1
        record.failures += 1
        record.consecutive_failures += 1
        record.consecutive_successes = 0
        record.last_check = at
        record.last_error = error
        if (
            record.state is ServerState.PLUMBED
            and record.consecutive_failures >= self._failure_threshold
        ):
            n = record.consecutive_failures
            reason = f"{n} consecutive failed check{'s' * (n != 1)}, last: {error}"
            return self._change(record, ServerState.UNPLUMBED, reason, at)
        return None

    def _change(self, record: _Record, new: ServerState, reason: str, at: float) -> StateChange:
        change = StateChange(
            server=record.server,
            old=record.state,
            new=new,
            reason=reason,
            at=at,
            source=record.source,
        )
        record.state = new
        record.state_changes += 1
        emit = _log.warn if new is ServerState.UNPLUMBED else _log.info
        emit(
            "proxy {server}{path} {old} -> {new}: {reason}",
            hatwist_event=STATE_CHANGE_EVENT,
            server=str(change.server),
            source=change.source,
            path="" if change.source is None else f" from source {change.source}",
            old=change.old.value,
            new=change.new.value,
            reason=reason,
        )
        for observer in list(self._observers):
            try:
                observer(change)
            except Exception:
                # One broken observer must not hide the change from the others,
                # nor make the health checker's bookkeeping fail.
                _log.failure("state change observer {observer!r} failed", observer=observer)
        return change

    def is_plumbed(self, server: Any, source: str | None = None) -> bool:
        """
        Whether C{server} may carry mail now; with C{source}, mail sent from that
        source address (its path must not be unplumbed either).
        """
        record = self._record(server)
        if record.state is not ServerState.PLUMBED:
            return False
        path = None if source is None else record.paths.get(source)
        return path is None or path.state is ServerState.PLUMBED

    def plumbed(self, candidates: Iterable[Any], source: str | None = None) -> list[Any]:
        """
        The plumbed subset of C{candidates} (for C{source}, if given; see
        L{is_plumbed}), rotated by one on every call.

        Callers try the servers in the returned order, so rotating spreads
        connections evenly over the live servers of a binding and lets a failed
        connect move on to the next one. Each distinct (candidate list, source)
        has its own rotation, so bindings sharing the registry do not skew each
        other, and neither do the two address families of one binding: an attempt
        asks once per family (each with that family's source), and with one shared
        counter a binding whose attempts ask for both would land every IPv4
        connection on the same proxy.
        """
        servers = tuple(candidates)
        key = (servers, source)
        live = [s for s in servers if self.is_plumbed(s, source)]
        turn = self._rotation.get(key, 0)
        self._rotation[key] = turn + 1
        if not live:
            return []
        turn %= len(live)
        return live[turn:] + live[:turn]

    def status(self, server: Any) -> ServerStatus:
        return self._record(server).status()

    def snapshot(self) -> list[ServerStatus]:
        """
        The status of every server, in config order.
        """
        return [record.status() for record in self._records.values()]

    def subscribe(self, observer: Callable[[StateChange], None]) -> Callable[[], None]:
        """
        Call C{observer} with every future L{StateChange}; return an unsubscribe function.
        """
        self._observers.append(observer)

        def unsubscribe() -> None:
            if observer in self._observers:
                self._observers.remove(observer)

        return unsubscribe
