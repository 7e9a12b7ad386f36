"""
What a row of bench_relay.py costs, read from the kernel: CPU and context switches per
process and thread (/proc), the egress HAProxy's connection count, and the workers
rows' summary (the pairs' ratios and the ceiling their costs allow). No reactor here.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import statistics
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


class CostError(Exception):
    """A cost could not be read; the message says which."""


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a supervisor and its workers), from /proc."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{tid}/children") as f:
                    todo.extend(int(child) for child in f.read().split())
    return found


def children_cpu() -> float:
    """CPU seconds of this process's children that ended and were reaped (smtp-source)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def task_stats(root: int) -> dict[str, float]:
    """CPU seconds and context switches of ``root``'s process tree, per kind of thread:
    ``reactor`` (each relay process's main thread), ``threads`` (its other threads: the
    spool writer and readers), ``supervisor`` (with workers, the root process itself);
    ``*_user``/``*_sys`` apart, and ``wakeups`` (voluntary context switches: all, and
    ``*_wakeups`` per kind)."""
    totals: dict[str, float] = {}
    pids = process_tree(root)
    for pid in pids:
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                kind = ("supervisor" if pid == root and len(pids) > 1
                        else "reactor" if int(tid) == pid else "threads")
                with contextlib.suppress(OSError):
                    with open(f"/proc/{pid}/task/{tid}/stat") as f:
                        fields = f.read().rpartition(")")[2].split()
                    with open(f"/proc/{pid}/task/{tid}/status") as f:
                        switches = next(int(line.split()[1]) for line in f
                                        if line.startswith("voluntary_ctxt_switches"))
                    for key, value in ((f"{kind}_user", int(fields[11]) / CLK_TCK),
                                       (f"{kind}_sys", int(fields[12]) / CLK_TCK),
                                       ("wakeups", switches),
                                       (f"{kind}_wakeups", switches)):
                        totals[key] = totals.get(key, 0.0) + value
    return totals


def haproxy_connections(admin_socket: str) -> int:
    """The egress HAProxy's CumConns (``show info`` on its admin socket)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(admin_socket)
        s.sendall(b"show info\n")
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    found = re.search(rb"^CumConns: (\d+)", answer, re.MULTILINE)
    if found is None:
        raise CostError("the egress HAProxy's show info has no CumConns")
    return int(found.group(1))


#: The worker processes' events ``--perf`` counts per message: new connections are
#: ``accept4`` calls (more than one per connection: the herd's empty accepts, and the
#: last EAGAIN of each batch), wakeups are ``epoll_wait`` calls, the spool's commits
#: ``fdatasync``/``fsync`` calls and its thread hand-offs ``futex`` calls.
PERF_EVENTS = {
    "syscalls:sys_enter_accept4": "accept4",
    "syscalls:sys_enter_epoll_wait": "epoll_wait",
    "syscalls:sys_enter_fdatasync": "fdatasync",
    "syscalls:sys_enter_fsync": "fsync",
    "syscalls:sys_enter_futex": "futex",
    "raw_syscalls:sys_enter": "syscalls",
    "context-switches": "context switches",
}


def load_average() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise CostError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def print_workers_summary(pairs: list[list[Any]]) -> None:
    """Each pair's workers = 2 / workers = 1 ratio, and the arithmetic of the ceiling:
    on C cores, at most C / (relay + load generator CPU per message) messages a second;
    one worker is bounded by its reactor thread (at most 1 / its CPU per message), so
    against a workers = 1 whose reactor has a whole core the ratio is at most
    C x reactor / (relay + load generator), per message. On a busy box a workers = 1
    whose reactor got less than a core makes the measured ratio larger than that: it
    then shows the share of the CPU two processes win against the other jobs."""
    cores = os.cpu_count() or 1
    print(f"\nworkers summary ({cores} cores; load average now {load_average()}):", flush=True)
    if len(pairs) > 2:
        for column in range(1, len(pairs[0])):
            ratios = [rows[column].rate / rows[0].rate for rows in pairs]
            print(f"  median of {len(pairs)} pairs: "
                  f"{pairs[0][column].name.removeprefix('hatwist proxied, ')}: "
                  f"{statistics.median(ratios):.2f}x (from {min(ratios):.2f}x to "
                  f"{max(ratios):.2f}x)", flush=True)
    for turn, rows in enumerate(pairs, 1):
        one, *twos = rows
        for two in twos:
            print(f"  pair {turn}: {two.name.removeprefix('hatwist proxied, ')}: "
                  f"{two.rate:.0f} / {one.rate:.0f} msg/s = {two.rate / one.rate:.2f}x", flush=True)
        # The best two workers can do against one whose reactor thread has a whole core:
        # the cores over everything a message costs on the box, against one message per
        # reactor-thread CPU time.
        reactor_one = one.costs.get("reactor_user", 0) + one.costs.get("reactor_sys", 0)
        if reactor_one:
            whole = one.cpu + one.costs["tools"]
            print(f"    ceiling against workers = 1 at a full reactor core: {cores} x "
                  f"{reactor_one * 1e6:.0f} / {whole * 1e6:.0f} us = "
                  f"{cores * reactor_one / whole:.2f}x with no extra cost per message for the"
                  f" second worker, " + ", ".join(
                      f"{cores * reactor_one / (two.cpu + two.costs['tools']):.2f}x with "
                      f"{two.name.removeprefix('hatwist proxied, ')}'s" for two in twos),
                  flush=True)
        for row in rows:
            c = row.costs
            reactor = c.get("reactor_user", 0) + c.get("reactor_sys", 0)
            total = row.cpu + c["tools"]
            workers = 2 if "workers = 2" in row.name else 1
            print(f"    {row.name.removeprefix('hatwist proxied, ')}: relay {row.cpu * 1e6:.0f}"
                  f" + load generator {c['tools'] * 1e6:.0f} = {total * 1e6:.0f} us/msg; "
                  f"CPU-bound ceiling {cores / total:.0f} msg/s; reactor thread "
                  f"{reactor / workers / c['wall']:.0%} of a core per worker; box "
                  f"{total / c['wall'] / cores:.0%} busy with this run", flush=True)
