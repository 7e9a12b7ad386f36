"""
The cost of one attempt start's limit check: shared through Redis against local.

Every start asks its limits once (a connection slot and a place in the throttle
window, together) and gives the slot back at the end.  ``local`` rows are
:class:`hatwist.shared.LocalLimits` (what a relay without ``redis_url`` does);
``redis`` rows are :class:`hatwist.shared.RedisLimits` against a real
redis-server this script starts on a free loopback port (no persistence), through
its thread pool and the reactor, with ``in flight`` questions outstanding at once
(one: the latency of a single start; more: the rate a busy scheduler sees).

``cpu us`` is this process's CPU time per start (reactor and pool threads: what a
relay pays), ``redis us`` redis-server's (``INFO cpu``; on a small box it competes
for the same cores).  Latency is from the question to the Decision in the reactor;
the release (``finish``, a ZREM for Redis) runs after and is not in the latency but
is in the rate.  Queues are spread over 100 domains; the throttle, when on, is set
high enough that every start is granted (the full script path runs).  ``slots``
``ask``: a slot given back does not linger, so every start asks Redis (the cost of
one question); ``linger``: what a busy queue sees, a slot given back is taken again
by the next start without asking Redis, and a throttled start takes one of the
credits (hatwist/shared/_credits.py) its queue reserved with an earlier question.

``--end-to-end N`` adds the relay's view: bench_relay.py's proxied row (smtp-source
-> a ``twistd hatwist`` process -> the egress HAProxy -> smtp-sink, N messages of
5120 B) without and with ``redis_url``, with no throttle (slots only) and with an
always-open throttle (1e9/3600: every start is counted in Redis's window), the four
taking turns in each of ``--rounds`` rounds (local first in even rounds, redis first
in odd ones): the rate and the relay's CPU per message (median of the rounds, and the
lowest and highest), their difference against the local row above, and the questions
Redis answered per message (scripts and releases, heartbeats included).  Needs root,
HAProxy and Postfix's smtp-source/smtp-sink, like bench_relay.py; the load generator,
the sink and HAProxy share the box with the relay.

Run: ``PYTHONPATH=.:bench python3 bench/bench_shared_limits.py [--starts 4000]
[--end-to-end 3000] [--rounds 3] [--throttle both|on|off] [--profile /tmp/spy]``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import redis
from twisted.internet import defer, task

from hatwist.config.values import Throttle
from hatwist.shared import LocalLimits, RedisLimits
from tests.shared.redis_server import RedisServer

DOMAINS = [("default", f"d{i}.bench.test") for i in range(100)]
BIG = Throttle(10**9, 3600)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def row(name: str, throttle: str, slots: str, in_flight: int, elapsed: float,
        latencies: list[float], cpu: float, redis_cpu: float = 0.0):  # fmt: skip
    n = len(latencies)
    return (name, throttle, slots, in_flight, n / elapsed, statistics.median(latencies) * 1e6,
            percentile(latencies, 0.99) * 1e6, cpu / n * 1e6, redis_cpu / n * 1e6)  # fmt: skip


def redis_cpu(url: str) -> float:
    info = redis.Redis.from_url(url).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def redis_questions(url: str) -> int:
    """Questions Redis answered so far: scripts run (START, HEARTBEAT...) and releases
    (ZREM; no script calls it), not the commands the scripts run inside."""
    stats = redis.Redis.from_url(url).info("commandstats")
    return sum(stat["calls"] - stat.get("failed_calls", 0) - stat.get("rejected_calls", 0)
               for name, stat in stats.items()
               if name in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_zrem"))  # fmt: skip


def bench_local(starts: int, throttle: Throttle | None):
    limits, latencies = LocalLimits(), []
    begin, cpu = time.perf_counter(), time.process_time()
    for i in range(starts):
        t0 = time.perf_counter()
        decision = limits.start(DOMAINS[i % 100], throttle, 10, t0)
        latencies.append(time.perf_counter() - t0)
        limits.finish(decision.lease)
    return row("local", "on" if throttle else "off", "-", 1, time.perf_counter() - begin,
               latencies, time.process_time() - cpu)  # fmt: skip


async def bench_redis(reactor, url: str, starts: int, throttle: Throttle | None, in_flight: int,
                      linger: bool):  # fmt: skip
    limits = RedisLimits(url, reactor=reactor, node_id=f"bench{in_flight}{throttle}{linger}",
                         **({} if linger else {"linger": 0.0}))  # fmt: skip
    limits.startService()
    latencies: list[float] = []
    counter = iter(range(starts))

    async def worker(w: int):
        for i in counter:
            t0 = time.perf_counter()
            # lingering slots are taken back by the same queue: one queue per worker
            domain = DOMAINS[(w if linger else i) % 100]
            decision = await defer.maybeDeferred(limits.start, domain, throttle, 10**6,
                                                 reactor.seconds())  # fmt: skip
            latencies.append(time.perf_counter() - t0)
            assert decision.granted, decision
            limits.finish(decision.lease)

    begin, cpu, server_cpu = time.perf_counter(), time.process_time(), redis_cpu(url)
    await defer.gatherResults([defer.ensureDeferred(worker(w)) for w in range(in_flight)])
    elapsed, cpu = time.perf_counter() - begin, time.process_time() - cpu
    server_cpu = redis_cpu(url) - server_cpu
    await limits.stopService()
    return row("redis", "on" if throttle else "off", "linger" if linger else "ask", in_flight,
               elapsed, latencies, cpu, server_cpu)  # fmt: skip


async def end_to_end(reactor, url: str, messages: int, rounds: int,
                     profile: str | None = None, throttles=(False, True)) -> None:
    """bench_relay's proxied row, without and with redis_url, throttle off and on,
    alternating ``rounds`` times in one lab."""
    import argparse as _argparse

    import bench_relay  # bench/ is on sys.path when this runs as a script

    def extra(shared: bool, throttle: bool) -> str:
        text = f'outbound_throttle_messages = "{BIG}"\n' if throttle else ""
        return text + (f'redis_url = "{url}"\n' if shared else "")

    args = _argparse.Namespace(messages=messages, sessions=20, size=5120, submit_reuse=False)
    workdir = tempfile.mkdtemp(prefix="hatwist-bench-shared-")
    lab = bench_relay.Lab()
    results: dict[tuple[bool, bool], list] = {}
    try:
        await lab.start(reactor, workdir)
        for round_ in range(rounds):
            for throttle in throttles:
                # local first in even rounds, redis first in odd ones: a box whose load
                # drifts during the run favours neither
                for shared in (False, True) if round_ % 2 == 0 else (True, False):
                    spy = None
                    if profile and round_ == rounds - 1:
                        spy = f"{profile}-{'redis' if shared else 'local'}-" \
                              f"{'on' if throttle else 'off'}.txt"
                    commands = redis_questions(url)
                    row = await bench_relay.relay_row(
                        reactor, lab, args, workdir, domain=bench_relay.PROXY_DOMAIN,
                        name="proxied", extra=extra(shared, throttle), profile=spy,
                    )
                    commands = (redis_questions(url) - commands) / messages
                    results.setdefault((throttle, shared), []).append((row, commands))
    finally:
        await lab.stop(reactor)
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nend to end: bench_relay's proxied row ({messages} messages of 5120 B, "
          f"smtp-source, 20 sessions), {rounds} rounds alternating; medians")  # fmt: skip
    print(f"{'limits':8} {'throttle':8} {'msg/s':>8} {'(low-high)':>11} {'cpu us/msg':>11} "
          f"{'(low-high)':>11} {'rate':>7} {'cpu':>7} {'asks/msg':>8}")  # fmt: skip
    for throttle in throttles:
        local = None
        for shared in (False, True):
            rows = [r for r, _ in results[(throttle, shared)]]
            rates, cpus = [r.rate for r in rows], [r.cpu * 1e6 for r in rows]
            rate, cpu = statistics.median(rates), statistics.median(cpus)
            commands = statistics.median(c for _, c in results[(throttle, shared)])
            versus = ("", "") if local is None else (
                f"{100 * (rate / local[0] - 1):+.1f}%", f"{100 * (cpu / local[1] - 1):+.1f}%")
            local = local or (rate, cpu)
            spread = f"{min(rates):.0f}-{max(rates):.0f}", f"{min(cpus):.0f}-{max(cpus):.0f}"
            print(f"{'redis' if shared else 'local':8} {'on' if throttle else 'off':8} "
                  f"{rate:>8.0f} {spread[0]:>11} {cpu:>11.0f} {spread[1]:>11} {versus[0]:>7} "
                  f"{versus[1]:>7} {commands if shared else 0:>8.2f}")  # fmt: skip


async def main(reactor, args) -> None:
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer(Path(directory)).start()
        try:
            rows = []
            for throttle in (None, BIG):
                rows.append(bench_local(args.starts, throttle))
                for linger in (False, True):
                    for in_flight in args.in_flight:
                        rows.append(await bench_redis(reactor, server.url, args.starts,
                                                      throttle, in_flight, linger))  # fmt: skip
            if args.end_to_end:
                print_table(rows)
                rows = []
                await end_to_end(reactor, server.url, args.end_to_end, args.rounds, args.profile,
                                 {"both": (False, True), "on": (True,), "off": (False,)}[
                                     args.throttle])  # fmt: skip
        finally:
            server.stop()
    if rows:
        print_table(rows)


def print_table(rows) -> None:
    print(f"{'limits':8} {'throttle':8} {'slots':6} {'in flight':>9} {'starts/s':>10} "
          f"{'p50 us':>9} {'p99 us':>9} {'cpu us':>8} {'redis us':>8}")  # fmt: skip
    for name, throttle, slots, in_flight, rate, p50, p99, cpu, rcpu in rows:
        print(f"{name:8} {throttle:8} {slots:6} {in_flight:>9} {rate:>10.0f} {p50:>9.1f} "
              f"{p99:>9.1f} {cpu:>8.1f} {rcpu:>8.1f}")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=4000)
    parser.add_argument("--end-to-end", type=int, default=0, metavar="MESSAGES")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--throttle", choices=("both", "on", "off"), default="both",
                        help="which end-to-end rows: without a throttle, with, or both")
    parser.add_argument("--profile", metavar="PREFIX",
                        help=("py-spy raw profiles of the last round's relays "
                              "(PREFIX-redis-on.txt...)"))
    parser.add_argument("--in-flight", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1, 16, 64])  # fmt: skip
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, parser.parse_args())))
