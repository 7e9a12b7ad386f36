"""
Messages per second through the Scheduler alone: in-memory spool, instant agent.

What it measures is the scheduler's own cost per message -- splitting by domain,
queue bookkeeping, per-recipient state, the spool calls and the log events --
with delivery and disk taken out.  Two agent modes:

- ``sync``: ``deliver`` returns a fired Deferred, so every message is finished
  inside ``submit`` (queues never fill);
- ``async``: ``deliver`` answers later (the bench loop fires the answers in
  order), so all messages are submitted first and then drain through queues
  limited by ``max_connections``.

``--tempfail`` makes that fraction of first attempts answer 451, so the retry
path (backoff timer, second attempt) is exercised too.

A second table, at depth: ``--depth N`` messages (one recipient each, 30-40
character addresses, ``--domains`` domains, four bindings) are recovered from an
in-memory spool that implements ``recover_batches`` the way the real one does
(each batch decoded from the spool's JSON state in a thread, handed over in the
reactor thread), on the real reactor.  Three bindings go through a proxy that
is unplumbed, so their mail stays queued; one in a hundred messages goes to a
bypassed binding whose agent answers 250 at once.  It prints the time to the
first delivery, to the first /status answer and to the end of recovery, the
longest reactor stall meanwhile (a 10 ms probe), RSS per queued message (and
what the ``SpooledMessage`` values alone cost), and the latency of
``queue_states()``, ``queue_depths()``, the /status JSON, /metrics and the page
at that depth.  ``--depth 1000000`` is the full run (a few minutes).

Run from the checkout, so that its ``hatwist`` is measured and not an installed
one (the first line printed names the one measured):
``PYTHONPATH=. python3 bench/bench_scheduler.py [--messages N] [--tempfail F]
[--depth N] [--domains N] [--skip-throughput] [--skip-depth]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import time
import tracemalloc
from collections import deque
from collections.abc import Callable

from twisted.internet import defer, task, threads

import hatwist
from hatwist.config import parse_config
from hatwist.delivery import RecipientResult
from hatwist.delivery.attempt import AttemptResult
from hatwist.health import ServerRegistry
from hatwist.scheduler import Scheduler
from hatwist.spool import SpooledMessage
from hatwist.spool._values import decode, make_message_id, new_recipients
from hatwist.web import StatusSources
from hatwist.web._metrics import metrics_registry, render_metrics
from hatwist.web._page import render_page
from hatwist.web._status import status_document

CONFIG = "retry_interval = 60\nmax_connections = {max_connections}\nshutdown_grace = 1\n"
CONTENT = b"Subject: bench\r\n\r\n" + b"x" * 2000 + b"\r\n"


class MemorySpool:
    """The Spool's interface over a dict, every call already fired."""

    def __init__(self, clock: task.Clock) -> None:
        self.clock = clock
        self.messages: dict[str, SpooledMessage] = {}
        self._n = 0

    def add(self, mail_from: str, rcpt_to: list[str]) -> SpooledMessage:
        self._n += 1
        now = self.clock.seconds()
        message = SpooledMessage(
            id=f"m{self._n}", binding="default", mail_from=mail_from,
            recipients=new_recipients(rcpt_to), received_at=now, attempts=0,
            next_attempt_at=now, size=len(CONTENT),
        )
        self.messages[message.id] = message
        return message

    def store(self, binding, mail_from, rcpt_to, content):
        return defer.succeed(self.add(mail_from, list(rcpt_to)))

    def content(self, message_id):
        return defer.succeed(CONTENT)

    def update(self, message):
        self.messages[message.id] = message
        return defer.succeed(None)

    def remove(self, message_id):
        del self.messages[message_id]
        return defer.succeed(None)

    def recover(self):
        return defer.succeed([])

    def recover_batches(self, on_batch, *, batch_size=10_000):
        return defer.succeed(0)


