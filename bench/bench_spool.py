"""Stores per second and fsyncs per message: the SQLite spool beside the old file layout.

    python3 bench/bench_spool.py [--dir DIR] [--count N] [--size BYTES] [--concurrency 1,20,100]
                                 [--recover N]

Each row runs in a child process of its own: ``--concurrency`` submitters, each storing
its next message only once the last one's Deferred fired (like an SMTP session waiting
for its 250). "new" is hatwist.spool.Spool (group commit, one writer thread); "old" is
the file-per-message layout of hatwist.spool._legacy run the way the old Spool ran it (a
4-thread pool, two file fsyncs and a directory fsync per store). fsyncs are counted by
the kernel (``perf stat`` on the fsync and fdatasync tracepoints) over the whole child,
minus a child that opens the spool and stores nothing; ``-`` where perf cannot count.

``--recover N`` (0: skip) adds a second table: N small messages stored through the spool's
own API, then read back by a fresh process with ``recover_batches`` (batches of 10,000):
seconds, messages per second, the longest the reactor waited for a turn meanwhile (a
10 ms LoopingCall; what SMTP and /status would feel), and the growth of RSS per message
held (the recovered values, what the scheduler keeps).  ``BENCH_GC_FREEZE=1`` calls
``gc.freeze()`` after each batch, to show what the cyclic GC's full passes over the held
values cost the reactor.

Numbers depend on the file system under DIR (tmpfs fsync is free): point --dir at the
disk the real spool will use (default: $TMPDIR, else /var/tmp).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVENTS = "syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync"
OLD_THREADS = 4  # the old Spool's pool (hatwist.tap's SPOOL_THREADS)


# -- the child: one measurement ------------------------------------------------------


def child(kind: str, directory: str, concurrency: int, count: int, size: int) -> None:
    from twisted.internet import defer, task

    task.react(lambda reactor: defer.ensureDeferred(
        _measure(reactor, kind, directory, concurrency, count, size)))


async def _measure(reactor, kind, directory, concurrency, count, size) -> None:
    from twisted.internet import defer
    from twisted.internet.threads import deferToThreadPool
    from twisted.python.threadpool import ThreadPool

    from hatwist.spool import Disk, Spool
    from hatwist.spool._legacy import SpoolDirectory

    pool = ThreadPool(minthreads=1, maxthreads=OLD_THREADS, name="bench-spool")
    pool.start()
    content = b"Subject: bench\r\n\r\n" + b"x" * max(0, size - 18)
    if kind == "new":
        spool = Spool(directory, reactor=reactor, threadpool=pool)
        spool.open()
        store = spool.store
    else:
        old = SpoolDirectory(directory, Disk())
        old.prepare()
        seed = Spool("/nonexistent", reactor=reactor, threadpool=None)  # ids only

        def store(binding, mail_from, rcpt_to, data):
            from hatwist.spool._values import SpooledMessage, new_recipients
            now = reactor.seconds()
            message = SpooledMessage(
                id=seed._new_id(now), binding=binding, mail_from=mail_from,
                recipients=new_recipients(rcpt_to), received_at=now, attempts=0,
                next_attempt_at=now, size=len(data))
            return deferToThreadPool(reactor, pool, old.store, message, data)
    latencies: list[float] = []

    async def submitter(n: int) -> None:
        for _ in range(n):
            start = time.perf_counter()
            await store("default", "s@example.org", ["r@example.net"], content)
            latencies.append(time.perf_counter() - start)

    share = [count // concurrency + (1 if i < count % concurrency else 0)
             for i in range(concurrency)]
    start = time.perf_counter()
    await defer.gatherResults([defer.ensureDeferred(submitter(n)) for n in share if n])
    elapsed = time.perf_counter() - start
    transactions = None
    if kind == "new":
        transactions = spool._writer.transactions
        await spool.close()
    pool.stop()
    latencies.sort()
    print(json.dumps({
        "stored": len(latencies), "seconds": elapsed,
        "p50": latencies[len(latencies) // 2] if latencies else 0,
        "p99": latencies[int(len(latencies) * 0.99)] if latencies else 0,
        "transactions": transactions,
    }))


def fill(directory: str, count: int) -> None:
    from twisted.internet import defer, task

    async def run(reactor) -> None:
        from twisted.python.threadpool import ThreadPool

        from hatwist.spool import Spool

        pool = ThreadPool(minthreads=1, maxthreads=2, name="bench-fill")
        pool.start()
        spool = Spool(directory, reactor=reactor, threadpool=pool)
        spool.open()
        content = b"Subject: queued\r\n\r\n" + b"x" * 1000
        for start in range(0, count, 1000):
            await defer.gatherResults([
                spool.store("default", "sender@example.org", [f"r{n}@d{n % 500}.example"],
                            content) for n in range(start, min(count, start + 1000))])
        await spool.close()
        pool.stop()
        print(json.dumps({"filled": count}))

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))


def recover(directory: str) -> None:
    from twisted.internet import defer, task

    async def run(reactor) -> None:
        from twisted.python.threadpool import ThreadPool

        from hatwist.spool import Spool

        pool = ThreadPool(minthreads=1, maxthreads=2, name="bench-recover")
        pool.start()
        spool = Spool(directory, reactor=reactor, threadpool=pool)
        spool.open()
        held: list = []
        freeze = os.environ.get("BENCH_GC_FREEZE") == "1"

        def on_batch(batch: list) -> None:
            held.extend(batch)
            if freeze:  # what a scheduler could do: keep the GC off the held values
                gc.freeze()

        gaps = [0.0]
        last = [time.perf_counter()]

        def tick() -> None:
            now = time.perf_counter()
            gaps[0] = max(gaps[0], now - last[0])
            last[0] = now

        ticker = task.LoopingCall(tick)
        ticker.start(0.01)
        before = _rss()
        start = time.perf_counter()
        total = await spool.recover_batches(on_batch, batch_size=10_000)
        elapsed = time.perf_counter() - start
        ticker.stop()
        grown = _rss() - before
        await spool.close()
        pool.stop()
        print(json.dumps({"count": total, "seconds": elapsed, "stall": gaps[0],
                          "rss_per_message": grown / max(1, total)}))

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- the parent: the table ---------------------------------------------------------------


def perf_works() -> bool:
    if not shutil.which("perf"):
        return False
    probe = subprocess.run(["perf", "stat", "-x,", "-e", EVENTS, "true"],
                           capture_output=True, text=True)
    return probe.returncode == 0 and "not supported" not in probe.stderr


def run_child(args: list[str], count_fsyncs: bool) -> tuple[dict, int | None]:
    command = [sys.executable, os.path.abspath(__file__), "--child", *args]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if not count_fsyncs:
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1]), None
    with tempfile.NamedTemporaryFile("r", suffix=".perf") as out:
        done = subprocess.run(["perf", "stat", "-x,", "-o", out.name, "-e", EVENTS, *command],
                              capture_output=True, text=True, env=env, check=True)
        fsyncs = 0
        for line in out.read().splitlines():
            fields = line.split(",")
            if len(fields) > 2 and fields[2].startswith("syscalls:"):
                fsyncs += int(fields[0]) if fields[0].isdigit() else 0
    return json.loads(done.stdout.strip().splitlines()[-1]), fsyncs


def file_system(path: str) -> str:
    best, kind = "", "?"
    with open("/proc/mounts") as mounts:
        for line in mounts:
            _, point, fstype, *_ = line.split()
            if os.path.realpath(path).startswith(point) and len(point) > len(best):
                best, kind = point, fstype
    return kind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=os.environ.get("TMPDIR") or "/var/tmp")
    parser.add_argument("--count", type=int, default=1000, help="messages per row")
    parser.add_argument("--size", type=int, default=5000, help="bytes per message")
    parser.add_argument("--concurrency", default="1,20,100")
    parser.add_argument("--recover", type=int, default=100_000,
                        help="messages for the recovery table (0: skip it)")
    parser.add_argument("--child", nargs=5, metavar=("KIND", "DIR", "C", "N", "SIZE"),
                        help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        kind, directory, c, n, size = options.child
        if kind == "fill":
            fill(directory, int(n))
        elif kind == "recover":
            recover(directory)
        else:
            child(kind, directory, int(c), int(n), int(size))
        return
    base = tempfile.mkdtemp(prefix="bench-spool-", dir=options.dir)
    counting = perf_works()
    try:
        print(f"spool under {base} ({file_system(base)}), {options.count} messages of "
              f"{options.size} bytes per row; fsyncs counted: "
              f"{'perf stat' if counting else 'no (perf unavailable)'}\n")
        print(f"{'layout':<7}{'concurrent':>11}{'msgs/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
              f"{'fsync/msg':>11}{'msgs/txn':>10}")
        for kind in ("old", "new"):
            baseline = None
            if counting:
                directory = os.path.join(base, f"{kind}-empty")
                _, baseline = run_child([kind, directory, "1", "0", str(options.size)], True)
            for concurrency in (int(c) for c in options.concurrency.split(",")):
                directory = os.path.join(base, f"{kind}-{concurrency}")
                result, fsyncs = run_child(
                    [kind, directory, str(concurrency), str(options.count), str(options.size)],
                    counting)
                shutil.rmtree(directory, ignore_errors=True)
                stored = result["stored"]
                per_message = (f"{(fsyncs - baseline) / stored:.2f}"
                               if fsyncs is not None and baseline is not None and stored
                               else "-")
                per_txn = (f"{stored / result['transactions']:.1f}"
                           if result["transactions"] else "-")
                print(f"{kind:<7}{concurrency:>11}{stored / result['seconds']:>10.0f}"
                      f"{result['p50'] * 1e3:>9.1f}{result['p99'] * 1e3:>9.1f}"
                      f"{per_message:>11}{per_txn:>10}", flush=True)
        if options.recover:
            directory = os.path.join(base, "recover")
            start = time.perf_counter()
            run_child(["fill", directory, "0", str(options.recover), "0"], False)
            filled = time.perf_counter() - start
            result, _ = run_child(["recover", directory, "0", "0", "0"], False)
            print(f"\nrecovery of {result['count']} messages of 1 KB (filled through the API "
                  f"in {filled:.1f} s)")
            print(f"{'seconds':>8}{'msgs/s':>10}{'max reactor wait ms':>21}"
                  f"{'RSS B/msg':>11}")
            print(f"{result['seconds']:>8.2f}{result['count'] / result['seconds']:>10.0f}"
                  f"{result['stall'] * 1e3:>21.0f}{result['rss_per_message']:>11.0f}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
