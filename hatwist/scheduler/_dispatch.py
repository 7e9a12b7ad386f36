# -*- test-case-name: tests.test_scheduler -*-
"""
The dispatcher of attempts: takes due parts off the board in turn and runs them.

Before a part starts, the last checks: is it still current, has its message run
out of time, does its route have a plumbed proxy (for a binding_group's queue: which
of its bindings takes the attempt, see :meth:`Rules.candidates`; the checks below
are then the chosen binding's, and a refused start moves on to the next
candidate), does its queue's outbound
throttle and its connection slots allow a start now (a message counts when its
attempt starts; one the agent held for want of a plumbed proxy gives its
throttle start back).  That last question goes to the scheduler's limits
(:class:`hatwist.shared.ILimits`): local ones answer at once, shared ones
(Redis) later, through a Deferred; meanwhile the part holds a place of its
queue's ``max_connections`` and of ``max_in_flight`` here, so a late answer
never lets two attempts start for one slot and never stops the loop.  Then
the content is read from the spool and handed to the agent -- or, for a message
over :data:`LOAD_CONTENT_ABOVE`, a loader the agent calls once a session is
ready for it; whatever comes
back -- a result, a failure, a cancellation at shutdown -- goes to the
scheduler's :meth:`Host.record`.  At most ``max_in_flight`` attempts run at
once over all queues; nothing here ever lets an exception stop the loop.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from hatwist.config import route_group
from hatwist.config.values import Throttle
from hatwist.delivery import Envelope
from hatwist.delivery.attempt import OutboundMessage
from hatwist.shared import Decision, ILimits, Lease, Refusal
from hatwist.spool import MessageNotFound

from ._ledger import Entry, Ledger
from ._outcome import pending_at
from ._queues import Board, Part, Queue
from ._rules import Rules

#: Seconds before a queue refused a slot without a hint asks again.
SLOT_RETRY = 1.0

#: Parts one pump takes off the board before the reactor runs again.  Most start an
#: attempt (``max_in_flight`` bounds those), but a part whose message was held,
#: deleted or bounced meanwhile is only dropped when its turn comes, and after a bulk
#: ``hatwist queue hold`` one queue's line holds a third of a million of them: one pump
#: dropped them all in one turn (1.3 to 3 s at a million queued, bench_queue.py).
PUMP_BUDGET = 1000

#: Messages larger than this (bytes) are read from the spool by the session that
#: sends them (``OutboundMessage.load_content``) rather than before the attempt,
#: so a thousand attempts still connecting do not hold a thousand large bodies.
LOAD_CONTENT_ABOVE = 256 * 1024


class _Loader:
    """``load_content`` for one attempt: reads the spool, and remembers whether the
    message was gone, which the agent's result cannot say."""

    def __init__(self, spool: Any, message_id: str) -> None:
        self._spool = spool
        self._id = message_id
        self.gone: Failure | None = None

    def __call__(self) -> defer.Deferred:
        d = defer.maybeDeferred(self._spool.content, self._id)
        return d.addErrback(self._failed)

    def _failed(self, failure: Failure) -> Failure:
        if failure.check(MessageNotFound):
            self.gone = failure
        return failure

    def check(self, result: Any) -> Any:
        """The agent's result, or the spool's MessageNotFound if the read found none."""
        return result if self.gone is None else self.gone


class Host(Protocol):
    """What the dispatcher asks of the scheduler."""

    log: Logger

    def expired(self, part: Part) -> bool: ...

    def hold(self, part: Part, entry: Entry, reason: str) -> None: ...

    def throttle_wait(self, part: Part, queue: Queue, throttle: str, wait: float) -> None: ...

    def slot_wait(self, part: Part, queue: Queue, wait: float) -> None: ...

    def record(
        self, entry: Entry, part: Part, queue: Queue, outcome: Any, recipients: tuple[str, ...]
    ) -> defer.Deferred | None: ...

    def retry_later(self, part: Part) -> None: ...

    def decision_for(self, part: Part, outcome: str, **fields: Any) -> None: ...


