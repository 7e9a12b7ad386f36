# -*- test-case-name: tests.shared.test_redis_credits -*-
"""The credits of one node, asked of Redis and given back: the I/O side of
:mod:`hatwist.shared._credits`.

:class:`CreditSupply` decides nothing itself: :class:`~hatwist.shared._credits.Credits`
says when a queue wants credits and which ones have expired; this sends the CREDITS
script and the ZREMs through the limits' batch (so they ride with the starts' round
trips) and keeps the one timer that gives back credits expiring unused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from hatwist.config.values import Throttle

from ._credits import Credits, lifetime, usable
from ._scripts import CREDITS, Script
from ._values import QueueKey

#: Asks Redis one script (script, keys, args); None when too many questions wait.
Question = Callable[[Script, list[str], list[Any]], "defer.Deferred | None"]


class CreditSupply:
    """Takes credits for starts, asks for more before they run out, gives back the
    unused ones.

    :param question: sends a script with the next batch (None: too busy to ask).
    :param release: ``release(key, ids)`` takes starts out of ``key``'s window (ZREM).
    :param throttle_key: the Redis key of a queue's throttle window.
    """

    def __init__(self, reactor: Any, question: Question,
                 release: Callable[[QueueKey, list[str]], None],
                 failed: Callable[[Failure], None], throttle_key: Callable[[QueueKey], str],
                 ids: Iterator[str]) -> None:  # fmt: skip
        self._reactor = reactor
        self._question = question
        self._release = release
        self._failed = failed
        self._throttle_key = throttle_key
        self._ids = ids
        self._script = Script(CREDITS)
        self.credits = Credits()
        self._sweep: Any = None
        self._stopped = False

    def take(self, key: QueueKey, throttle: Throttle, now: float) -> str | None:
        """A credit for one start of ``key`` (its start id), or None: ask Redis."""
        credit = self.credits.take(key, throttle, now)
        if credit is not None:
            self._refill(key, throttle, now, start=False)  # before they run out
        return credit

    def asked(self, key: QueueKey, throttle: Throttle, now: float) -> None:
        """A start of ``key`` is being asked of Redis: credits may travel with it."""
        self._refill(key, throttle, now, start=True)

    def sweep(self) -> None:
        """Give back the credits that expired unused (one ZREM per queue, riding with
        the next batch), so other nodes may start in their place; also forgets queues
        that asked for none lately (the heartbeat calls this too)."""
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None
        unused: dict[QueueKey, list[str]] = {}
        for key, start_id in self.credits.expired(self._reactor.seconds()):
            unused.setdefault(key, []).append(start_id)
        for key, ids in unused.items():
            self._release(key, ids)
        due = self.credits.next_expiry()
        if due is not None:
            self._sweep_at(due)

    def stop(self) -> list[tuple[str, str]]:
        """At a stop: every unused credit, as (Redis key, start id), to give back."""
        self._stopped = True
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        return [(self._throttle_key(key), i) for key, i in self.credits.take_all()]

    def _refill(self, key: QueueKey, throttle: Throttle, now: float, *, start: bool) -> None:
        wanted = self.credits.wanted(key, throttle, now, start=start)
        if not wanted:
            return
        life = lifetime(throttle)
        base = next(self._ids)
        d = self._question(self._script, [self._throttle_key(key)],
                           [throttle.messages, throttle.seconds, wanted, int(life * 1000),
                            base])  # fmt: skip
        if d is None:
            self.credits.answered(key, [], 0.0)
            return
        # Redis records them at its own (later) now plus the lifetime; this node uses
        # them for half of that, from before the question leaves, and gives back the
        # unused ones then, before Redis would let them go
        d.addBoth(self._credited, key, base, self._reactor.seconds() + usable(throttle))

    def _credited(self, reply: Any, key: QueueKey, base: str, until: float) -> None:
        if isinstance(reply, Failure):
            self.credits.answered(key, [], 0.0)
            self._failed(reply)
            return
        ids = [f"{base}+{i}" for i in range(1, int(reply) + 1)]
        self.credits.answered(key, ids, until)
        if ids and not self._stopped:
            self._sweep_at(until)

    def _sweep_at(self, when: float) -> None:
        if self._sweep is not None and self._sweep.active():
            if self._sweep.getTime() <= when:
                return
            self._sweep.cancel()
        delay = max(0.0, when - self._reactor.seconds())
        self._sweep = self._reactor.callLater(delay, self.sweep)
