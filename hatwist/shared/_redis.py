# -*- test-case-name: tests.shared.test_redis -*-
"""Limits shared by every hatwist process that points at the same Redis.

One START script per attempt start (see :mod:`._scripts`) takes a connection slot and a
place in the throttle window atomically, with Redis's clock, so a 10/3600 throttle lets
10 messages start in any hour across the whole fleet, and the window outlives any node.
A slot is a *lease*: an expiry score in the queue's slots set, renewed by this node's
heartbeat (every ``heartbeat`` seconds, ``lease_ttl`` long), so the slots of a node that
dies come free within ``lease_ttl`` without anyone noticing the death.  A busy queue
asks Redis seldom: a slot given back lingers for its next start (:mod:`._idle`), and a
throttled start takes one of the *credits* its queue reserved ahead (:mod:`._credits`,
:mod:`._supply`), so most starts are decided here at once, as local limits would.

redis-py blocks, so every call runs in a small thread pool of its own and comes back as
a Deferred: a slow Redis delays the start it decides, never the reactor.  Each call has
a deadline (``timeout``, socket-level) and at most ``max_pending`` questions wait at once.

When Redis cannot answer, the node does what a careful operator would do by hand: it
keeps delivering under *local* limits of the configured values divided by the number of
nodes it last saw (each node's heartbeat registers it for ``lease_ttl``; the heartbeat's
reply counts the live ones), rounded down so the fleet's shares never add up to more
than the configured value; a queue Redis last called full stays closed until the time
Redis gave.  The change is logged once when Redis goes and once when it comes back; the
heartbeat keeps probing meanwhile and the leases of attempts started alone are counted
in Redis again at the first heartbeat that gets through.
"""

from __future__ import annotations

import itertools
import os
import socket
import uuid
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from hatwist.config.values import Throttle, redacted_url

from . import _calls
from ._batch import Batcher
from ._idle import LINGER, IdleLeases
from ._interfaces import ILimits
from ._journal import Journal
from ._local import LocalLimits
from ._scripts import GRANTED, HEARTBEAT, NO_SLOT, REPLAY, START, Script
from ._supply import CreditSupply
from ._values import (
    Decision,
    Lease,
    QueueKey,
    Refusal,
    divided_slots,
    divided_throttle,
    redis_key,
)

#: Seconds a lease (and a node's registration) lives without a heartbeat.
LEASE_TTL = 30.0
#: Seconds between heartbeats (which renew every lease and count the nodes).
HEARTBEAT_INTERVAL = 10.0
#: Socket deadline of every Redis call, in seconds.
TIMEOUT = 1.0
#: Questions to Redis waiting for an answer at once, at most.
MAX_PENDING = 256
#: Seconds before a queue refused a slot asks again (slots free up elsewhere).
SLOT_POLL = 0.25
#: Seconds before a start refused for BUSY asks again.
BUSY_WAIT = 0.05


