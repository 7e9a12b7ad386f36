"""How fast the spool makes messages durable, and what fsync costs (prints tables).

    python3 bench/bench_spool.py [--dir DIR] [--count N]

Numbers depend on the file system under DIR (tmpfs fsync is free; ext4 on an SSD
is not): point --dir at the disk the real spool will use.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

from twisted.internet import defer, task
from twisted.python.threadpool import ThreadPool

from hatwist.spool import Disk, Spool


class NoSyncDisk(Disk):
    """The same writes and renames without any fsync: the cost of durability is
    the difference between this and L{Disk}."""

    def write(self, path: str, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def fsync_dir(self, path: str) -> None:
        pass


def file_system(path: str) -> str:
    best, kind = "", "?"
    with open("/proc/mounts") as mounts:
        for line in mounts:
            _, point, fstype, *_ = line.split()
            if os.path.realpath(path).startswith(point) and len(point) > len(best):
                best, kind = point, fstype
    return kind


def fsync_costs(directory: str, count: int) -> None:
    file_times, dir_times = [], []
    for i in range(count):
        path = os.path.join(directory, f"probe-{i}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"x" * 4096)
        start = time.perf_counter()
        os.fsync(fd)
        file_times.append(time.perf_counter() - start)
        os.close(fd)
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        start = time.perf_counter()
        os.fsync(dfd)
        dir_times.append(time.perf_counter() - start)
        os.close(dfd)
        os.unlink(path)
    print(f"{'fsync of':<22}{'mean us':>10}{'p50 us':>10}{'p99 us':>10}")
    for name, times in (("4 KiB file", file_times), ("directory", dir_times)):
        times.sort()
        print(f"{name:<22}{statistics.mean(times) * 1e6:>10.0f}"
              f"{times[len(times) // 2] * 1e6:>10.0f}{times[int(len(times) * 0.99)] * 1e6:>10.0f}")
    print()


async def store_rate(reactor, directory: str, *, threads: int, size: int, durable: bool,
                     count: int) -> tuple[float, float]:
    pool = ThreadPool(minthreads=threads, maxthreads=threads, name="bench-spool")
    pool.start()
    try:
        spool = Spool(directory, reactor=reactor, threadpool=pool,
                      disk=Disk() if durable else NoSyncDisk())
        await spool.recover()
        content = b"Subject: bench\r\n\r\n" + b"x" * (size - 18)
        latencies = []

        async def submitter(n: int) -> None:
            # Like an SMTP session: the next message only after the last one's 250.
            for _ in range(n):
                start = time.perf_counter()
                await spool.store("default", "s@example.org", ["r@example.net"], content)
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await defer.gatherResults([defer.ensureDeferred(submitter(count // threads))
                                   for _ in range(threads)])
        count = len(latencies)
        elapsed = time.perf_counter() - start
        return count / elapsed, statistics.mean(latencies)
    finally:
        pool.stop()
        shutil.rmtree(directory, ignore_errors=True)


async def main(reactor, options: argparse.Namespace) -> None:
    base = tempfile.mkdtemp(prefix="bench-spool-", dir=options.dir)
    print(f"spool under {base} ({file_system(base)}), {options.count} messages per row\n")
    fsync_costs(base, min(options.count, 200))
    print("one submitter per pool thread; latency = store() call to Deferred firing")
    print(f"{'threads':>8}{'size':>9}{'fsync':>7}{'msgs/s':>10}{'mean ms':>10}")
    for size in (2048, 65536):
        for threads in (1, 4, 16):
            for durable in (True, False):
                rate, latency = await store_rate(
                    reactor, os.path.join(base, "s"), threads=threads, size=size,
                    durable=durable, count=options.count)
                print(f"{threads:>8}{size:>9}{'yes' if durable else 'no':>7}{rate:>10.0f}"
                      f"{latency * 1e3:>10.1f}")
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="where to make the spool (default: $TMPDIR)")
    parser.add_argument("--count", type=int, default=500)
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, parser.parse_args())))
