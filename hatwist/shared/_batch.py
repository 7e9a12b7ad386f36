# -*- test-case-name: tests.shared.test_redis -*-
"""Questions asked of Redis in one reactor turn travel together, as one pipeline.

A scheduler's pump starts many attempts in one turn; one thread hand-off and one round
trip for all of them instead of one each is what keeps shared limits close to local ones
in cost (bench/bench_shared_limits.py).  One pipeline is in flight at a time, so Redis
sees the questions in the order they were asked (a slot given back before a start
counts for it) and the batch grows with the load instead of the threads.  When nothing
is in flight a question leaves at the end of the current turn: no added wait.  A
release is not urgent: it waits up to :data:`RELEASE_DELAY` for a question to ride
with, so a busy relay pays one round trip per message instead of two.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import redis
from twisted.internet import defer
from twisted.python.failure import Failure

from ._scripts import Script

#: A START (``("script", Script, keys, args)``) or a release (``("zrem", key, members)``).
Command = tuple[Any, ...]

#: Questions per pipeline, at most.
MAX_BATCH = 256

#: Seconds a release (ZREM) may wait for a question to travel with.
RELEASE_DELAY = 0.05


def run_batch(client: redis.Redis, commands: Sequence[Command]) -> list[Any]:
    """In a pool thread: one pipeline, a reply or an exception per command.

    A script Redis does not know (NOSCRIPT: restarted or flushed) is sent again as
    EVAL, which caches it for the next batch.
    """
    pipe = client.pipeline(transaction=False)
    for command in commands:
        if command[0] == "script":
            _, script, keys, args = command
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        else:
            pipe.zrem(command[1], *command[2])
    results = pipe.execute(raise_on_error=False)
    missing = [i for i, r in enumerate(results) if isinstance(r, redis.exceptions.NoScriptError)]
    if missing:
        pipe = client.pipeline(transaction=False)
        for i in missing:
            _, script, keys, args = commands[i]
            pipe.eval(script.source, len(keys), *keys, *args)
        for i, result in zip(missing, pipe.execute(raise_on_error=False), strict=True):
            results[i] = result
    return results


class Batcher:
    """Gathers commands and sends them through ``call`` (a thread-pool call)."""

    def __init__(self, reactor: Any, call: Callable[..., defer.Deferred],
                 client: redis.Redis) -> None:  # fmt: skip
        self._reactor = reactor
        self._call = call
        self._client = client
        self._queue: deque[tuple[Command, defer.Deferred]] = deque()
        self._scheduled: Any = None
        self._sending = False
        self._questions = 0  # scripts in the queue (releases can wait, questions not)
        self._drains: list[defer.Deferred] = []

    def script(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> defer.Deferred:
        return self._submit(("script", script, keys, args), 0)

    def zrem(self, key: str, *members: str) -> defer.Deferred:
        return self._submit(("zrem", key, members), RELEASE_DELAY)

    def _submit(self, command: Command, delay: float) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self._queue.append((command, d))
        self._questions += delay == 0
        if self._sending:
            return d  # leaves with the next batch, as soon as this one is back
        if self._scheduled is not None and delay == 0 and self._scheduled.getTime() > (
            self._reactor.seconds()
        ):
            self._scheduled.cancel()  # a release was waiting: take it along now
            self._scheduled = None
        if self._scheduled is None:
            self._scheduled = self._reactor.callLater(delay, self._send)
        return d

    def drained(self) -> defer.Deferred:
        """Fires once no batch is in flight (at a stop: answers that reserved credits
        are in before the goodbye gives them back)."""
        d: defer.Deferred = defer.Deferred()
        if self._sending:
            self._drains.append(d)
        else:
            d.callback(None)
        return d

    def take_releases(self) -> list[tuple[str, str]]:
        """At a stop: the releases not sent yet, as (key, member), to send with the
        goodbye (questions still queued are answered by the caller's stop)."""
        releases = [(c[1], m) for c, _ in self._queue if c[0] == "zrem" for m in c[2]]
        for command, d in list(self._queue):
            if command[0] == "zrem":
                self._queue.remove((command, d))
                d.callback(0)
        if self._scheduled is not None and self._scheduled.active() and not self._queue:
            self._scheduled.cancel()
            self._scheduled = None
        return releases

    def _send(self) -> None:
        if self._scheduled is not None and self._scheduled.active():
            self._scheduled.cancel()
        self._scheduled = None
        if self._sending or not self._queue:
            return
        batch = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
        self._questions -= sum(command[0] == "script" for command, _ in batch)
        self._sending = True
        d = self._call(run_batch, self._client, [command for command, _ in batch])
        d.addBoth(self._answered, batch)

    def _answered(self, results: Any, batch: list[tuple[Command, defer.Deferred]]) -> None:
        self._sending = False
        if isinstance(results, Failure):
            for _, d in batch:
                d.errback(results)
        else:
            for result, (_, d) in zip(results, batch, strict=True):
                if isinstance(result, Exception):
                    d.errback(Failure(result))
                else:
                    d.callback(result)
        if not self._sending:
            drains, self._drains = self._drains, []
            for waiting in drains:
                waiting.callback(None)
        if self._questions:
            self._send()  # questions that came meanwhile leave at once, as the next batch
        elif self._queue:  # releases only: they may wait a little for company
            self._scheduled = self._reactor.callLater(RELEASE_DELAY, self._send)
