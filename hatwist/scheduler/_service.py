# -*- test-case-name: tests.test_scheduler -*-
"""
The :class:`Scheduler` service: glue.  It builds the parts (one ledger, board,
due heap, dispatcher, set of waits, proxy watch, recorder, finisher and recovery
per start), wires them to each other, and keeps the public face: start and stop,
``submit``, ``queue_depths``, ``queue_states``, ``counters``, ``in_flight``.

The promises are listed in :mod:`hatwist.scheduler`.  What is left here is what
ties the parts together: where a part goes when it is due (the board, or the due
heap), expiry, and the waits' decisions and their log lines.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from hatwist.health import StateChange
from hatwist.shared import LocalLimits
from hatwist.spool import SpooledMessage

from ._bulk import BulkSummary, Report
from ._dispatch import Dispatcher
from ._due import DueHeap
from ._finish import Finisher
from ._holds import WaitDecisions
from ._ledger import Entry, Ledger
from ._notices import Notices
from ._operations import Operations
from ._outcome import expiry_start
from ._proxy import ProxyWatch
from ._queue_view import Listing, QueueView
from ._queues import Board, Part, Queue, QueueKey
from ._record import Recorder
from ._recovery import Recovery
from ._retime import retimed_due
from ._rules import Rules
from ._states import QueueState, queue_states
from ._waits import Waits
from ._waits import cancel as _cancel

#: Attempts running at once across all queues, by default: ``max_connections``
#: bounds one (binding, domain), this bounds the sockets and memory of the whole
#: relay when thousands of domains have mail (Postfix's default_process_limit).
MAX_IN_FLIGHT = 100

#: What ``hatwist queue`` may do to chosen messages (see ``act_on_messages``).
ACTIONS = ("hold", "release", "delete", "bounce")

#: Counter names, for /status and /metrics.  ``delivered``, ``deferred`` and
#: ``bounced`` count recipients (``bounced``: failed for good, expiry
#: included); ``attempts`` counts attempts made, ``waiting`` attempts held back
#: for want of a plumbed proxy, ``errors`` failures inside hatwist, ``dsns``
#: notices spooled to senders (bounces and "delayed" warnings).
COUNTERS = ("delivered", "deferred", "bounced", "attempts", "waiting", "errors", "dsns")


class Scheduler(Service):
    """
    Runs the spool: attempts, retries, holds, bounces and removals.

    :param spool: a :class:`hatwist.spool.Spool` (or anything with its
        ``store``, ``content``, ``update``, ``remove`` and ``recover_batches``).
    :param agent: has ``deliver(OutboundMessage) -> Deferred[AttemptResult]``.
    :param config_provider: returns the current ``Config``; asked at every
        decision, so a reload takes effect at once.
    :param registry: the proxy :class:`hatwist.health.ServerRegistry`.
    :param reactor: ``IReactorTime``.
    :param reporting_mta: this host's name, for DSNs.
    :param max_in_flight: attempts running at once, over all queues.
    :param limits: :class:`hatwist.shared.ILimits` for ``max_connections`` and the
        outbound throttles; :class:`~hatwist.shared.LocalLimits` (this process's own
        counts) by default, :class:`~hatwist.shared.RedisLimits` with ``redis_url``.
    :param families: ``domain -> frozenset | None``, the address families of the
        domain's MX hosts if the resolver knows them now (the choice of a
        binding_group's binding skips those without a plumbed path for them).
    """

    log = Logger()

    def __init__(
        self,
        *,
        spool: Any,
        agent: Any,
        config_provider: Callable[[], Any],
        registry: Any,
        reactor: Any,
        reporting_mta: str,
        max_in_flight: int = MAX_IN_FLIGHT,
        limits: Any = None,
        families: Callable[[str], frozenset[int] | None] | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight!r}")
        self._spool = spool
        self._agent = agent
        self._registry = registry
        self._rules = Rules(config_provider, registry, families)
        self._config_provider = config_provider
        self._config_seen = config_provider()  # what config_changed compares with
        self._reactor = reactor
        self._reporting_mta = reporting_mta
        self._max_in_flight = max_in_flight
        self._counters: Counter[str] = Counter(dict.fromkeys(COUNTERS, 0))
        # Outlives a stop and start: the starts already made still count.
        self._limits = LocalLimits() if limits is None else limits
        self._reset()

    def _reset(self) -> None:
        self._background: set[defer.Deferred] = set()
        self._ledger = Ledger(self._spool, self._reactor, log=lambda: self.log,
                              count_error=self._count_error, track=self._track)
        self._board = Board(self._rules.max_connections)
        self._waits = Waits(self._board, self._rules, self._reactor,
                            lambda queue: self._decisions.resume(queue))
        self._due = DueHeap(self._reactor, self._on_due)
        self._dispatch = Dispatcher(
            host=self, board=self._board, ledger=self._ledger, rules=self._rules,
            limits=self._limits, spool=self._spool, agent=self._agent,
            reactor=self._reactor, max_in_flight=self._max_in_flight,
        )
        self._proxy = ProxyWatch(
            board=self._board, ledger=self._ledger, due=self._due, rules=self._rules,
            waits=self._waits, reactor=self._reactor, hold=self.hold, pump=self._pump,
        )
        self._notices = Notices(
            spool=self._spool, ledger=self._ledger, rules=self._rules, reactor=self._reactor,
            reporting_mta=self._reporting_mta, counters=self._counters, log=lambda: self.log,
            submit=self.submit, track=self._track,
        )
        self._finisher = Finisher(
            spool=self._spool, ledger=self._ledger, notices=self._notices,
            reactor=self._reactor, counters=self._counters, log=lambda: self.log,
            forgotten=self._forgotten, track=self._track,
        )
        self._decisions = WaitDecisions(
            board=self._board, ledger=self._ledger, rules=self._rules,
            waits=lambda: self._waits, notices=self._notices, counters=self._counters,
            reactor=self._reactor, log=lambda: self.log, pump=self._pump,
            expire=lambda entry, part: self._recorder.expire(entry, part),
            decision_for=self.decision_for,
        )
        self._recorder = Recorder(
            ledger=self._ledger, rules=self._rules, waits=self._waits, proxy=self._proxy,
            finisher=self._finisher, notices=self._notices, counters=self._counters,
            reactor=self._reactor, log=lambda: self.log, schedule=self._schedule,
            hold=self.hold, pause=self._decisions.pause, decision_for=self.decision_for,
            track=self._track,
        )
        self._recovery = Recovery(self._spool, take=self._take, pump=self._pump,
                                  log=lambda: self.log)
        self._view = QueueView(ledger=self._ledger, board=self._board, due=self._due,
                               dispatch=self._dispatch, rules=self._rules,
                               states=self.queue_states, reactor=self._reactor)
        self._operations = Operations(
            ledger=self._ledger, board=self._board, due=self._due, dispatch=self._dispatch,
            waits=self._waits, finisher=self._finisher, spool=self._spool,
            counters=self._counters, reactor=self._reactor, log=lambda: self.log,
            schedule=self._schedule, pump=self._pump, decision=self._decision,
            settle=self._recovery.refreeze,
        )
        self._stopping = False
        self._unsubscribe: Callable[[], None] | None = None

    # -- the public face -----------------------------------------------------

    def startService(self) -> None:
        """Subscribe to proxy state changes and schedule everything in the spool."""
        super().startService()
        self._stopping = False
        self._dispatch.active = True
        self._unsubscribe = self._registry.subscribe(self._state_changed)
        if not self._recovery.done:
            self._track(self._recovery.start())
        self._pump()  # anything submitted before the start

    def when_recovered(self) -> defer.Deferred:
        """
        Fires once the spool's messages found at start-up have been scheduled
        (at once if that has happened already).
        """
        return self._recovery.when_done()

    def stopService(self) -> defer.Deferred:
        """
        Start nothing new; wait up to ``service.shutdown_grace`` seconds for the
        attempts in flight, then cancel them.  Everything else stays spooled.
        """
        super().stopService()
        self._stopping = self._dispatch.stopping = self._ledger.stopping = True
        self._finisher.stopping = True
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._recovery.stop()  # the rest is read at the next start
        self._due.stop()
        for call in self._timers():
            _cancel(call)
        grace = self._rules.grace()
        self.log.info(
            "scheduler stopping: waiting up to {grace}s for {count} attempts in flight",
            grace=grace, count=len(self._dispatch),
        )
        cutoff = self._reactor.callLater(grace, self._cancel_in_flight)

        def stopped(_: object) -> None:
            _cancel(cutoff)
            self._recovery.thaw()
            # Everything left is durable in the spool; the next start recovers it.
            self._reset()
            self._stopping = True

        return self._drain().addCallback(stopped)

    def submit(self, message: SpooledMessage) -> None:
        """
        Take charge of a freshly spooled (or recovered) message; due parts start now.

        This is the inbound listener's ``on_accepted``.  Once stopping, a message
        is left in the spool for the next start.
        """
        if self._stopping:
            self._decision(message, "", "left spooled (scheduler stopping)")
            return
        if self._take(message):
            self._pump()

    def config_changed(self) -> None:
        """
        The config was reloaded: re-time what waits by ``retry_interval`` -- running
        pauses, and the backoff of every part that failed since the start -- to the
        new interval, so a shorter one takes effect now, not after the old waits.
        (A part read from the spool keeps the time it was given until its next try.)
        Only queues whose retry policy changed are touched: O(their waiting parts).
        """
        seen, self._config_seen = self._config_seen, self._config_provider()
        before = Rules(lambda: seen, self._registry)
        self._rules.forget_groups()
        if self._stopping:
            return
        now, ledger, policy = self._now(), self._ledger, self._rules.policy

        def changed(key: QueueKey) -> bool:  # most reloads change no queue's policy
            return before.policy(key) != policy(key)

        self._waits.retime_pauses(changed)
        self._due.retime(
            lambda part: retimed_due(part, ledger.current(part), policy(part.key), now),
            changed)

    def queue_depths(self) -> dict[QueueKey, int]:
        """Pending recipients per (binding, domain), for /status and /metrics: O(queues)."""
        return self._ledger.depths()

    def queue_states(self) -> list[QueueState]:
        """
        Every queue with pending recipients, sorted by (binding, domain), with its state
        and when it next tries: see :mod:`hatwist.scheduler._states`.

        Constant work per queue: the depths are kept as messages change, and a
        queue's first retry is the head of its due heap.  Reads only.
        """
        return queue_states(
            self._ledger.depths(), board=self._board, due=self._due,
            throttle_state=self._throttle_state, held=self._ledger.held_depths(),
        )

    def counters(self) -> dict[str, int]:
        """A snapshot of the counters named in :data:`COUNTERS`."""
        return dict(self._counters)

    def in_flight(self) -> int:
        """Attempts running now."""
        return len(self._dispatch)

    # -- hatwist queue (see ._operations) -------------------------------------

    def list_messages(
        self, *, binding: str | None = None, domain: str | None = None,
        state: str | None = None, limit: int = 1000,
    ) -> defer.Deferred[Listing]:
        """The first ``limit`` queued messages matching the filters (``state``: a
        queue state, or ``held``), and how many match in all (counted a slice per
        reactor turn)."""
        return self._view.list(binding=binding, domain=domain, state=state, limit=limit)

    def show_message(self, message_id: str) -> dict[str, Any] | None:
        """Envelope, every recipient's state, last reply, attempts and next try of
        one queued message (None: not queued)."""
        return self._view.show(message_id)

    def flush_queues(
        self, *, binding: str | None = None, domain: str | None = None, uid: int | None = None
    ) -> tuple[int, int]:
        """Retry the matching queues now; (queues, messages made due)."""
        return self._operations.flush(binding=binding, domain=domain, uid=uid)

    def act_on_messages(
        self, action: str, ids: tuple[str, ...] = (), *, binding: str | None = None,
        domain: str | None = None, state: str | None = None, uid: int | None = None,
    ) -> defer.Deferred[list[tuple[str, str]]]:
        """``hold``, ``release``, ``delete`` or ``bounce`` the messages named by
        ``ids``, or else every message matching the filters; fires with
        (id, outcome) pairs once their spool writes are done."""
        outcomes: list[tuple[str, str]] = []
        d = self.stream_action(action, ids, binding=binding, domain=domain, state=state,
                               uid=uid, report=outcomes.extend)
        return d.addCallback(lambda _: outcomes)

    def stream_action(
        self, action: str, ids: tuple[str, ...] = (), *, report: Report,
        binding: str | None = None, domain: str | None = None, state: str | None = None,
        uid: int | None = None,
    ) -> defer.Deferred[BulkSummary]:
        """:meth:`act_on_messages`, a slice per reactor turn (see ``_bulk``): each
        slice's outcomes go to ``report``, which paces the action and may stop it."""
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}")
        candidates, pick = self._view.select(ids, binding, domain, state)
        return self._operations.stream(action, candidates, pick, report=report, uid=uid,
                                       filters=None if ids else (binding, domain, state))

    def _throttle_state(self, queue: Queue) -> tuple[str | None, float | None]:
        """A throttled queue's throttle, and its next allowed start by the current
        config (after a reload that opened the window: when the queue looks again)."""
        throttle, now = self._rules.throttle(queue.key), self._now()
        allowed_at = self._limits.next_start(queue.key, throttle, now)
        if allowed_at <= now and queue.unthrottle is not None and queue.unthrottle.active():
            allowed_at = queue.unthrottle.getTime()
        return (None if throttle is None else str(throttle)), allowed_at

    # -- planning ------------------------------------------------------------

    def _take(self, message: SpooledMessage) -> bool:
        """Add ``message`` to the ledger and schedule its parts (False: known already)."""
        if message.id in self._ledger:
            return False
        entry = self._ledger.add(message)
        if not entry.parts:
            self._finisher.finish(entry)
            return True
        if not entry.held:  # held by the operator before a restart: still held
            for part in entry.parts:
                self._schedule(part)
        # A notice a crash kept from being sent (or marked sent) is owed still.
        self._notices.after_pass(entry, entry.parts[0].key)
        return True

    def _schedule(self, part: Part) -> None:
        if self._stopping:
            return
        if part.due <= self._now():
            self._board.add(part)
        else:
            self._due.push(part)

    def _on_due(self, parts: list[Part]) -> None:
        for part in parts:
            # A held queue may not reach it for a long time: expire it here if due.
            if self._ledger.current(part) is not None and not self.expired(part):
                self._board.add(part)
        self._pump()

    def expired(self, part: Part) -> bool:
        """Expire ``part`` if its message ran out of time; return whether it did."""
        entry = self._ledger.current(part)
        if entry is None:
            return False
        policy = self._rules.policy(part.key)
        if not policy.is_expired(expiry_start(entry.message), self._now()):
            return False
        self._recorder.expire(entry, part)
        return True

    def _pump(self) -> None:
        self._dispatch.pump()

    # -- outcomes (see ._record) ----------------------------------------------

    def record(
        self, entry: Entry, part: Part, queue: Queue, outcome: Any, recipients: tuple[str, ...]
    ) -> defer.Deferred | None:
        return self._recorder.record(entry, part, queue, outcome, recipients)

    def retry_later(self, part: Part) -> None:
        self._recorder.retry_later(part)

    # -- waits (the timers live in ._waits) ---------------------------------

    def throttle_wait(self, part: Part, queue: Queue, throttle: str, wait: float) -> None:
        self._decisions.throttle_wait(part, queue, throttle, wait)

    def slot_wait(self, part: Part, queue: Queue, wait: float) -> None:
        self._decisions.slot_wait(part, queue, wait)

    def hold(self, part: Part, entry: Entry, reason: str) -> None:
        """Hold ``part``'s queue for a plumbed proxy (see :mod:`._holds`)."""
        self._decisions.hold(part, entry, reason)

    def _state_changed(self, change: StateChange) -> None:
        """Registry observer: see :mod:`hatwist.scheduler._proxy`."""
        if self._stopping:
            return
        try:
            self._proxy.changed(change)
        except Exception:
            self.log.failure("scheduler: handling a proxy state change failed")

    # -- helpers -------------------------------------------------------------

    def _now(self) -> float:
        return self._reactor.seconds()

    def _forgotten(self, message_id: str) -> None:
        self._recovery.finished(message_id)

    def _count_error(self) -> None:
        self._counters["errors"] += 1

    def _timers(self) -> list[IDelayedCall]:
        return (self._waits.timers() + self._due.timers() + self._ledger.timers()
                + self._finisher.timers() + self._dispatch.timers())

    def _drain(self) -> defer.Deferred:
        """Fires when no attempt and no spool work is left (none can start meanwhile)."""
        waiting = self._dispatch.running() + list(self._background)
        if not waiting:
            return defer.succeed(None)
        done = defer.DeferredList(waiting, consumeErrors=True)
        return done.addCallback(lambda _: self._drain())

    def _cancel_in_flight(self) -> None:
        self.log.warn("scheduler: grace period over; cancelling {count} attempts",
                      count=len(self._dispatch))
        self._dispatch.cancel_all()

    def _track(self, d: defer.Deferred) -> None:
        """Keep ``d`` until it fires, so stopService can wait for it."""
        self._background.add(d)
        d.addBoth(lambda result: self._background.discard(d) or result)
        d.addErrback(lambda f: self.log.failure("scheduler: background work failed", f))

    def decision_for(self, part: Part, outcome: str, **fields: Any) -> None:
        entry = self._ledger.get(part.message_id)
        if entry is not None:
            self._decision(entry.message, part.key[1], outcome, **fields)

    def _decision(
        self, message: SpooledMessage, domain: str, outcome: str, **fields: Any
    ) -> None:
        self.log.info(
            "message {message_id} binding {binding} domain {domain}: {outcome}",
            message_id=message.id, binding=message.binding, domain=domain, outcome=outcome,
            **fields,
        )