class InstantAgent:
    """Answers 250 (or 451 for a share of first attempts) at once or when told to."""

    def __init__(self, *, asynchronous: bool, tempfail: float) -> None:
        self.unanswered: deque[tuple[defer.Deferred, AttemptResult]] = deque()
        self.asynchronous = asynchronous
        self.tempfail = tempfail
        self.attempts = 0
        self._seen: set[str] = set()
        self._random = random.Random(1)

    def deliver(self, outbound):
        self.attempts += 1
        first = (outbound.id, outbound.domain) not in self._seen
        self._seen.add((outbound.id, outbound.domain))
        code = 451 if first and self._random.random() < self.tempfail else 250
        result = AttemptResult(
            message_id=outbound.id,
            recipients=tuple(RecipientResult(a, code, "ok") for a in outbound.envelope.rcpt_to),
            route="direct", mx_host="mx", mx_address="192.0.2.1", duration=0.0,
        )
        if not self.asynchronous:
            return defer.succeed(result)
        d = defer.Deferred()
        self.unanswered.append((d, result))
        return d

    def answer_all(self) -> bool:
        """Answer every attempt in flight (and those they start); False if there were none."""
        if not self.unanswered:
            return False
        while self.unanswered:
            d, result = self.unanswered.popleft()
            d.callback(result)
        return True


def run(*, messages: int, domains: int, rcpts: int, max_connections: int,
        asynchronous: bool, tempfail: float) -> tuple[float, int]:
    clock = task.Clock()
    config = parse_config(CONFIG.format(max_connections=max_connections))
    spool = MemorySpool(clock)
    agent = InstantAgent(asynchronous=asynchronous, tempfail=tempfail)
    scheduler = Scheduler(
        spool=spool, agent=agent, config_provider=lambda: config,
        registry=ServerRegistry((), success_threshold=1, failure_threshold=1),
        reactor=clock, reporting_mta="bench.test",
    )
    scheduler.startService()
    batch = [
        [f"u{i}-{r}@d{(i + r) % domains}.test" for r in range(rcpts)] for i in range(messages)
    ]
    started = time.process_time()  # CPU time: the box is shared, wall time is noisy
    for rcpt_to in batch:
        scheduler.submit(spool.add("sender@src.test", rcpt_to))
    while spool.messages:
        if agent.answer_all():
            continue
        calls = clock.getDelayedCalls()
        if not calls:
            raise RuntimeError(f"{len(spool.messages)} messages stuck")
        clock.advance(max(0.0, min(c.getTime() for c in calls) - clock.seconds()))
    elapsed = time.process_time() - started
    scheduler.stopService()
    return elapsed, agent.attempts


DEPTH_CONFIG = """
retry_interval = 600
max_connections = 10
shutdown_grace = 1
ha_proxy_client {
  health_check_interval = 30
}
binding proxied1 {
  ha_proxy_server = 127.0.0.1:5000
  ha_proxy_src_addr = 127.0.0.9
}
binding proxied2 {
  ha_proxy_server = 127.0.0.1:5000
  ha_proxy_src_addr = 127.0.0.10
}
binding proxied3 {
  ha_proxy_server = 127.0.0.1:5000
  ha_proxy_src_addr = 127.0.0.11
}
binding direct {
}
"""
PROXIED = ("proxied1", "proxied2", "proxied3")


def state_json(i: int, now: float, domains: int) -> bytes:
    """Message ``i`` as the spool writes its state down (JSON), so decoding it
    gives every message its own strings, as a real recovery does."""
    binding = "direct" if i % 100 == 0 else PROXIED[i % 3]
    body = {
        "id": make_message_id(int(now * 1e6) - 10_000_000 + i, i * 2654435761),
        "binding": binding,
        "mail_from": f"newsletter{i % 1000:04d}@sender-{i % 20}.example.com",
        "recipients": [{
            "address": f"user.{i:07d}@dest-{i % domains:03d}.example.net",
            "status": "pending", "code": None, "reason": None, "attempts": 0,
        }],
        "received_at": now - 60, "attempts": 0, "next_attempt_at": now - 60,
        "size": 5000, "version": 1,
    }
    return json.dumps(body).encode()


class BatchSpool:
    """``recover_batches`` like the Spool's: each batch decoded in a thread, handed to
    ``on_batch`` in the reactor thread, the next read only after it returned."""

    def __init__(self, reactor, count: int, domains: int) -> None:
        self._reactor, self._count, self._domains = reactor, count, domains
        self.removed = 0

    def _read(self, start: int, n: int, now: float) -> list[SpooledMessage]:
        return [decode(state_json(i, now, self._domains)) for i in range(start, start + n)]

    def recover_batches(self, on_batch, *, batch_size=10_000):
        now = self._reactor.seconds()

        @defer.inlineCallbacks
        def read():
            for start in range(0, self._count, batch_size):
                n = min(batch_size, self._count - start)
                batch = yield threads.deferToThread(self._read, start, n, now)
                on_batch(batch)
            return self._count

        return read()

    def recover(self):  # for a scheduler from before recover_batches
        now = self._reactor.seconds()
        return threads.deferToThread(self._read, 0, self._count, now)

    def content(self, message_id):
        return defer.succeed(CONTENT)

    def update(self, message):
        return defer.succeed(None)

    def remove(self, message_id):
        self.removed += 1
        return defer.succeed(None)


