"""Stores per second and fsyncs per message: the SQLite spool beside the old file layout.

    python3 bench/bench_spool.py [--dir DIR] [--count N] [--size BYTES] [--concurrency 1,20,100]

Each row runs in a child process of its own: ``--concurrency`` submitters, each storing
its next message only once the last one's Deferred fired (like an SMTP session waiting
for its 250). "new" is hatwist.spool.Spool (group commit, one writer thread); "old" is
the file-per-message layout of hatwist.spool._legacy run the way the old Spool ran it (a
4-thread pool, two file fsyncs and a directory fsync per store). fsyncs are counted by
the kernel (``perf stat`` on the fsync and fdatasync tracepoints) over the whole child,
minus a child that opens the spool and stores nothing; ``-`` where perf cannot count.

Numbers depend on the file system under DIR (tmpfs fsync is free): point --dir at the
disk the real spool will use (default: $TMPDIR, else /var/tmp).
"""

from __future__ import annotations

import argparse
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
    parser.add_argument("--child", nargs=5, metavar=("KIND", "DIR", "C", "N", "SIZE"),
                        help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        kind, directory, c, n, size = options.child
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
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