def default_node_id() -> str:
    """Unique in the fleet: this host, this process, and a random part for pid reuse."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


_log = Logger(namespace="hatwist.shared")


def _errors() -> tuple[type[BaseException], ...]:
    return (redis.RedisError, OSError)


@implementer(ILimits)
class RedisLimits(service.Service):
    """The fleet-wide :class:`~hatwist.shared.ILimits` (a service: start it first).

    :param url: ``redis://``, ``rediss://`` (TLS) or ``unix://`` URL of the Redis.
    :param prefix: of every key this writes, so several fleets may share one Redis.
    :param client: a ready redis-py client (tests); made from ``url`` otherwise.
    """

    def __init__(
        self,
        url: str,
        *,
        reactor: Any = None,
        prefix: str = "hatwist",
        node_id: str | None = None,
        lease_ttl: float = LEASE_TTL,
        heartbeat: float = HEARTBEAT_INTERVAL,
        timeout: float = TIMEOUT,
        max_pending: int = MAX_PENDING,
        slot_poll: float = SLOT_POLL,
        linger: float = LINGER,
        client: redis.Redis | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self.url = redacted_url(url)
        self._prefix = prefix
        self.node_id = node_id or default_node_id()
        self._lease_ttl_ms = int(lease_ttl * 1000)
        self._heartbeat = heartbeat
        self._max_pending = max_pending
        self._slot_poll = slot_poll
        # One immediate retry on a fresh connection (a pooled one Redis closed), none on a
        # timeout: a START that timed out may have run, and running it twice would count
        # one start twice (harmless but wasteful); redis-py's default waits up to 10 s.
        retry = Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
        self._client = client or redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=retry
        )
        self._pool = ThreadPool(minthreads=1, maxthreads=4, name="hatwist-redis")
        self._start_script, self._beat_script = Script(START), Script(HEARTBEAT)
        self._replay_script = Script(REPLAY)
        self._local = LocalLimits(lease_prefix=f"{self.node_id}:alone")
        self._journal = Journal()  # this node's starts that still count, for a replay
        self._ids = (f"{self.node_id}:{n}" for n in itertools.count(1))
        self._leases: dict[str, Lease] = {}  # live leases (idle ones too), renewed by beats
        self._idle = IdleLeases(linger)  # given back a moment ago, kept for reuse
        self._idle_sweep: Any = None
        self._closed_until: dict[QueueKey, float] = {}  # Redis's last "full until"
        self._nodes = 1
        self.up = True
        """Whether Redis answered the last question (assumed until one fails)."""
        self._down_since: float | None = None
        self._recovering = False  # Redis answers again; the replay is under way
        self._pending = 0
        self._beating = False
        self._batch = Batcher(reactor, self._in_pool, self._client)
        # throttle starts reserved ahead, per queue (hatwist/shared/_credits.py)
        self._credits = CreditSupply(
            reactor, self._question, lambda key, ids: self._zrem("throttle", key, *ids),
            self._failed, lambda key: redis_key(self._prefix, "throttle", key), self._ids,
        )  # fmt: skip
        self._beats = task.LoopingCall(self._beat)
        self._beats.clock = reactor

    # -- the service -------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._pool.start()
        self._beats.start(self._heartbeat, now=True)

    def stopService(self) -> defer.Deferred:
        super().stopService()
        if self._beats.running:
            self._beats.stop()
        if self._idle_sweep is not None and self._idle_sweep.active():
            self._idle_sweep.cancel()
        self._idle.take_all()  # still in _leases: released with the rest
        d = self._batch.drained()  # credits asked for may still be on their way
        d.addCallback(lambda _: self._say_goodbye())
        d.addErrback(lambda f: None)  # the leases and the registration expire anyway
        d.addBoth(lambda _: self._pool.stop())
        return d

    def _say_goodbye(self) -> defer.Deferred | None:
        releases = self._batch.take_releases()
        releases += self._credits.stop()
        releases += [(redis_key(self._prefix, "slots", lease.key), lease.id)
                     for lease in self._leases.values()]  # fmt: skip
        if not self.up:
            return None
        return self._call(_calls.goodbye, self._client, self._prefix, self.node_id, releases)

    @property
    def nodes(self) -> int:
        """Live nodes at the last heartbeat that got through (1 before any did)."""
        return self._nodes

    # -- ILimits -----------------------------------------------------------------------

    def start(
        self, key: QueueKey, throttle: Throttle | None, max_connections: int, now: float
    ) -> Decision | defer.Deferred:
        if self._recovering:
            return Decision.refuse(Refusal.BUSY, BUSY_WAIT)  # a start now could miss the replay
        if not self.up:
            return self._alone(key, throttle, max_connections, now)
        idle = self._idle.take(key)
        if idle is not None:
            if self._local.in_flight(key) < max_connections:
                # the slot never left this node: no question for Redis, unless the
                # throttle needs one and no credit of the queue is left
                if throttle is None:
                    return Decision.grant(self._local.take(key, None, now, idle.id))
                credit = self._credits.take(key, throttle, now)
                if credit is not None:
                    return Decision.grant(self._granted(key, throttle, now, idle.id, credit))
            self._release(idle)  # travels just before the question below
        lease_id = next(self._ids)
        keys = [redis_key(self._prefix, "slots", key)]
        args = [lease_id, max_connections, self._lease_ttl_ms, 0, 1, lease_id]
        if throttle is not None:
            keys.append(redis_key(self._prefix, "throttle", key))
            args[3:5] = [throttle.messages, throttle.seconds]
        d = self._question(self._start_script, keys, args)
        if d is None:
            return Decision.refuse(Refusal.BUSY, BUSY_WAIT)
        d.addBoth(self._decided, key, throttle, max_connections, lease_id)
        if throttle is not None:
            self._credits.asked(key, throttle, now)  # credits in the same round trip
        return d

    def _question(self, script: Script, keys: list[str], args: list[Any]) -> defer.Deferred | None:
        """Send a script with the next batch; None when too many wait already."""
        if self._pending >= self._max_pending:
            return None
        self._pending += 1
        return self._batch.script(script, keys, args).addBoth(self._answered)

    def _zrem(self, kind: str, key: QueueKey, *members: str) -> None:
        """Take ``members`` out of a queue's slots or throttle set (riding with the
        next batch).  Skipped when Redis is away or too busy: leases and starts leave
        by themselves (after ``lease_ttl``, or the throttle's seconds)."""
        if not self.up or self._pending >= self._max_pending:
            return
        self._pending += 1
        d = self._batch.zrem(redis_key(self._prefix, kind, key), *members)
        d.addBoth(self._answered).addErrback(self._failed)

    def next_start(self, key: QueueKey, throttle: Throttle | None, now: float) -> float:
        """When ``key`` may start again as far as this node knows (for status pages):
        the time Redis last gave, or this node's own window while Redis is away."""
        closed = self._closed_until.get(key)
        if closed is not None and closed > now:
            return closed
        if self.up:
            return now
        share = divided_throttle(throttle, self._nodes)
        if share == 0:
            return now + self._heartbeat
        return self._local.next_start(key, share, now)  # type: ignore[arg-type]

    def finish(self, lease: Lease) -> None:
        self._local.finish(lease)
        if lease.id not in self._leases:
            return
        if not self.up or not self.running:
            del self._leases[lease.id]  # Redis is away: the lease expires there by itself
            return
        now = self._reactor.seconds()
        self._idle.add(lease, now)
        if self._idle_sweep is None or not self._idle_sweep.active():
            self._idle_sweep = self._reactor.callLater(self._idle.linger, self._sweep_idle)

    def unstart(self, lease: Lease) -> None:
        """Take the start out of this node's window and, when Redis granted it, out
        of the fleet's (a ZREM riding with the next batch; the start's id is the
        lease's, or the credit's it was made from).  A replay after a Redis restart may
        count it again, once."""
        self._local.unstart(lease)
        if lease.at is not None and lease.id in self._leases:
            self._zrem("throttle", lease.key, lease.start_id)

    def _sweep_idle(self) -> None:
        self._idle_sweep = None
        for lease in self._idle.expired(self._reactor.seconds()):
            self._release(lease)
        due = self._idle.next_expiry()
        if due is not None:
            delay = max(0.0, due - self._reactor.seconds())
            self._idle_sweep = self._reactor.callLater(delay, self._sweep_idle)

    def _release(self, lease: Lease) -> None:
        """Give a slot back to the fleet for real (a ZREM riding with the next batch)."""
        self._leases.pop(lease.id, None)
        self._zrem("slots", lease.key, lease.id)

    def _granted(self, key: QueueKey, throttle: Throttle | None, now: float, lease_id: str,
                 credit: str | None = None) -> Lease:  # fmt: skip
        """Count a start Redis granted (or a credit it granted before) on this node."""
        lease = self._local.take(key, throttle, now, lease_id, credit)
        self._leases[lease.id] = lease
        self._journal.record(key, throttle, now, lease.start_id)
        return lease

    # -- answers -----------------------------------------------------------------------

    def _in_pool(self, f: Any, *args: Any) -> defer.Deferred:
        return threads.deferToThreadPool(self._reactor, self._pool, f, *args)

    def _call(self, f: Any, *args: Any) -> defer.Deferred:
        self._pending += 1
        return self._in_pool(f, *args).addBoth(self._answered)

    def _answered(self, result: Any) -> Any:
        self._pending -= 1
        return result

    def _decided(
        self, reply: Any, key: QueueKey, throttle: Throttle | None, max_connections: int,
        lease_id: str,
    ) -> Decision:  # fmt: skip
        now = self._reactor.seconds()
        if isinstance(reply, Failure):
            self._failed(reply)
            return self._alone(key, throttle, max_connections, now)
        code, value = int(reply[0]), int(reply[1])
        if code == GRANTED:
            return Decision.grant(self._granted(key, throttle, now, lease_id))
        if code == NO_SLOT:
            return Decision.refuse(Refusal.SLOTS, self._slot_poll)
        wait = value / 1e6
        self._closed_until[key] = now + wait
        return Decision.refuse(Refusal.THROTTLE, wait)

    def _alone(
        self, key: QueueKey, throttle: Throttle | None, max_connections: int, now: float
    ) -> Decision:
        """Decide without Redis: this node's rounded-down share of each limit."""
        slots = divided_slots(max_connections, self._nodes)
        share = divided_throttle(throttle, self._nodes)
        if not slots:
            return Decision.refuse(Refusal.SLOTS, self._heartbeat)
        if share == 0:
            return Decision.refuse(Refusal.THROTTLE, self._heartbeat)
        closed = self._closed_until.get(key)
        if closed is not None:
            if closed > now:
                return Decision.refuse(Refusal.THROTTLE, closed - now)
            del self._closed_until[key]
        decision = self._local.start(key, share, slots, now)  # type: ignore[arg-type]
        if decision.lease is not None:
            self._leases[decision.lease.id] = decision.lease
            self._journal.record(key, throttle, now, decision.lease.id)
        elif decision.wait is None:
            return Decision.refuse(Refusal.SLOTS, self._slot_poll)
        return decision

    # -- the heartbeat: registration, renewals, node count, probe ------------------------

    def _beat(self) -> None:
        if self._beating:
            return  # the last one has not come back yet
        self._beating = True
        leases = list(self._leases.values())
        d = self._call(_calls.renew_all, self._client, self._beat_script, self._prefix,
                       self.node_id, self._lease_ttl_ms, leases)  # fmt: skip
        d.addCallbacks(self._alive, self._failed)
        d.addBoth(self._beaten)

    def _beaten(self, _: object) -> None:
        self._beating = False
        if self.running:
            self._credits.sweep()  # also forgets queues that asked for none lately
        now = self._reactor.seconds()
        for key in [k for k, until in self._closed_until.items() if until <= now]:
            del self._closed_until[key]

    def _alive(self, nodes: int) -> defer.Deferred | None:
        self._nodes = max(1, nodes)
        if self.up or self._recovering:
            return None
        # Back: first make the fleet's windows count what this node started alone (a
        # restarted Redis knows nothing), then share again.  Starts wait meanwhile.
        self._recovering = True
        now = self._reactor.seconds()
        entries = [
            (redis_key(self._prefix, "throttle", key), throttle,
             [(max(0, int((now - t) * 1e6)), start_id) for t, start_id in starts])
            for key, throttle, starts in self._journal.recent(now)
        ]  # fmt: skip
        d = self._call(_calls.replay, self._client, self._replay_script, entries)
        d.addCallbacks(self._shared_again, lambda f: None)  # still away: the next beat retries
        d.addBoth(self._recovered)
        return d

    def _recovered(self, _: object) -> None:
        self._recovering = False

    def _shared_again(self, _: object) -> None:
        nodes = self._nodes
        if not self.up:
            self.up = True
            since, self._down_since = self._down_since, None
            _log.info(
                "shared limits: Redis {url} answers again after {outage:.1f}s; limits are "
                "shared across the fleet again ({nodes} nodes)",
                url=self.url, outage=self._reactor.seconds() - (since or 0.0), nodes=nodes,
            )

    def _failed(self, failure: Failure) -> None:
        if not failure.check(*_errors()):
            _log.failure("shared limits: unexpected error from Redis {url}", failure,
                             url=self.url)  # fmt: skip
        if self.up:
            self.up = False
            self._down_since = self._reactor.seconds()
            for lease in self._idle.take_all():  # Redis lets them expire
                self._leases.pop(lease.id, None)
            self._credits.credits.drop_all()  # counted in Redis until their window passes
            _log.warn(
                "shared limits: Redis {url} does not answer ({error}); until it does, this "
                "node delivers under its share of each limit: the configured values divided "
                "by the {nodes} nodes last seen, rounded down",
                url=self.url, error=failure.getErrorMessage(), nodes=self._nodes,
            )