class DirectAgent:
    """250 at once for the bypassed binding (the proxied ones never get this far)."""

    def __init__(self, clock) -> None:
        self.first: float | None = None
        self.clock = clock

    def deliver(self, outbound):
        if self.first is None:
            self.first = time.perf_counter()
        return defer.succeed(AttemptResult(
            message_id=outbound.id,
            recipients=tuple(RecipientResult(a, 250, "ok") for a in outbound.envelope.rcpt_to),
            route="direct", mx_host="mx", mx_address="192.0.2.1", duration=0.0,
        ))


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def timed(f: Callable[[], object], runs: int = 5) -> float:
    """Median milliseconds of ``runs`` calls of ``f``."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        f()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def message_cost(count: int, domains: int) -> tuple[float, float]:
    """Bytes per ``SpooledMessage`` (its strings, tuples and recipients) as decoded from
    the spool's JSON, and as the scheduler keeps it (common strings shared), by
    tracemalloc: exact, and unaffected by what the process freed before."""
    try:
        from hatwist.scheduler._ledger import _compact
    except ImportError:  # a scheduler from before the ledger keeps messages as they come
        def _compact(message: SpooledMessage) -> SpooledMessage:
            return message

    tracemalloc.start()
    decoded = [decode(state_json(i, 1.7e9, domains)) for i in range(count)]
    as_decoded = tracemalloc.get_traced_memory()[0] / count
    kept = [_compact(m) for m in decoded]
    del decoded
    as_kept = tracemalloc.get_traced_memory()[0] / count
    tracemalloc.stop()
    del kept
    return as_decoded, as_kept


def run_depth(count: int, domains: int, print_table: Callable[[list], None]) -> None:
    """Run the depth measurement on the real reactor; ``print_table`` gets the rows
    (the reactor's ``task.react`` ends the process afterwards)."""
    from twisted.internet import reactor

    config = parse_config(DEPTH_CONFIG)
    registry = ServerRegistry(config.proxy_servers, success_threshold=1, failure_threshold=1)
    registry.record_failure(config.proxy_servers[0], at=reactor.seconds(), error="refused")
    spool = BatchSpool(reactor, count, domains)
    agent = DirectAgent(reactor)
    scheduler = Scheduler(
        spool=spool, agent=agent, config_provider=lambda: config, registry=registry,
        reactor=reactor, reporting_mta="bench.test",
    )
    sources = StatusSources(registry, scheduler, "bench", reactor)
    probe: dict[str, float] = {"stall": 0.0, "cpu": 0.0}
    results: list[tuple[str, str]] = []

    def tick() -> None:
        now = time.perf_counter()
        if "first_status" not in probe:
            json.dumps(status_document(sources))
            probe["first_status"] = now
        cpu = time.thread_time()  # the reactor thread's own CPU, whatever the box's load
        probe["stall"] = max(probe["stall"], now - probe.get("last", now))
        probe["cpu"] = max(probe["cpu"], cpu - probe.get("last_cpu", cpu))
        probe["last"], probe["last_cpu"] = now, cpu

    pauses: list[float] = []
    gc_started: list[float] = []

    def gc_watch(phase: str, info: dict) -> None:
        if phase == "start":
            gc_started[:] = [time.perf_counter()]
        elif gc_started and info["generation"] == 2:
            pauses.append(time.perf_counter() - gc_started[0])

    def go():
        gc.collect()
        gc.callbacks.append(gc_watch)
        before = rss()
        started = time.perf_counter()
        looping = task.LoopingCall(tick)
        scheduler.startService()
        looping.start(0.01, now=False)
        yield scheduler.when_recovered()
        done = time.perf_counter()
        yield task.deferLater(reactor, 0.02, lambda: None)  # the probe sees the last turn
        looping.stop()
        gc.callbacks.remove(gc_watch)
        gc.collect()
        queued = sum(scheduler.queue_depths().values())
        per_message = (rss() - before) / queued
        results.extend([
            ("messages recovered / queued / delivered",
             f"{count:,} / {queued:,} / {spool.removed:,}"),
            ("queues (binding, domain)", f"{len(scheduler.queue_depths()):,}"),
            ("first delivery after start", _seconds(agent.first, started)),
            ("first /status answer after start (10 ms probe)",
             _seconds(probe.get("first_status"), started)),
            ("recovery done after", _seconds(done, started)),
            ("longest reactor turn during recovery (probe gap): wall, CPU",
             f"{probe['stall'] * 1000:.0f} ms, {probe['cpu'] * 1000:.0f} ms"),
            ("full garbage collections during recovery: count, longest",
             f"{len(pauses)}, {max(pauses, default=0) * 1000:.0f} ms"),
            ("RSS per queued message (all of it)", f"{per_message:.0f} B"),
        ])
        registry_ = metrics_registry(sources)
        results.extend([
            ("queue_states()", f"{timed(scheduler.queue_states):.2f} ms"),
            ("queue_depths()", f"{timed(scheduler.queue_depths):.2f} ms"),
            ("/status JSON render", f"{timed(lambda: render_status(sources)):.2f} ms"),
            ("/metrics render", f"{timed(lambda: render_metrics(registry_)):.2f} ms"),
            ("page render", f"{timed(lambda: render_page(status_document(sources))):.2f} ms"),
        ])
        yield scheduler.stopService()
        print_table(results)

    task.react(lambda _: defer.inlineCallbacks(go)())


def render_status(sources: StatusSources) -> bytes:
    """What ``StatusResource.render_GET`` returns."""
    return json.dumps(status_document(sources), indent=2).encode() + b"\n"


def _seconds(at: float | None, started: float) -> str:
    return "never" if at is None else f"{at - started:.2f} s"


def throughput(args: argparse.Namespace) -> None:
    rows = [
        # mode, domains, recipients per message, max_connections, tempfail
        ("sync", 1, 1, 10, 0.0),
        ("sync", 100, 1, 10, 0.0),
        ("sync", 100, 3, 10, 0.0),
        ("async", 1, 1, 10, 0.0),
        ("async", 100, 1, 10, 0.0),
        ("async", 100, 3, 10, 0.0),
        ("async", 100, 1, 10, args.tempfail),
    ]
    header = f"{'mode':<6} {'domains':>7} {'rcpt/msg':>8} {'max_conn':>8} {'tempfail':>8} " \
             f"{'messages':>8} {'attempts':>8} {'cpu s':>8} {'msg/cpu-s':>9}"
    print(header)
    print("-" * len(header))
    for mode, domains, rcpts, max_connections, tempfail in rows:
        elapsed, attempts = run(
            messages=args.messages, domains=domains, rcpts=rcpts,
            max_connections=max_connections, asynchronous=mode == "async", tempfail=tempfail,
        )
        print(f"{mode:<6} {domains:>7} {rcpts:>8} {max_connections:>8} {tempfail:>8.2f} "
              f"{args.messages:>8} {attempts:>8} {elapsed:>8.2f} {args.messages / elapsed:>9.0f}")


def depth(args: argparse.Namespace) -> None:
    sample = min(args.depth, 100_000)
    as_decoded, as_kept = message_cost(sample, args.domains)

    def print_table(rows: list[tuple[str, str]]) -> None:
        rows.insert(rows.index(next(r for r in rows if r[0].startswith("RSS"))) + 1, (
            f"  of which the SpooledMessage, as kept (as decoded), {sample:,} sample",
            f"{as_kept:.0f} B ({as_decoded:.0f} B)"))
        width = max(len(name) for name, _ in rows)
        print(f"\n{'at depth ' + format(args.depth, ','):<{width}}  value")
        print("-" * (width + 16))
        for name, value in rows:
            print(f"{name:<{width}}  {value}")

    run_depth(args.depth, args.domains, print_table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--tempfail", type=float, default=0.1)
    parser.add_argument("--depth", type=int, default=100_000)
    parser.add_argument("--domains", type=int, default=300)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-depth", action="store_true")
    args = parser.parse_args()
    print(f"hatwist from {os.path.dirname(hatwist.__file__)}")
    if not args.skip_throughput:
        throughput(args)
    if not args.skip_depth:
        depth(args)


if __name__ == "__main__":
    main()