class Dispatcher:
    """
    :param host: the scheduler (see :class:`Host`).
    :param limits: ``max_connections`` and the outbound throttles, asked before
        every start (they outlive a stop; shared ones answer through a Deferred).
    """

    def __init__(
        self,
        *,
        host: Host,
        board: Board,
        ledger: Ledger,
        rules: Rules,
        limits: ILimits,
        spool: Any,
        agent: Any,
        reactor: Any,
        max_in_flight: int,
    ) -> None:
        self._host = host
        self._board = board
        self._ledger = ledger
        self._rules = rules
        self._limits = limits
        self._spool = spool
        self._agent = agent
        self._reactor = reactor
        self._max_in_flight = max_in_flight
        self._in_flight: dict[Part, defer.Deferred] = {}
        self._running = 0  # attempts whose outcome is not in yet (saving is not counted)
        self._pumping = False
        self._later: Any = None
        self.active = False
        """Whether attempts may start (the service runs and is not stopping)."""
        self.stopping = False

    def __len__(self) -> int:
        """Attempts running now."""
        return len(self._in_flight)

    def running(self) -> list[defer.Deferred]:
        return list(self._in_flight.values())

    def parts_in_flight(self) -> list[Part]:
        """The parts whose attempts are running (at most ``max_in_flight``)."""
        return list(self._in_flight)

    def attempting(self, part: Part) -> bool:
        """Whether an attempt of ``part`` is running (for ``hatwist queue``)."""
        return part in self._in_flight

    def cancel(self, part: Part) -> None:
        """Cancel the running attempt of ``part``, if any (a deleted message)."""
        d = self._in_flight.get(part)
        if d is not None:
            d.cancel()

    def cancel_all(self) -> None:
        for d in list(self._in_flight.values()):
            d.cancel()

    def pump(self) -> None:
        """Start attempts, one per startable queue in turn, until none can start --
        or :data:`PUMP_BUDGET` parts were taken, when the rest waits a reactor turn
        (and so does every pump asked for meanwhile: hundreds of queues released by
        their timers in one turn must not each spend a budget)."""
        if self._pumping:
            return  # the loop below picks up whatever changed
        if self._later is not None and self._later.active():
            return  # this turn's budget is spent: the next turn's pump takes it all
        self._later = None
        self._pumping = True
        try:
            for _ in range(PUMP_BUDGET):
                if not self.active or self.stopping or self._running >= self._max_in_flight:
                    break
                taken = self._board.next()
                if taken is None:
                    break
                queue, part = taken
                try:
                    self._start(part, queue)
                except Exception:
                    # Never let one message stop the loop: log it, try it again later.
                    self._host.log.failure("message {message_id}: starting an attempt failed",
                                           message_id=part.message_id)
                    self._host.retry_later(part)
                self._board.refresh(queue)  # back at the end of the line, if still startable
            else:
                self._later = self._reactor.callLater(0, self.pump)  # more, next turn
        finally:
            self._pumping = False

    def timers(self) -> list[Any]:
        """The next turn's pump, if one is due (for a stop)."""
        return [self._later] if self._later is not None else []

    def _start(self, part: Part, queue: Queue) -> None:
        entry = self._ledger.current(part)
        if entry is None or self._host.expired(part):
            return
        why = self._rules.no_plumbed_proxy(part.key)
        if why is not None:
            self._host.hold(part, entry, why)
            return
        # A binding's queue runs on its binding; a group queue's attempt on the first of
        # the group's usable bindings (weighted turns) whose limits let it start now.
        bindings = self._rules.candidates(part.key)
        if not bindings:
            self._host.hold(part, entry, "4.4.0 no usable binding in its binding_group")
            return
        # The last check before the start: a message counts when its attempt starts.
        now = self._reactor.seconds()
        refused: tuple[Decision, Throttle | None, str] | None = None
        for binding in bindings:
            key = part.key if binding == part.key[0] else (binding, part.key[1])
            throttle = self._rules.throttle(key)
            answer = self._limits.start(key, throttle, self._rules.max_connections(key), now)
            if isinstance(answer, defer.Deferred):
                queue.in_flight += 1  # the place is held while the answer travels
                self._running += 1
                answer.addBoth(self._answered, part, queue, throttle, binding)
                return
            if answer.lease is not None:
                self._decided(answer, part, queue, entry, throttle, binding)
                return
            if refused is None:
                refused = (answer, throttle, binding)
        assert refused is not None
        self._decided(refused[0], part, queue, entry, refused[1], refused[2])

    def _answered(self, decision: Decision | Failure, part: Part, queue: Queue,
                  throttle: Throttle | None, binding: str) -> None:  # fmt: skip
        queue.in_flight -= 1
        self._running -= 1
        try:
            entry = self._ledger.current(part)
            if isinstance(decision, Failure):
                # ILimits promises an answer; a bug must still not lose the message.
                self._host.log.failure("message {message_id}: asking the limits failed",
                                       decision, message_id=part.message_id)  # fmt: skip
                if self.active and entry is not None:
                    self._host.retry_later(part)
                return
            live = self.active and not self.stopping and self._board.is_live(queue)
            if not live or entry is None:
                # stopped, or the message changed meanwhile: not ours to start any more
                if decision.lease is not None:
                    self._limits.finish(decision.lease)
                return
            self._decided(decision, part, queue, entry, throttle, binding)
        except Exception:
            self._host.log.failure("message {message_id}: starting an attempt failed",
                                   message_id=part.message_id)  # fmt: skip
            self._host.retry_later(part)
        finally:
            self._board.refresh(queue)
            self.pump()

    def _decided(self, decision: Decision, part: Part, queue: Queue, entry: Entry,
                 throttle: Throttle | None, binding: str) -> None:  # fmt: skip
        if decision.lease is None:
            if decision.refusal is Refusal.THROTTLE:
                self._host.throttle_wait(part, queue, str(throttle), decision.wait or 0.0)
            else:  # no slot free in the fleet, or too many questions waiting
                wait = SLOT_RETRY if decision.wait is None else decision.wait
                self._host.slot_wait(part, queue, wait)
            return
        domain = part.key[1]
        recipients = tuple(r.address for r in pending_at(entry.message, domain))
        queue.in_flight += 1
        self._running += 1
        queue.waiting = False
        if entry.message.size > LOAD_CONTENT_ABOVE:
            # Read per session, once one is ready for it: an attempt still waiting
            # for connects and banners holds none of it.
            d = defer.maybeDeferred(self._deliver, None, entry, domain, recipients, binding)
        else:
            d = defer.maybeDeferred(self._spool.content, entry.message.id)
            d.addCallback(self._deliver, entry, domain, recipients, binding)
        self._in_flight[part] = d
        d.addBoth(self._attempted, part, queue, recipients, decision.lease)
        d.addBoth(self._settled, part)

    def _deliver(
        self, content: bytes | None, entry: Entry, domain: str, recipients: tuple[str, ...],
        binding: str,
    ) -> defer.Deferred:
        message = entry.message
        envelope = Envelope(mail_from=message.mail_from, rcpt_to=recipients,
                            smtputf8=message.smtputf8)
        group = route_group(message.binding)
        if content is not None:
            outbound = OutboundMessage(
                id=message.id, binding=binding, domain=domain, envelope=envelope,
                content=content, group=group,
            )
            return self._agent.deliver(outbound)
        loader = _Loader(self._spool, message.id)
        outbound = OutboundMessage(
            id=message.id, binding=binding, domain=domain, envelope=envelope,
            load_content=loader, group=group,
        )
        # The agent turns a failed read into a temporary failure of its own; a message
        # removed from the spool meanwhile must be forgotten, not retried until expiry.
        return self._agent.deliver(outbound).addCallback(loader.check)

    def _settled(self, _: object, part: Part) -> None:
        self._in_flight.pop(part, None)

    def _attempted(
        self, outcome: Any, part: Part, queue: Queue, recipients: tuple[str, ...], lease: Lease
    ) -> defer.Deferred | None:
        queue.in_flight -= 1
        self._running -= 1
        if getattr(outcome, "waiting_for_proxy", False):
            # It never reached an MX (no plumbed proxy for its family): no start.
            self._limits.unstart(lease)
        self._limits.finish(lease)
        try:
            cancelled = isinstance(outcome, Failure) and outcome.check(defer.CancelledError)
            if cancelled and self.stopping:
                self._host.decision_for(part, "cancelled at shutdown, left spooled")
                return None
            entry = self._ledger.get(part.message_id)
            if entry is not part.entry:
                return None
            return self._host.record(entry, part, queue, outcome, recipients)
        except Exception:
            # Never let bookkeeping kill the loop: keep the part and try it later.
            self._host.log.failure("scheduler: recording an attempt failed; retrying later")
            self._host.retry_later(part)
            return None
        finally:
            self._board.refresh(queue)
            self.pump()
