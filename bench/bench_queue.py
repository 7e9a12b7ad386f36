"""
How long ``hatwist queue`` waits for its answer at depth: ``--depth N`` queued messages.

The set-up is bench_scheduler.py's depth run: N messages (one recipient each,
``--domains`` domains, four bindings) recovered from an in-memory spool the way
the real one hands them over; three bindings go through an unplumbed proxy, so
their mail stays queued (waiting for a proxy), one message in a hundred goes to a
bypassed binding and is delivered at once.

Then every ``hatwist queue`` command is asked through the real control socket
(a UNIX socket in a temporary directory, served by the running reactor; the
client is ``hatwist._cli_queue.ask`` in a thread, as the CLI does it), and the
table gives the wall time from connect to the last answer line, best of
``--runs``.  A ``list`` with a filter counts every match: ``--binding`` (a third
of the messages) and ``--state`` (all of them) are the costly rows; ``--domain``
reads one queue.  ``hold``, ``release``, ``show`` and ``delete`` name one id, then
the same actions run on a whole binding (a third of the messages, once each).

The "stall" column is the longest the reactor went without running a 10 ms timer
during the request (minus the 10 ms): what every SMTP session, attempt and health
check of a running relay waits while the request is served.

Run from the checkout so that its ``hatwist`` is measured:
``PYTHONPATH=. python3 bench/bench_queue.py [--depth 1000000] [--domains 300] [--runs 3]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from twisted.internet import defer, task, threads

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_scheduler import DEPTH_CONFIG, BatchSpool, DirectAgent

import hatwist
from hatwist._cli_queue import ask
from hatwist.config import parse_config
from hatwist.control import ControlService, QueueHandler, Request
from hatwist.health import ServerRegistry
from hatwist.scheduler import Scheduler


def answer(path: str, request: Request) -> tuple[float, int, dict]:
    """(seconds, answer lines, last line) of one request (blocking).

    The lines are counted, not kept: this client runs in a thread of the relay's own
    process, and 330,000 kept lines were garbage-collected under the GIL, stalling the
    reactor for a second that the real CLI, a process of its own, never costs it."""
    started = time.perf_counter()
    count, last = 0, {}
    for line in ask(path, request):
        count, last = count + 1, line
    return time.perf_counter() - started, count, last


def run(depth: int, domains: int, runs: int) -> None:
    from twisted.internet import reactor

    config = parse_config(DEPTH_CONFIG)
    registry = ServerRegistry(config.proxy_servers, success_threshold=1, failure_threshold=1)
    registry.record_failure(config.proxy_servers[0], at=reactor.seconds(), error="refused")
    spool = BatchSpool(reactor, depth, domains)
    scheduler = Scheduler(spool=spool, agent=DirectAgent(reactor),
                          config_provider=lambda: config, registry=registry,
                          reactor=reactor, reporting_mta="bench.test")
    directory = tempfile.mkdtemp(prefix="hq-", dir="/tmp")
    path = os.path.join(directory, "control.sock")
    control = ControlService(path, QueueHandler(scheduler), reactor=reactor)
    rows: list[tuple[str, str, str, str]] = []
    probe = StallProbe(reactor)

    async def timed(name: str, request: Request, *, repeat: bool = True) -> dict:
        best, lines, last, stall = None, 0, {}, 0.0
        for _ in range(runs if repeat else 1):
            probe.reset()
            took, lines, last = await threads.deferToThread(answer, path, request)
            best = took if best is None else min(best, took)
            stall = max(stall, probe.longest)
        assert last.get("ok"), last
        shown = last.get("total", last.get("results", last.get("counts",
                                                             last.get("messages", ""))))
        rows.append((name, f"{best * 1000:.1f} ms", f"{stall * 1000:.0f} ms",
                     f"{lines} lines; {_short(shown)}"))
        return last

    async def go() -> None:
        started = time.perf_counter()
        scheduler.startService()
        await scheduler.when_recovered()
        control.startService()
        recovered = time.perf_counter() - started
        queued = len(scheduler._ledger)
        first = (await scheduler.list_messages(limit=1)).rows[0]["id"]
        some = (await scheduler.list_messages(limit=5)).rows[-1]["id"]
        await timed("list (no filter, --limit 1000)", Request("list"))
        await timed("list --limit 100000", Request("list", limit=100_000))
        await timed("list --domain dest-007.example.net", Request(
            "list", domain="dest-007.example.net"))
        await timed("list --binding proxied1 (counts a third)", Request(
            "list", binding="proxied1"))
        await timed("list --state waiting_for_proxy (counts all)", Request(
            "list", state="waiting_for_proxy"))
        await timed("list --state held (none held)", Request("list", state="held"))
        await timed("show ID", Request("show", (first,)))
        await timed("hold ID", Request("hold", (first,)), repeat=False)
        await timed("list --state held (one held)", Request("list", state="held"))
        await timed("release ID", Request("release", (first,)), repeat=False)
        await timed("flush --domain dest-007.example.net", Request(
            "flush", domain="dest-007.example.net"))
        await timed("delete ID", Request("delete", (some,)), repeat=False)
        await timed("hold --binding proxied1 (a third)", Request(
            "hold", binding="proxied1"), repeat=False)
        await timed("release --binding proxied1", Request(
            "release", binding="proxied1"), repeat=False)
        await timed("delete --binding proxied1", Request(
            "delete", binding="proxied1"), repeat=False)
        probe.stop()
        await control.stopService()
        await scheduler.stopService()
        os.rmdir(directory)
        print(f"hatwist from {os.path.dirname(hatwist.__file__)}")
        print(f"{queued:,} messages queued ({depth:,} recovered in {recovered:.1f} s), "
              f"{domains} domains x 4 bindings; best of {runs}\n")
        width = max(len(r[0]) for r in rows)
        print(f"{'hatwist queue ...':<{width}}  {'answer':>9}  {'stall':>7}  what came back")
        print("-" * (width + 50))
        for name, took, stall, what in rows:
            print(f"{name:<{width}}  {took:>9}  {stall:>7}  {what}")

    task.react(lambda _: defer.ensureDeferred(go()))


class StallProbe:
    """The longest gap between two runs of a 10 ms timer, beyond its 10 ms."""

    PERIOD = 0.01

    def __init__(self, reactor) -> None:
        self._clock = time.perf_counter
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = reactor
        self.reset()
        self._loop.start(self.PERIOD, now=False)

    def reset(self) -> None:
        self.longest, self._last = 0.0, self._clock()

    def _tick(self) -> None:
        now = self._clock()
        self.longest = max(self.longest, now - self._last - self.PERIOD)
        self._last = now

    def stop(self) -> None:
        self._loop.stop()


def _short(value: object) -> str:
    text = str(value)
    return text if len(text) < 60 else text[:57] + "..."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=100_000)
    parser.add_argument("--domains", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    run(args.depth, args.domains, args.runs)


if __name__ == "__main__":
    main()
