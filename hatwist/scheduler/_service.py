# -*- test-case-name: tests.test_scheduler -*-
"""
The :class:`Scheduler` service: recovery, part timers, attempts, outcomes, bounces.

The promises are listed in :mod:`hatwist.scheduler`; the queues and their
turn-taking live in :mod:`._queues`, what an outcome does to a message's state
in :mod:`._outcome`, the timers that hold, pause or throttle a queue in
:mod:`._waits`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from hatwist.delivery import Envelope
from hatwist.delivery.attempt import OutboundMessage
from hatwist.health import ServerState, StateChange
from hatwist.spool import MessageNotFound, SpooledMessage
from hatwist.throttle import Throttles

from ._bounce import needs_bounce, spool_bounce
from ._outcome import (
    apply_results,
    domain_of,
    expire,
    note_wait,
    pending_at,
    reason_of,
    results_of,
    summary,
)
from ._queues import Board, Part, Queue, QueueKey
from ._rules import FALLBACK_POLICY, Rules
from ._states import QueueState, queue_state
from ._waits import Waits
from ._waits import cancel as _cancel

#: Attempts running at once across all queues, by default: ``max_connections``
#: bounds one (binding, domain), this bounds the sockets and memory of the whole
#: relay when thousands of domains have mail (Postfix's default_process_limit).
MAX_IN_FLIGHT = 100

#: Seconds before writing down again a state the spool failed to save: until it
#: is on disk, a crash would deliver its delivered recipients a second time.
SAVE_RETRY_DELAY = 30.0

#: Counter names, for /status and /metrics.  ``delivered``, ``deferred`` and
#: ``bounced`` count recipients (``bounced``: failed for good, expiry
#: included); ``attempts`` counts attempts made, ``waiting`` attempts held back
#: for want of a plumbed proxy, ``errors`` failures inside hatwist, ``dsns``
#: bounce messages spooled.
COUNTERS = ("delivered", "deferred", "bounced", "attempts", "waiting", "errors", "dsns")


@attrs.define
class _Recovery:
    """The start-up read of the spool, while it runs."""

    waiters: list[defer.Deferred] = attrs.Factory(list)
    """Fired once the recovered messages are scheduled (:meth:`Scheduler.when_recovered`)."""
    finished: set[str] = attrs.Factory(set)
    """Messages accepted and finished meanwhile: the listing may still name them."""


@attrs.define(eq=False)
class _Entry:
    """A message the scheduler is responsible for, with its latest state."""

    message: SpooledMessage
    parts: dict[str, Part] = attrs.Factory(dict)
    """The parts still to deliver, by domain."""
    finishing: bool = False
    """Its bounce and removal are under way: nothing else may write it down."""
    bounced: bool = False
    """Its DSN is spooled: a retried removal must not bounce it again."""
    retry: IDelayedCall | None = None
    """Tries the bounce and removal again after they failed."""
    resave: IDelayedCall | None = None
    """Writes the state down again after a failed save."""


class Scheduler(Service):
    """
    Runs the spool: attempts, retries, holds, bounces and removals.

    :param spool: a :class:`hatwist.spool.Spool` (or anything with its
        ``store``, ``content``, ``update``, ``remove`` and ``recover``).
    :param agent: has ``deliver(OutboundMessage) -> Deferred[AttemptResult]``.
    :param config_provider: returns the current ``Config``; asked at every
        decision, so a reload takes effect at once.
    :param registry: the proxy :class:`hatwist.health.ServerRegistry`.
    :param reactor: ``IReactorTime``.
    :param reporting_mta: this host's name, for DSNs.
    :param max_in_flight: attempts running at once, over all queues.
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
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight!r}")
        self._spool = spool
        self._agent = agent
        self._registry = registry
        self._rules = Rules(config_provider, registry)
        self._reactor = reactor
        self._reporting_mta = reporting_mta
        self._max_in_flight = max_in_flight
        self._counters: Counter[str] = Counter(dict.fromkeys(COUNTERS, 0))
        # Outlives a stop and start: the starts already made still count.
        self._throttles: Throttles[QueueKey] = Throttles()
        self._reset()

    def _reset(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._board = Board(self._rules.max_connections)
        self._waits = Waits(self._board, self._rules, self._reactor, self._resume)
        self._in_flight: dict[Part, defer.Deferred] = {}
        self._running = 0  # attempts whose outcome is not in yet (saving is not counted)
        self._background: set[defer.Deferred] = set()
        self._stopping = False
        self._pumping = False
        self._unsubscribe: Callable[[], None] | None = None
        self._recovery: _Recovery | None = _Recovery()  # None once the spool was read

    # -- the public face -----------------------------------------------------

    def startService(self) -> None:
        """Subscribe to proxy state changes and schedule everything in the spool."""
        super().startService()
        self._stopping = False
        self._unsubscribe = self._registry.subscribe(self._state_changed)
        d = defer.maybeDeferred(self._spool.recover)
        d.addCallbacks(self._recovered, self._recovery_failed)
        d.addBoth(self._recovery_done)
        self._track(d)
        self._pump()  # anything submitted before the start

    def when_recovered(self) -> defer.Deferred:
        """
        Fires once the spool's messages found at start-up have been scheduled
        (at once if that has happened already).
        """
        if self._recovery is None:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._recovery.waiters.append(d)
        return d

    def _recovery_done(self, _: object) -> None:
        recovery, self._recovery = self._recovery, None
        if recovery is not None:
            for d in recovery.waiters:
                d.callback(None)

    def stopService(self) -> defer.Deferred:
        """
        Start nothing new; wait up to ``service.shutdown_grace`` seconds for the
        attempts in flight, then cancel them.  Everything else stays spooled.
        """
        super().stopService()
        self._stopping = True
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for call in self._timers():
            _cancel(call)
        grace = self._rules.grace()
        self.log.info(
            "scheduler stopping: waiting up to {grace}s for {count} attempts in flight",
            grace=grace, count=len(self._in_flight),
        )
        cutoff = self._reactor.callLater(grace, self._cancel_in_flight)

        def stopped(_: object) -> None:
            _cancel(cutoff)
            # Everything left is durable in the spool; the next start recovers it.
            self._reset()
            self._stopping = True

        return self._drain().addCallback(stopped)

    def _drain(self) -> defer.Deferred:
        """Fires when no attempt and no spool work is left (none can start meanwhile)."""
        waiting = list(self._in_flight.values()) + list(self._background)
        if not waiting:
            return defer.succeed(None)
        done = defer.DeferredList(waiting, consumeErrors=True)
        return done.addCallback(lambda _: self._drain())

    def submit(self, message: SpooledMessage) -> None:
        """
        Take charge of a freshly spooled (or recovered) message; due parts start now.

        This is the inbound listener's ``on_accepted``.  Once stopping, a message
        is left in the spool for the next start.
        """
        if self._stopping:
            self._decision(message, "", "left spooled (scheduler stopping)")
            return
        if message.id in self._entries:
            return
        entry = _Entry(message)
        self._entries[message.id] = entry
        self._plan(entry)
        self._pump()

    def queue_depths(self) -> dict[QueueKey, int]:
        """Pending recipients per (binding, domain), for /status and /metrics."""
        depths: Counter[QueueKey] = Counter()
        for entry in self._entries.values():
            for recipient in entry.message.pending():
                depths[(entry.message.binding, domain_of(recipient.address))] += 1
        return dict(depths)

    def queue_states(self) -> list[QueueState]:
        """
        Every queue with pending recipients, sorted by (binding, domain), with its state
        and when it next tries: see :mod:`hatwist.scheduler._states`.

        One pass over the messages, like :meth:`queue_depths` (their pending
        recipients and their parts), then constant work per queue.  Reads only.
        """
        depths: Counter[QueueKey] = Counter()
        first_retry: dict[QueueKey, tuple[float, _Entry]] = {}
        for entry in self._entries.values():
            message = entry.message
            for recipient in message.pending():
                depths[(message.binding, domain_of(recipient.address))] += 1
            for part in entry.parts.values():
                if part.timer is None or not part.timer.active():
                    continue
                at, earliest = part.timer.getTime(), first_retry.get(part.key)
                if earliest is None or at < earliest[0]:
                    first_retry[part.key] = (at, entry)
        states = []
        for key in sorted(depths):
            queue = self._board.get(key)
            retry = first_retry.get(key)
            throttle = throttled_until = None
            if queue is not None and queue.throttled:
                throttle, throttled_until = self._throttle_state(queue)
            states.append(queue_state(
                key,
                depth=depths[key],
                queue=queue,
                next_retry=None if retry is None else retry[0],
                retry_reason=None if retry is None else self._last_reply(retry[1], key[1]),
                throttle=throttle,
                throttled_until=throttled_until,
            ))
        return states

    def counters(self) -> dict[str, int]:
        """A snapshot of the counters named in :data:`COUNTERS`."""
        return dict(self._counters)

    def in_flight(self) -> int:
        """Attempts running now."""
        return len(self._in_flight)

    def _throttle_state(self, queue: Queue) -> tuple[str | None, float | None]:
        """A throttled queue's throttle, and its next allowed start by the current
        config (after a reload that opened the window: when the queue looks again)."""
        throttle, now = self._rules.throttle(queue.key), self._now()
        allowed_at = self._throttles.next_start(queue.key, throttle, now)
        if allowed_at <= now and queue.unthrottle is not None and queue.unthrottle.active():
            allowed_at = queue.unthrottle.getTime()
        return (None if throttle is None else str(throttle)), allowed_at

    @staticmethod
    def _last_reply(entry: _Entry, domain: str) -> str | None:
        """The last reply one of the message's pending recipients at ``domain`` got."""
        for recipient in pending_at(entry.message, domain):
            if recipient.reason:
                code = f"{recipient.code} " if recipient.code else ""
                return code + recipient.reason
        return None

    # -- planning ------------------------------------------------------------

    def _recovered(self, messages: Iterable[SpooledMessage]) -> None:
        # A message accepted and finished while recovery read the directory
        # may be in its list: it must not come back.
        finished = self._recovery.finished if self._recovery is not None else set()
        messages = [m for m in messages if m.id not in finished]
        self.log.info("scheduler: {count} spooled messages recovered", count=len(messages))
        for message in messages:
            self.submit(message)

    def _recovery_failed(self, failure: Failure) -> None:
        self.log.failure(
            "spool recovery failed: spooled mail waits for the next start", failure
        )

    def _plan(self, entry: _Entry) -> None:
        """Make a part for every domain with pending recipients that has none yet."""
        message = entry.message
        domains = {domain_of(r.address) for r in message.pending()}
        if not domains:
            self._finish(entry)
            return
        for domain in sorted(domains - entry.parts.keys()):
            part = Part(message.id, (message.binding, domain), due=message.next_attempt_at)
            entry.parts[domain] = part
            self._schedule(part)

    def _schedule(self, part: Part) -> None:
        if self._stopping:
            return
        delay = part.due - self._now()
        if delay <= 0:
            self._board.add(part)
        else:
            part.timer = self._reactor.callLater(delay, self._due, part)

    def _due(self, part: Part) -> None:
        part.timer = None
        if not self._expired(part):  # a held queue may not reach it for a long time
            self._board.add(part)
        self._pump()

    def _expired(self, part: Part) -> bool:
        """Expire ``part`` if its message ran out of time; return whether it did."""
        entry = self._owner(part)
        if entry is None:
            return False
        if not self._rules.policy(part.key).is_expired(entry.message.received_at, self._now()):
            return False
        self._expire(entry, part)
        return True

    def _pump(self) -> None:
        """Start attempts, one per startable queue in turn, until none can start."""
        if self._pumping:
            return  # the loop below picks up whatever changed
        self._pumping = True
        try:
            while self.running and not self._stopping and self._running < self._max_in_flight:
                taken = self._board.next()
                if taken is None:
                    break
                queue, part = taken
                try:
                    self._start(part, queue)
                except Exception:
                    # Never let one message stop the loop: log it, try it again later.
                    self.log.failure("message {message_id}: starting an attempt failed",
                                     message_id=part.message_id)
                    self._retry_later(part)
                self._board.refresh(queue)  # back at the end of the line, if still startable
        finally:
            self._pumping = False

    # -- attempts ------------------------------------------------------------

    def _start(self, part: Part, queue: Queue) -> None:
        entry = self._owner(part)
        if entry is None:
            return
        domain = part.key[1]
        if self._expired(part):
            return
        why = self._rules.no_plumbed_proxy(part.key)
        if why is not None:
            self._hold(part, entry, why)
            return
        # The last check before the start: a message counts when its attempt starts.
        now, throttle = self._now(), self._rules.throttle(part.key)
        allowed_at = self._throttles.next_start(part.key, throttle, now)
        if allowed_at > now:
            self._throttle_wait(part, queue, str(throttle), allowed_at - now)
            return
        self._throttles.record(part.key, throttle, now)
        recipients = tuple(r.address for r in pending_at(entry.message, domain))
        queue.in_flight += 1
        self._running += 1
        queue.waiting = False
        d = defer.maybeDeferred(self._spool.content, entry.message.id)
        d.addCallback(self._deliver, entry.message, domain, recipients)
        self._in_flight[part] = d
        d.addBoth(self._attempted, part, queue, recipients)
        d.addBoth(self._settled, part)

    def _deliver(
        self, content: bytes, message: SpooledMessage, domain: str, recipients: tuple[str, ...]
    ) -> defer.Deferred:
        outbound = OutboundMessage(
            id=message.id,
            binding=message.binding,
            domain=domain,
            envelope=Envelope(mail_from=message.mail_from, rcpt_to=recipients,
                              smtputf8=message.smtputf8),
            content=content,
        )
        return self._agent.deliver(outbound)

    def _retry_later(self, part: Part) -> None:
        """After a failure inside hatwist: count it, and try ``part`` again in one
        ``retry_interval`` (never at once: the same failure would spin the loop)."""
        self._counters["errors"] += 1
        part.due = self._now() + self._rules.policy(part.key).retry_interval
        self._schedule(part)

    def _settled(self, _: object, part: Part) -> None:
        self._in_flight.pop(part, None)

    def _attempted(
        self, outcome: Any, part: Part, queue: Queue, recipients: tuple[str, ...]
    ) -> defer.Deferred | None:
        queue.in_flight -= 1
        self._running -= 1
        try:
            cancelled = isinstance(outcome, Failure) and outcome.check(defer.CancelledError)
            if cancelled and self._stopping:
                self._decision_for(part, "cancelled at shutdown, left spooled")
                return None
            entry = self._entries.get(part.message_id)
            if entry is None:
                return None
            return self._record(entry, part, queue, outcome, recipients)
        except Exception:
            # Never let bookkeeping kill the loop: keep the part and try it later.
            self.log.failure("scheduler: recording an attempt failed; retrying later")
            self._retry_later(part)
            return None
        finally:
            self._board.refresh(queue)
            self._pump()

    def _record(
        self,
        entry: _Entry,
        part: Part,
        queue: Queue,
        outcome: Any,
        recipients: tuple[str, ...],
    ) -> defer.Deferred | None:
        """Apply an attempt's per-recipient results to the message and spool them."""
        if isinstance(outcome, Failure) and outcome.check(MessageNotFound):
            # Someone removed it (an operator, or a finished duplicate): nothing to send.
            self.log.warn("message {message_id}: gone from the spool; forgotten",
                          message_id=part.message_id)
            self._forget(entry)
            return None
        if isinstance(outcome, Failure):
            self._counters["errors"] += 1
            self.log.failure(
                "message {message_id} binding {binding} domain {domain}: attempt failed "
                "inside hatwist; counted as a temporary failure",
                outcome, message_id=part.message_id, binding=part.key[0], domain=part.key[1],
            )
        elif getattr(outcome, "waiting_for_proxy", False):
            self._hold(part, entry, reason_of(outcome))
            return None
        results = results_of(outcome, recipients)
        self._counters["attempts"] += 1
        entry.message, counts = apply_results(entry.message, recipients, results)
        for name, count in counts.items():
            self._counters[name] += count
        still = pending_at(entry.message, part.key[1])
        if counts["delivered"] and queue.paused:
            self._waits.release(queue)  # the destination answers again
        elif still and not counts["delivered"] and getattr(outcome, "error", None):
            self._pause(queue, part, outcome.error)
        outcome_text = summary(results)
        if not still:
            del entry.parts[part.key[1]]
        else:
            part.failed_at = now = self._now()
            part.due = self._rules.policy(part.key).retry_at(
                attempts=max(r.attempts for r in still),
                received_at=entry.message.received_at,
                now=now,
            )
        return self._save(entry, part, outcome_text, reschedule=bool(still))

    def _save(self, entry: _Entry, part: Part, outcome: str, *, reschedule: bool) -> Any:
        """Spool the entry's state, log the decision, and schedule what comes next."""
        if entry.parts:
            entry.message = attrs.evolve(
                entry.message, next_attempt_at=min(p.due for p in entry.parts.values())
            )
        self._decision_for(
            part, outcome, next_attempt_at=part.due if reschedule else None
        )
        d = self._write(entry)
        if reschedule:
            self._schedule(part)
        if not entry.parts:
            self._finish(entry)
        return d

    def _write(self, entry: _Entry) -> defer.Deferred:
        """Write the entry's state to the spool; on failure, again a little later."""
        d = defer.maybeDeferred(self._spool.update, entry.message)
        d.addErrback(self._save_failed, entry)
        return d

    def _save_failed(self, failure: Failure, entry: _Entry) -> None:
        if failure.check(MessageNotFound):
            return  # finished meanwhile: nothing left to write down
        # Until the state is on disk a restart would retry recipients that were
        # delivered, so keep trying on a timer, not only at the next change.
        self._counters["errors"] += 1
        self.log.failure("message {message_id}: saving its state to the spool failed; "
                         "trying again in {delay}s", failure,
                         message_id=entry.message.id, delay=SAVE_RETRY_DELAY)
        if self._stopping or self._entries.get(entry.message.id) is not entry:
            return
        if entry.resave is None or not entry.resave.active():
            entry.resave = self._reactor.callLater(SAVE_RETRY_DELAY, self._resave, entry)

    def _resave(self, entry: _Entry) -> None:
        entry.resave = None
        if self._entries.get(entry.message.id) is entry and not entry.finishing:
            self._track(self._write(entry))

    def _expire(self, entry: _Entry, part: Part) -> None:
        """The part ran out of time: its pending recipients fail, keeping their last reason."""
        domain = part.key[1]
        entry.message, expired = expire(entry.message, domain)
        self._counters["bounced"] += expired
        del entry.parts[domain]
        self._track(self._save(entry, part, "expired", reschedule=False))

    # -- waits (the timers live in ._waits) ---------------------------------

    def _throttle_wait(self, part: Part, queue: Queue, throttle: str, wait: float) -> None:
        """
        The queue's ``outbound_throttle_messages`` allows no start before ``wait``
        seconds: the queue starts nothing until then.  Not an attempt, not a
        failure: no counter, no backoff.
        """
        if self._waits.throttle(part, queue, wait):  # once, not at every message it holds back
            self.log.info(
                "binding {binding} domain {domain}: outbound_throttle_messages {throttle} "
                "reached; its queue waits {wait:.0f}s for the next start",
                binding=part.key[0], domain=part.key[1], throttle=throttle, wait=wait,
            )

    def _resume(self, queue: Queue) -> None:
        """Start a queue again after a wait (throttle, proxy hold, pause)."""
        if not self._board.is_live(queue):
            return
        # Only its head was tried during the wait: expire the rest here.
        for part in [p for p in queue.ready if self._expired(p)]:
            queue.ready.remove(part)
        self._board.refresh(queue)
        self._pump()

    def _hold(self, part: Part, entry: _Entry, reason: str) -> None:
        """Put ``part`` back at the head of its queue and hold the queue for a proxy."""
        self._counters["waiting"] += 1
        # Remember why, for an expiry DSN, without counting an attempt.
        entry.message = note_wait(entry.message, part.key[1], reason)
        if self._waits.hold(part, reason):  # when the wait begins, not at every re-check
            self._decision_for(part, "waiting for a plumbed proxy", reason=reason)

    def _pause(self, queue: Queue, part: Part, reason: str) -> None:
        """
        No session answered for the destination at all (every MX unreachable,
        DNS failing): hold its queue for one ``retry_interval`` instead of
        spending an attempt -- and a connect timeout -- on each message queued
        for it.  The parts of the failed attempts keep their own backoff.
        """
        delay = self._waits.pause(queue, part, reason)
        if delay is not None:
            self._decision_for(part, f"destination unreachable: queue paused for {delay}s",
                               reason=reason)

    def _state_changed(self, change: StateChange) -> None:
        """Registry observer: release the queues of a server that came back;
        when one goes, take back the retries that probably failed because of it."""
        if self._stopping:
            return
        try:
            if change.new is ServerState.PLUMBED:
                for queue in [q for q in self._board if q.held]:
                    unknown = self._rules.settings(queue.key) is None
                    if unknown or self._rules.uses(queue.key, change.server):
                        self._waits.release(queue)
            else:
                self._recall(change.server)
        except Exception:
            self.log.failure("scheduler: handling a proxy state change failed")

    def _recall(self, server: Any) -> None:
        """
        ``server`` was just seen unplumbed.  Attempts through it that failed
        since shortly before (the registry said plumbed until the checks
        caught up) most likely failed because of it, not the destination:
        their parts wait for a plumbed proxy now, like parts that never ran,
        instead of a full backoff -- or go at once if the route has another
        plumbed proxy.
        """
        since = self._now() - self._rules.failure_window()
        for entry in list(self._entries.values()):
            for part in list(entry.parts.values()):
                if part.timer is None or not part.timer.active():
                    continue
                if part.failed_at is None or part.failed_at < since:
                    continue
                if not self._rules.uses(part.key, server):
                    continue
                part.timer.cancel()
                part.timer = None
                part.failed_at = None
                why = self._rules.no_plumbed_proxy(part.key)
                if why is None:
                    self._board.add(part)
                else:
                    self._hold(part, entry, why)
        self._pump()

    # -- the end of a message ------------------------------------------------

    def _finish(self, entry: _Entry) -> None:
        """Nothing pending: bounce the failed recipients (once), then remove the message."""
        if entry.finishing:
            return
        entry.finishing = True
        message = entry.message
        d = defer.succeed(None)
        if needs_bounce(message) and not entry.bounced:
            d.addCallback(lambda _: self._bounce(entry))
        d.addCallback(lambda _: self._spool.remove(message.id))
        d.addErrback(lambda f: None if f.check(MessageNotFound) else f)
        d.addCallbacks(self._removed, self._finish_failed, callbackArgs=(entry,),
                       errbackArgs=(entry,))
        self._track(d)

    def _bounce(self, entry: _Entry) -> defer.Deferred:
        message = entry.message

        def spooled(notice: SpooledMessage) -> None:
            entry.bounced = True
            self._counters["dsns"] += 1
            self._decision(message, "", f"DSN {notice.id} spooled to <{message.mail_from}>")
            self.submit(notice)

        d = spool_bounce(self._spool, message, reporting_mta=self._reporting_mta, now=self._now())
        return d.addCallback(spooled)

    def _removed(self, _: object, entry: _Entry) -> None:
        self._forget(entry)
        self._decision(entry.message, "", "removed")

    def _forget(self, entry: _Entry) -> None:
        self._entries.pop(entry.message.id, None)
        if self._recovery is not None:
            self._recovery.finished.add(entry.message.id)
        for timer in [p.timer for p in entry.parts.values()] + [entry.resave]:
            _cancel(timer)

    def _finish_failed(self, failure: Failure, entry: _Entry) -> None:
        self._counters["errors"] += 1
        self.log.failure("message {message_id}: bounce or removal failed; retrying later",
                         failure, message_id=entry.message.id)
        entry.finishing = False
        if not self._stopping:
            entry.retry = self._reactor.callLater(
                FALLBACK_POLICY.retry_interval, self._finish, entry)

    # -- helpers -------------------------------------------------------------

    def _now(self) -> float:
        return self._reactor.seconds()

    def _owner(self, part: Part) -> _Entry | None:
        """The entry ``part`` is current for, or None for a stale part (its message
        finished, or the part was replaced) that must not start or expire."""
        entry = self._entries.get(part.message_id)
        if entry is None or entry.parts.get(part.key[1]) is not part:
            return None
        return entry

    def _timers(self) -> list[IDelayedCall]:
        calls = self._waits.timers()
        for entry in self._entries.values():
            calls += [p.timer for p in entry.parts.values() if p.timer is not None]
            calls += [c for c in (entry.retry, entry.resave) if c is not None]
        return calls

    def _cancel_in_flight(self) -> None:
        self.log.warn("scheduler: grace period over; cancelling {count} attempts",
                      count=len(self._in_flight))
        for d in list(self._in_flight.values()):
            d.cancel()

    def _track(self, d: defer.Deferred) -> None:
        """Keep ``d`` until it fires, so stopService can wait for it."""
        self._background.add(d)
        d.addBoth(lambda result: self._background.discard(d) or result)
        d.addErrback(lambda f: self.log.failure("scheduler: background work failed", f))

    def _decision_for(self, part: Part, outcome: str, **fields: Any) -> None:
        entry = self._entries.get(part.message_id)
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

