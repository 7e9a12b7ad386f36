"""
Memory held by message content while attempts are still connecting.

Issue 11 item 5: the scheduler used to read every message's content from the spool
before its attempt started, so ``max_deliveries_in_flight`` attempts waiting for
connects and banners held that many bodies.  Now a message over
``hatwist.scheduler._dispatch.LOAD_CONTENT_ABOVE`` (256 KiB) is handed to the agent
with a loader (``OutboundMessage.load_content``) that the session calls once it is
ready for DATA.

The run: ``--messages`` messages of ``--size`` bytes each are stored in a real Spool
(a temporary directory), and a Scheduler starts one attempt per message with an agent
that never gets a session (it holds every attempt, like a slow MX).  Once all attempts
are in flight, tracemalloc's current total is read.  Then the same with the threshold
raised out of reach (every message read before its attempt: the old behaviour), and
with it lowered to 0.

Run from the checkout: ``PYTHONPATH=. python3 bench/bench_content.py [--messages N]
[--size BYTES]``.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import tracemalloc

from twisted.internet import defer, task

import hatwist
from hatwist.config import parse_config
from hatwist.health import ServerRegistry
from hatwist.scheduler import Scheduler, _dispatch
from hatwist.spool import Spool

CONFIG = """
max_connections = 1000
shutdown_grace = 0
"""


class Connecting:
    """An agent whose attempts never reach a session: it holds what it was given."""

    def __init__(self) -> None:
        self.held: list[object] = []

    def deliver(self, outbound):
        self.held.append(outbound)
        return defer.Deferred()


async def one_run(reactor, messages: int, size: int, threshold: float) -> tuple[int, int]:
    """(attempts in flight, bytes traced while they wait) for one threshold."""
    _dispatch.LOAD_CONTENT_ABOVE = threshold
    config = parse_config(CONFIG)
    with tempfile.TemporaryDirectory() as directory:
        spool = Spool(directory, reactor=reactor, threadpool=reactor.getThreadPool())
        stored = []
        body = b"Subject: big\r\n\r\n" + b"x" * (size - 16)
        for i in range(messages):
            stored.append(await spool.store("default", "a@src.test", [f"r{i}@dst.test"], body))
        del body
        agent = Connecting()
        scheduler = Scheduler(
            spool=spool, agent=agent, config_provider=lambda: config,
            registry=ServerRegistry((), success_threshold=1, failure_threshold=1),
            reactor=reactor, reporting_mta="bench.test", max_in_flight=messages,
        )
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        scheduler.startService()
        for message in stored:
            scheduler.submit(message)
        while len(agent.held) < messages:  # the small-message path reads in a thread
            await task.deferLater(reactor, 0.01, lambda: None)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        in_flight = scheduler.in_flight()
        await scheduler.stopService()
        await spool.close()
        return in_flight, held


async def main(reactor, options) -> None:
    print(f"hatwist from {hatwist.__path__[0]}")
    rows = [
        ("read before the attempt (old)", float("inf")),
        (f"loader above {_dispatch.LOAD_CONTENT_ABOVE // 1024} KiB (now)",
         _dispatch.LOAD_CONTENT_ABOVE),
        ("loader for every message", 0),
    ]
    print(f"{options.messages} attempts in flight, messages of {options.size:,} bytes, "
          "none past connecting yet")
    print(f"{'content':<36}{'in flight':>10}{'MiB held':>12}{'KiB/attempt':>14}")
    print("-" * 72)
    for label, threshold in rows:
        in_flight, held = await one_run(reactor, options.messages, options.size, threshold)
        print(f"{label:<36}{in_flight:>10}{held / 2**20:>12.1f}"
              f"{held / 1024 / max(in_flight, 1):>14.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--size", type=int, default=1024 * 1024)
    options = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, options)))
