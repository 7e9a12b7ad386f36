"""
What Python's cyclic garbage collector costs a relay whose queue grows while it runs.

The start-up read freezes what it reads out of the collector (hatwist/scheduler/
_recovery.py), and so do bulk ``hatwist queue`` actions; mail accepted while the relay
runs is not frozen.  A destination down for hours fills the queue with it, and each full
collection then walks every queued message's objects, in the reactor thread.

Each row: a scheduler with an empty spool and three bindings behind an unplumbed proxy
(bench_scheduler.py's depth config), then ``--messages`` messages handed to it live,
2,000 per reactor turn as an inflow would; printed: the full (generation 2) collections
that ran, the longest, and their total, with the rate of intake.

Run from the checkout: ``PYTHONPATH=. python3 bench/bench_live_gc.py [--messages 100000,300000]``.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

from twisted.internet import defer, task

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_scheduler import DEPTH_CONFIG, BatchSpool, DirectAgent, state_json

import hatwist
from hatwist.config import parse_config
from hatwist.health import ServerRegistry
from hatwist.scheduler import Scheduler
from hatwist.spool._values import decode

#: Messages handed to the scheduler per reactor turn.
BATCH = 2_000


class FullCollections:
    """Durations of the generation-2 collections while it is installed."""

    def __init__(self) -> None:
        self.durations: list[float] = []
        self._started = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif info["generation"] == 2:
            self.durations.append(time.perf_counter() - self._started)


async def one_row(reactor, count: int) -> tuple[int, float, float, float]:
    config = parse_config(DEPTH_CONFIG)
    registry = ServerRegistry(config.proxy_servers, success_threshold=1, failure_threshold=1)
    registry.record_failure(config.proxy_servers[0], at=reactor.seconds(), error="refused")
    scheduler = Scheduler(spool=BatchSpool(reactor, 0, 300), agent=DirectAgent(reactor),
                          config_provider=lambda: config, registry=registry,
                          reactor=reactor, reporting_mta="bench.test")
    scheduler.startService()
    await scheduler.when_recovered()
    collections = FullCollections()
    gc.callbacks.append(collections)
    now, started = reactor.seconds(), time.perf_counter()
    try:
        for first in range(0, count, BATCH):
            for i in range(first, min(count, first + BATCH)):
                scheduler.submit(decode(state_json(i + 1, now, 300)))
            await task.deferLater(reactor, 0, lambda: None)
    finally:
        gc.callbacks.remove(collections)
    took = time.perf_counter() - started
    await scheduler.stopService()
    d = collections.durations
    return len(d), max(d, default=0.0), sum(d), count / took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", default="100000,300000")
    options = parser.parse_args()
    print(f"hatwist from {hatwist.__path__[0]}")
    print(f"{'queued live':>12}{'full collections':>18}{'longest':>10}{'total':>10}"
          f"{'intake':>14}")
    print("-" * 64)

    async def go(reactor) -> None:
        for count in (int(n) for n in options.messages.split(",")):
            n, longest, total, rate = await one_row(reactor, count)
            print(f"{count:>12,}{n:>18}{longest * 1000:>8.0f} ms{total * 1000:>8.0f} ms"
                  f"{rate:>10,.0f} /s")
            gc.collect()

    task.react(lambda reactor: defer.ensureDeferred(go(reactor)))


if __name__ == "__main__":
    main()
