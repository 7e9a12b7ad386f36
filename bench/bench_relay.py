"""
hatwist end to end against Postfix's C tools through the same HAProxy, in one run.

Run as root (HAProxy's ``usesrc clientip`` needs it), from the checkout:
    PYTHONPATH=. python3 bench/bench_relay.py [--messages 5000] [--size 5120]
        [--sessions 20] [--queued 1000000] [--latency-seconds 10] [--py-spy DIR]

One table, one row per measurement, everything on loopback:

- ``reference``: ``smtp-source`` -> HAProxy (``send-proxy-v2`` to the egress HAProxy, the
  header's addresses set to 127.0.0.9 -> the sink) -> the egress HAProxy (``accept-proxy``,
  ``usesrc clientip``: the lab's) -> ``smtp-sink``; one message per connection (the
  smtp-source default), then reusing connections (``-d``). The first is the 1.00x of the
  ``vs ref`` column.
- ``hatwist proxied`` / ``bypassed``: ``smtp-source`` (the same flags as the first
  reference row) -> ``twistd hatwist`` -> the egress HAProxy (or straight, from
  ``bind_address``) -> ``smtp-sink``.
- ``delivery-only``: the spool pre-filled through ``hatwist.spool.Spool``'s own API, then
  the relay started on it; rate from the sink's first to its last message.
- ``accept-only``: ``ha_proxy_server`` is a dead port, so the health check unplumbs it and
  nothing is delivered; rate until ``smtp-source`` got its last 250.
- ``latency``: a paced Twisted client in this process at half the proxied rate; from the
  relay's 250 to the (recording, in-process) sink's end of DATA; the same row checks the
  source addresses the sink saw (proxied 127.0.0.9, bypassed 127.0.0.30).
- ``queued``: ``--queued`` small messages pre-filled through the spool API behind a dead
  proxy: RSS per queued message, start to first ``/status`` answer and to the
  scheduler's recovery line, and ``/status`` latency at that depth.
- ``workers``: the proxied row's load against ``workers = 1`` and then ``workers = 2``
  (a supervisor and two worker processes on its listener), the pair twice in turn (with
  ``--baseline-tree DIR``, a ``workers = 2`` row of the checkout in DIR after each pair:
  the same run compares two versions); every row has
  ``max_inbound_connections_per_ip = 1000``, as smtp-source comes from one address. Both
  rows set ``max_connections`` to ``--workers-connections`` (40; at the default 10 per
  domain the outbound concurrency, not the cores, is the limit); it is divided among the
  workers, so both open as many outbound connections. ``cpu us/msg`` is the supervisor's
  and the workers' together. The notes split it per message into the reactor threads'
  and the other threads' (spool writer, readers) user+system time, count the relay's
  voluntary context switches (its wakeups) and the outbound connections (the egress
  HAProxy's CumConns: 1/x messages per session), and say what the load generator
  (smtp-source, smtp-sink and the egress HAProxy, which share the box's cores with the
  relay) costs per message; with workers, how many messages each worker accepted;
  with ``--perf``, system calls per message counted by ``perf stat`` in the relay's
  processes. A summary after the rows gives each pair's ratio and the ceiling those
  costs allow on this box's cores. The load average is printed at the start and end:
  other work on the box inflates every CPU figure and lowers every rate.

``msg/s`` rows time until ``smtp-sink`` (its ``-c`` counter) has them all, from the start
of ``smtp-source``. ``cpu us/msg`` is the relay process's utime+stime (/proc/PID/stat, all
threads) over the row per message. Every relay is a fresh ``twistd -n hatwist`` with a
fresh durable spool under ``$TMPDIR`` (put it on a real disk, not tmpfs).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

from _costs import (  # bench/, beside this script
    PERF_EVENTS,
    children_cpu,
    cpu_seconds,
    haproxy_connections,
    load_average,
    print_workers_summary,
    process_tree,
    rss_kib,
    task_stats,
)
from twisted.internet import defer, error, protocol, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.python.threadpool import ThreadPool
from twisted.web.client import Agent, readBody

from hatwist.config import TLSMode
from hatwist.delivery import Envelope, open_session
from hatwist.lab.dns import DNSServer
from hatwist.lab.haproxy import HAProxy, find_haproxy, free_port
from hatwist.lab.sink import SMTPSink
from hatwist.spool import Spool

ROOT = Path(__file__).resolve().parents[1]
SINK_HOST = "127.0.0.20"
PROXY_SOURCE = "127.0.0.9"
BYPASS_BIND = "127.0.0.30"
PROXY_DOMAIN = "proxied.bench.test"
DIRECT_DOMAIN = "direct.bench.test"
MX_NAME = "mx.bench.test"
SENDER = "bench@sender.bench.test"
SMTP_SINK = "/usr/sbin/smtp-sink"
SMTP_SOURCE = "/usr/sbin/smtp-source"
#: Deadlines (seconds): process start, stop after SIGTERM, one row.
START_DEADLINE = 60.0
STOP_DEADLINE = 15.0
ROW_DEADLINE = 300.0

_ACCEPTED = re.compile(r"\baccepted (\S+) from ")
_WORKER = re.compile(r"\[(worker-\d+) ")
_PROBLEM = re.compile(r"#(error|critical)\]|Traceback|Unhandled")
_UNPLUMBED = re.compile(r"proxy \S+ \S+ -> unplumbed")
#: The scheduler's "recovery done" line, today's and (looser) the rewritten scheduler's.
_RECOVERED = re.compile(r"recovered|recovery (done|complete|finished)", re.IGNORECASE)

_LAUNCH = (
    "import sys; sys.argv = ['twistd', '-n', '--pidfile=', 'hatwist', '--config', {config!r}]; "
    "from twisted.scripts.twistd import run; run()"
)

_CHILDREN: set[int] = set()
_WORKDIRS: set[str] = set()


@atexit.register
def _clean_up_leftovers() -> None:
    """Children and work directories go at exit whatever happened (Ctrl-C included)."""
    for pid in list(_CHILDREN):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    for path in list(_WORKDIRS):
        shutil.rmtree(path, ignore_errors=True)


class BenchError(Exception):
    """A row could not be measured; the message says which step failed."""


# -- processes ------------------------------------------------------------------------------


class _Child(protocol.ProcessProtocol):
    """A child process: its output split on LF and CR (stamped on arrival), and its end."""

    def __init__(self, on_line=None) -> None:
        self.on_line = on_line
        self.output: list[str] = []
        self.ended: defer.Deferred[int | None] = defer.Deferred()
        self.exited = False
        self._buffers: dict[int, bytes] = {}

    def childDataReceived(self, fd: int, data: bytes) -> None:
        text = self._buffers.get(fd, b"") + data
        *lines, self._buffers[fd] = re.split(b"[\r\n]", text)
        now = time.monotonic()
        for raw in lines:
            if raw:
                line = raw.decode("utf-8", "replace")
                if self.on_line is not None:
                    self.on_line(line, now)
                else:
                    self.output.append(line)
                    del self.output[:-200]

    def processEnded(self, reason) -> None:
        self.exited = True
        _CHILDREN.discard(self.transport.pid)
        self.ended.callback(reason.value.exitCode)


def spawn(reactor, argv: list[str], *, on_line=None, cwd=None, env=None) -> _Child:
    child = _Child(on_line)
    transport = reactor.spawnProcess(child, argv[0], argv, env=env, path=cwd,
                                     childFDs={0: "w", 1: "r", 2: "r"})
    _CHILDREN.add(transport.pid)
    return child


def _observe(d: defer.Deferred) -> defer.Deferred:
    """A Deferred that fires when ``d`` does, leaving ``d``'s result alone."""
    observer: defer.Deferred = defer.Deferred()
    d.addBoth(lambda r: (observer.callback(None), r)[1])
    return observer


async def stop_child(reactor, child: _Child, sig: str = "TERM") -> None:
    if child.exited:
        return
    with contextlib.suppress(error.ProcessExitedAlready):
        child.transport.signalProcess(sig)
    try:
        await _observe(child.ended).addTimeout(STOP_DEADLINE, reactor)
    except defer.TimeoutError:
        with contextlib.suppress(error.ProcessExitedAlready):
            child.transport.signalProcess("KILL")
        await _observe(child.ended).addTimeout(STOP_DEADLINE, reactor)


async def wait_until(reactor, predicate, timeout: float, what: str) -> float:
    """Poll ``predicate`` every 10 ms; the monotonic time it first held."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
        await task.deferLater(reactor, 0.01)
    return time.monotonic()


async def wait_listening(reactor, host: str, port: int, what: str) -> None:
    def accepts() -> bool:
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.2):
            return True
        return False

    await wait_until(reactor, accepts, START_DEADLINE, what)


class PerfStat:
    """``perf stat`` counting :data:`PERF_EVENTS` in ``pids`` until :meth:`stop`."""

    def __init__(self, reactor, workdir: str, pids: list[int]) -> None:
        self.reactor = reactor
        self.output = os.path.join(workdir, f"perf-{pids[0]}.csv")
        self.child = spawn(reactor, ["perf", "stat", "-x", ",", "-o", self.output,
                                     "-e", ",".join(PERF_EVENTS),
                                     "-p", ",".join(map(str, pids))])
        self._counts: dict[str, int] | None = None

    async def stop(self) -> dict[str, int]:
        if self._counts is None:
            await stop_child(self.reactor, self.child, "INT")
            self._counts = {}
            with contextlib.suppress(OSError), open(self.output) as f:
                for line in f:
                    fields = line.strip().split(",")
                    if len(fields) > 2 and fields[0].isdigit():
                        self._counts[fields[2]] = int(fields[0])
        return self._counts


# -- the C tools and the second HAProxy ------------------------------------------------------


class SmtpSinkProcess:
    """``smtp-sink -c``: its running ``mesg=N`` counter, stamped as it is read."""

    def __init__(self, reactor) -> None:
        self.reactor = reactor
        self.port = free_port(SINK_HOST)
        self.count = 0
        self.stamps: dict[int, float] = {}
        self.child = spawn(reactor, [SMTP_SINK, "-c", "-u", "nobody",
                                     f"{SINK_HOST}:{self.port}", "1000"], on_line=self._line)

    def _line(self, line: str, now: float) -> None:
        if (m := re.search(r"mesg=(\d+)", line)) is not None and int(m.group(1)) > self.count:
            self.count = int(m.group(1))
            self.stamps[self.count] = now

    async def wait_for(self, total: int, timeout: float = ROW_DEADLINE) -> float:
        """The time the counter reached ``total``."""
        await wait_until(self.reactor, lambda: self.count >= total, timeout,
                         f"smtp-sink to count {total} (has {self.count})")
        return self.stamps[min(s for s in self.stamps if s >= total)]


_INGRESS = """\
global
    stats socket {workdir}/admin.sock mode 600 level admin
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend reference
    bind 127.0.0.1:{port}
    # The header the egress HAProxy gets is the one hatwist would send for the sink.
    tcp-request connection set-src ipv4({source})
    tcp-request connection set-dst ipv4({sink_host})
    tcp-request connection set-dst-port int({sink_port})
    default_backend hop
backend hop
    server egress {egress} send-proxy-v2
"""


async def start_ingress(reactor, workdir: str, egress: str, sink_port: int) -> tuple[_Child, int]:
    """The reference's first HAProxy: ``send-proxy-v2`` to the egress (the lab's)."""
    port = free_port()
    path = os.path.join(workdir, "ingress.cfg")
    with open(path, "w") as f:
        f.write(_INGRESS.format(workdir=workdir, port=port, source=PROXY_SOURCE,
                                sink_host=SINK_HOST, sink_port=sink_port, egress=egress))
    child = spawn(reactor, [find_haproxy(), "-db", "-f", path])
    await wait_until(reactor, lambda: os.path.exists(os.path.join(workdir, "admin.sock"))
                     or child.exited, START_DEADLINE, "the ingress HAProxy")
    if child.exited:
        raise BenchError("ingress HAProxy exited: " + " | ".join(child.output[-5:]))
    return child, port


async def smtp_source(reactor, port: int, *, messages: int, sessions: int, size: int,
                      domain: str, reuse: bool) -> float:
    """Run ``smtp-source`` to completion; the time it ended."""
    argv = [SMTP_SOURCE, *(["-d"] if reuse else []), "-s", str(sessions), "-m", str(messages),
            "-l", str(size), "-M", "submitter.bench.test", "-f", SENDER, "-t",
            f"r@{domain}", f"127.0.0.1:{port}"]
    child = spawn(reactor, argv)
    try:
        status = await defer.Deferred.fromCoroutine(_ended(child)).addTimeout(
            ROW_DEADLINE, reactor)
    except defer.TimeoutError:
        await stop_child(reactor, child, "KILL")
        raise BenchError("smtp-source did not finish in time") from None
    if status != 0:
        raise BenchError(f"smtp-source exited {status}: " + " | ".join(child.output[-5:]))
    return time.monotonic()


async def _ended(child: _Child) -> int | None:
    results: list = []
    await _observe(child.ended.addBoth(lambda r: (results.append(r), r)[1]))
    return results[0]


# -- the relay --------------------------------------------------------------------------------


def config_text(*, listen: int, status: int, spool: str, dns: tuple[str, int], proxy: str,
                sink_port: int, extra: str = "") -> str:
    return f"""\
{extra}listen = 127.0.0.1:{listen}
status_listen = 127.0.0.1:{status}
spool_dir = "{spool}"
resolver = {dns[0]}:{dns[1]}
ha_proxy_server = "{proxy}"
remote_smtp_port = {sink_port}
tls = no
ehlo_hostname = relay.bench.test
retry_interval = 60
connect_timeout = 5
smtp_timeout = 30
shutdown_grace = 2
# The load comes from one address (smtp-source on loopback), with more sessions than the
# default per-address share of max_inbound_connections.
max_inbound_connections_per_ip = 1000
max_inbound_connections = 1000
ha_proxy_client {{
  health_check_mode = connect
  health_check_interval = 2
  health_check_timeout = 1
  health_check_success_threshold = 1
  health_check_failure_threshold = 1
}}
binding {{
  ha_proxy_src_addr = {PROXY_SOURCE}
}}
Domain {DIRECT_DOMAIN} {{
  ha_proxy_bypass = true
  bind_address = {BYPASS_BIND}
}}
"""


class Relay:
    """One ``twistd -n hatwist`` child: its log lines, stamped accepts, and its pid."""

    def __init__(self, reactor, workdir: str, lab: Lab, *, sink_port: int,
                 proxy: str | None = None, spool: str | None = None, workers: int = 1,
                 extra: str = "", root: Path = ROOT) -> None:
        self.reactor = reactor
        self._listening = workers  # one "InboundFactory starting on" line per worker
        self.listen, self.status = free_port(), free_port()
        self.spool = spool or os.path.join(workdir, f"spool-{self.listen}")
        self.accepted: dict[str, float] = {}
        self.accepted_by: dict[str, int] = {}  # "worker-N" (or "relay") -> messages
        self.problems: list[str] = []
        self.marks: dict[str, float] = {}
        self.tail: list[str] = []
        path = os.path.join(workdir, f"hatwist-{self.listen}.conf")
        with open(path, "w") as f:
            f.write(config_text(listen=self.listen, status=self.status, spool=self.spool,
                                dns=lab.dns.address, proxy=proxy or lab.egress.server_text,
                                sink_port=sink_port, extra=extra))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (str(root), os.environ.get("PYTHONPATH")) if p))
        self.started = time.monotonic()
        self.child = spawn(reactor, [sys.executable, "-c", _LAUNCH.format(config=path)],
                           on_line=self._line, cwd=str(root), env=env)
        self.pid = self.child.transport.pid

    def _line(self, line: str, now: float) -> None:
        self.tail.append(line)
        del self.tail[:-40]
        if (m := _ACCEPTED.search(line)) is not None:
            self.accepted[m.group(1)] = now
            worker = _WORKER.search(line)
            label = worker.group(1) if worker else "relay"
            self.accepted_by[label] = self.accepted_by.get(label, 0) + 1
        elif _PROBLEM.search(line):
            self.problems.append(line)
        if f"starting on {self.listen}" in line:
            self._listening -= 1
            if self._listening == 0:  # with workers, once every worker listens
                self.marks["listening"] = now
        for name, pattern in (("unplumbed", _UNPLUMBED), ("recovered", _RECOVERED)):
            if name not in self.marks and (re.search(pattern, line)):
                self.marks[name] = now

    async def wait_mark(self, name: str, timeout: float = START_DEADLINE) -> float:
        try:
            await wait_until(self.reactor, lambda: name in self.marks or self.child.exited,
                             timeout, f"the relay's {name!r} line")
        except BenchError as e:
            raise BenchError(f"{e}; relay log:\n" + "\n".join(self.tail)) from None
        if name not in self.marks:
            raise BenchError("relay exited; its log:\n" + "\n".join(self.tail))
        return self.marks[name]

    def cpu(self) -> float:
        """The relay's CPU seconds: with workers, the supervisor's and every worker's."""
        total = 0.0
        for pid in process_tree(self.pid):
            with contextlib.suppress(OSError):
                total += cpu_seconds(pid)
        return total

    async def stop(self) -> None:
        await stop_child(self.reactor, self.child)


class Lab:
    """DNS, the egress HAProxy (the lab's), smtp-sink, the reference's ingress HAProxy, and
    a recording sink for the latency and source rows."""

    async def start(self, reactor, workdir: str) -> None:
        self.dns = await DNSServer.start(reactor)
        for domain in (PROXY_DOMAIN, DIRECT_DOMAIN):
            self.dns.add_mx(domain, [(10, MX_NAME)])
        self.dns.add_a(MX_NAME, SINK_HOST)
        self.egress = HAProxy(reactor)
        await self.egress.start()
        self.sink = SmtpSinkProcess(reactor)
        await wait_listening(reactor, SINK_HOST, self.sink.port, "smtp-sink")
        self.ingress, self.ingress_port = await start_ingress(
            reactor, workdir, self.egress.server_text, self.sink.port)
        self.recorder = await StampingSink.start(reactor, host=SINK_HOST, name=MX_NAME)

    async def stop(self, reactor) -> None:
        for child in (getattr(self, "ingress", None), getattr(getattr(self, "sink", None),
                                                             "child", None)):
            if child is not None:
                await stop_child(reactor, child)
        for part in (getattr(self, n, None) for n in ("recorder", "egress", "dns")):
            if part is not None:
                with contextlib.suppress(Exception):
                    await part.stop()


class StampingSink(SMTPSink):
    """The lab's recording sink, noting when each message's DATA ended."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.arrived: list[float] = []

    def _changed(self) -> None:
        now = time.monotonic()
        self.arrived.extend([now] * (len(self.messages) - len(self.arrived)))
        super()._changed()


# -- rows -------------------------------------------------------------------------------------


class Row:
    def __init__(self, name: str, rate: float | None = None, cpu: float | None = None,
                 p50: float | None = None, p99: float | None = None, note: str = "",
                 costs: dict[str, float] | None = None) -> None:
        self.name, self.rate, self.cpu, self.p50, self.p99, self.note = (
            name, rate, cpu, p50, p99, note)
        #: Per message (seconds, counts) of the workers rows: see relay_row.
        self.costs = costs or {}


async def reference_row(reactor, lab: Lab, args, *, reuse: bool) -> Row:
    base = lab.sink.count
    started = time.monotonic()
    await smtp_source(reactor, lab.ingress_port, messages=args.messages,
                      sessions=args.sessions, size=args.size, domain=PROXY_DOMAIN, reuse=reuse)
    done = await lab.sink.wait_for(base + args.messages)
    return Row(f"reference: smtp-source{' -d' if reuse else ''} -> 2x HAProxy -> smtp-sink",
               args.messages / (done - started),
               note="reusing connections" if reuse else "one message per connection")


async def relay_row(reactor, lab: Lab, args, workdir: str, *, domain: str, name: str,
                    profile: str | None = None, workers: int = 1, extra: str = "",
                    costs: bool = False, root: Path = ROOT) -> Row:
    relay = Relay(reactor, workdir, lab, sink_port=lab.sink.port, workers=workers,
                  extra=extra, root=root)
    spy = None
    try:
        await relay.wait_mark("listening")
        if workers > 1:
            await wait_workers_running(reactor, relay.status, workers)
        perf = None
        if costs and args.perf:
            perf = PerfStat(reactor, workdir, [
                pid for pid in process_tree(relay.pid) if workers == 1 or pid != relay.pid])
        if profile is not None:
            spy = spawn(reactor, [shutil.which("py-spy") or "py-spy", "record", "--format",
                                  "raw", "--rate", "100", "--threads", "--nonblocking",
                                  *(["--subprocesses"] if workers > 1 else []),
                                  "--output", profile, "--pid", str(relay.pid)])
        base, cpu_before = lab.sink.count, relay.cpu()
        others_before = (children_cpu(), cpu_seconds(lab.sink.child.transport.pid),
                         cpu_seconds(lab.egress.pid))
        if costs:
            tasks_before = task_stats(relay.pid)
            conns_before = haproxy_connections(lab.egress.admin_socket)
        started = time.monotonic()
        submitted = await smtp_source(reactor, relay.listen, messages=args.messages,
                                      sessions=args.sessions, size=args.size, domain=domain,
                                      reuse=args.submit_reuse)
        done = await lab.sink.wait_for(base + args.messages)
        cpu = relay.cpu() - cpu_before
        others = (children_cpu(), cpu_seconds(lab.sink.child.transport.pid),
                  cpu_seconds(lab.egress.pid))
        if costs:
            tasks = task_stats(relay.pid)
            conns = haproxy_connections(lab.egress.admin_socket) - conns_before
        counts = await perf.stop() if perf is not None else {}
    finally:
        if perf is not None:
            await perf.stop()
        if spy is not None:
            await stop_child(reactor, spy, "INT")
        await relay.stop()
    note = (f"accepted at {args.messages / (submitted - started):.0f}/s; "
            f"{len(relay.problems)} error lines")
    per: dict[str, float] = {}
    if costs:
        source_us, sink_us, haproxy_us = (
            (after - before) / args.messages * 1e6
            for before, after in zip(others_before, others, strict=True))
        per = {key: (value - tasks_before.get(key, 0.0)) / args.messages
               for key, value in tasks.items()}
        per["tools"] = (source_us + sink_us + haproxy_us) / 1e6
        per["wall"] = (done - started) / args.messages
        us = {key: per.get(key, 0.0) * 1e6 for key in (
            "reactor_user", "reactor_sys", "threads_user", "threads_sys", "supervisor_user",
            "supervisor_sys")}
        note += (f"; relay us/msg: reactor {us['reactor_user']:.0f}u+{us['reactor_sys']:.0f}s,"
                 f" threads {us['threads_user']:.0f}u+{us['threads_sys']:.0f}s"
                 + (f", supervisor {us['supervisor_user'] + us['supervisor_sys']:.0f}"
                    if workers > 1 else "")
                 + f"; wakeups/msg {per['wakeups']:.1f} (reactor "
                 f"{per.get('reactor_wakeups', 0):.1f}); {conns / args.messages:.2f} outbound"
                 f" conns/msg; load generator us/msg {source_us + sink_us + haproxy_us:.0f}"
                 f" (smtp-source {source_us:.0f}, smtp-sink {sink_us:.0f}, HAProxy "
                 f"{haproxy_us:.0f})")
        if workers > 1:
            note += "; accepted by " + ", ".join(
                f"{label} {count}" for label, count in sorted(relay.accepted_by.items()))
        if counts:
            note += "; per msg (perf): " + ", ".join(
                f"{name} {counts.get(event, 0) / args.messages:.1f}"
                for event, name in PERF_EVENTS.items())
    return Row(name, args.messages / (done - started), cpu / args.messages, note=note,
               costs=per)


async def fill_spool(reactor, directory: str, count: int, size: int, domain: str) -> float:
    """Store ``count`` messages through the public Spool API; the seconds it took."""
    pool = ThreadPool(4, 16, "bench-fill")
    pool.start()
    try:
        spool = Spool(directory, reactor=reactor, threadpool=pool)
        content = body(size, "queued")
        started = time.monotonic()
        # At most 256 stores outstanding (the spool groups them into few commits); a
        # semaphore, not a DeferredList per store, so filling a million stays linear.
        window = defer.DeferredSemaphore(256)
        pending: set[defer.Deferred] = set()
        for n in range(count):
            await window.acquire()
            d = spool.store("default", SENDER, [f"q{n}@{domain}"], content)
            pending.add(d)
            d.addBoth(lambda r, d=d: (pending.discard(d), window.release(), r)[2])
        await defer.gatherResults(list(pending), consumeErrors=True)
        elapsed = time.monotonic() - started
        await spool.close()  # its lock: the relay opens this spool next
        return elapsed
    finally:
        pool.stop()


async def delivery_only_row(reactor, lab: Lab, args, workdir: str) -> Row:
    spool = os.path.join(workdir, "prefilled")
    fill = await fill_spool(reactor, spool, args.messages, args.size, PROXY_DOMAIN)
    base = lab.sink.count
    relay = Relay(reactor, workdir, lab, sink_port=lab.sink.port, spool=spool)
    try:
        cpu_before = relay.cpu()
        done = await lab.sink.wait_for(base + args.messages)
        first = lab.sink.stamps[min(s for s in lab.sink.stamps if s > base)]
        cpu = relay.cpu() - cpu_before
    finally:
        await relay.stop()
    return Row(f"delivery-only: {args.messages} pre-filled -> HAProxy -> smtp-sink",
               (args.messages - 1) / (done - first), cpu / args.messages,
               note=f"first to last at the sink (incl. start+recovery {done - relay.started:.1f}s);"
                    f" fill {args.messages / fill:.0f}/s")


async def accept_only_row(reactor, lab: Lab, args, workdir: str, idle: list[int]) -> Row:
    dead = f"127.0.0.1:{free_port()}"
    relay = Relay(reactor, workdir, lab, sink_port=lab.sink.port, proxy=dead)
    try:
        await relay.wait_mark("listening")
        await relay.wait_mark("unplumbed")
        idle.append(rss_kib(relay.pid))
        base, cpu_before = lab.sink.count, relay.cpu()
        started = time.monotonic()
        submitted = await smtp_source(reactor, relay.listen, messages=args.messages,
                                      sessions=args.sessions, size=args.size,
                                      domain=PROXY_DOMAIN, reuse=args.submit_reuse)
        cpu = relay.cpu() - cpu_before
        delivered = lab.sink.count - base
    finally:
        await relay.stop()
    return Row("accept-only: smtp-source -> hatwist (proxy unplumbed)",
               args.messages / (submitted - started), cpu / args.messages,
               note=f"{delivered} delivered (must be 0)")


async def latency_row(reactor, lab: Lab, args, workdir: str, rate: float) -> Row:
    """Paced submissions at ``rate``/s over reused sessions to a relay whose MX is the
    recording sink; then a few bypassed ones for the source check."""
    recorder = lab.recorder
    recorder.messages.clear()
    recorder.arrived.clear()
    relay = Relay(reactor, workdir, lab, sink_port=recorder.port)
    try:
        await relay.wait_mark("listening")
        count = max(20, int(rate * args.latency_seconds))
        accepted: dict[str, float] = {}
        cpu_before = relay.cpu()
        await paced_submit(reactor, relay.listen, rate, count, PROXY_DOMAIN, "p", accepted)
        await recorder.wait_until(lambda: len(recorder.messages) >= count, ROW_DEADLINE)
        cpu = relay.cpu() - cpu_before
        await paced_submit(reactor, relay.listen, 50.0, 20, DIRECT_DOMAIN, "d", accepted)
        await recorder.wait_until(lambda: len(recorder.messages) >= count + 20, ROW_DEADLINE)
    finally:
        await relay.stop()
    arrived, peers = {}, {PROXY_DOMAIN: set(), DIRECT_DOMAIN: set()}
    for message, when in zip(recorder.messages, recorder.arrived, strict=True):
        label = re.search(rb"Subject: bench (\S+)", message.data).group(1).decode()
        arrived[label] = when
        peers[message.rcpt_tos[0].split("@")[1]].add(message.peer[0])
    latencies = sorted(arrived[k] - accepted[k] for k in accepted if k.startswith("p"))
    ok = peers == {PROXY_DOMAIN: {PROXY_SOURCE}, DIRECT_DOMAIN: {BYPASS_BIND}}
    return Row(f"latency at {rate:.0f} msg/s (paced), recording sink",
               count / (arrived[f"p{count - 1}"] - min(accepted.values())), cpu / count,
               statistics.median(latencies) * 1e3,
               latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1e3,
               note=f"source check {'ok' if ok else 'BAD'}: proxied from "
                    f"{','.join(sorted(peers[PROXY_DOMAIN]))}, bypassed from "
                    f"{','.join(sorted(peers[DIRECT_DOMAIN]))}")


async def paced_submit(reactor, port: int, rate: float, count: int, domain: str, prefix: str,
                       accepted: dict[str, float]) -> None:
    """``count`` messages, one every 1/``rate`` s, each on an idle reused session (a new one
    when none is idle); ``accepted[label]`` is when its 250 came."""
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=30)
    idle: list = []
    opened: list = []
    started = time.monotonic()

    async def one(n: int) -> None:
        session = idle.pop() if idle else None
        if session is None:
            session = await open_session(
                endpoint, reactor=reactor, ehlo_hostname="submitter.bench.test",
                tls=TLSMode.NO, tls_hostname=None, trust_root=None, connect_timeout=30,
                command_timeout=30)
            opened.append(session)
        label = f"{prefix}{n}"
        [result] = await session.send(Envelope(SENDER, (f"{label}@{domain}",)),
                                      body(2048, label))
        if result.kind != "delivered":
            raise BenchError(f"relay answered {result}")
        accepted[label] = time.monotonic()
        idle.append(session)

    running = []
    for n in range(count):
        delay = started + n / rate - time.monotonic()
        if delay > 0:
            await task.deferLater(reactor, delay)
        running.append(defer.ensureDeferred(one(n)))
    await defer.gatherResults(running, consumeErrors=True)
    for session in opened:
        with contextlib.suppress(Exception):
            await session.quit()


#: Twisted's Agent over plain TCP warns in readBody; nothing this script can change.
warnings.filterwarnings("ignore", "Using readBody with a transport", DeprecationWarning)


async def wait_workers_running(reactor, status_port: int, workers: int) -> None:
    """Until the supervisor's /status says every worker answered: a worker listens before
    its reactor runs, and one whose reactor is not running yet takes no connection, so a
    burst at start would all go to the first."""
    import json

    deadline = time.monotonic() + START_DEADLINE
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            document = json.loads(await http_get(reactor, status_port, "/status"))
            if sum(w["answered"] for w in document["workers"]) == workers:
                return
        await task.deferLater(reactor, 0.1)
    raise BenchError(f"not all {workers} workers answered /status in time")


async def http_get(reactor, port: int, path: str) -> bytes:
    response = await Agent(reactor).request(b"GET", f"http://127.0.0.1:{port}{path}".encode())
    return await readBody(response)


async def queued_row(reactor, lab: Lab, args, workdir: str, idle_rss: int | None) -> Row:
    spool = os.path.join(workdir, "queued")
    fill = await fill_spool(reactor, spool, args.queued, 200, PROXY_DOMAIN)
    relay = Relay(reactor, workdir, lab, sink_port=lab.sink.port,
                  proxy=f"127.0.0.1:{free_port()}", spool=spool)
    try:
        while True:  # start to the first /status answer
            try:
                await http_get(reactor, relay.status, "/status")
                break
            except Exception as e:
                if relay.child.exited or time.monotonic() - relay.started > ROW_DEADLINE:
                    raise BenchError("no /status answer; relay log:\n"
                                     + "\n".join(relay.tail)) from e
                await task.deferLater(reactor, 0.02)
        first_status = time.monotonic() - relay.started
        recovered = await relay.wait_mark("recovered", ROW_DEADLINE) - relay.started
        await task.deferLater(reactor, 1.0)
        rss = rss_kib(relay.pid)
        times = []
        for _ in range(10):
            t = time.monotonic()
            await http_get(reactor, relay.status, "/status")
            times.append(time.monotonic() - t)
    finally:
        await relay.stop()
    per = "-" if idle_rss is None else f"{(rss - idle_rss) * 1024 / args.queued:.0f} B"
    return Row(f"queued: {args.queued} messages behind an unplumbed proxy",
               note=f"RSS/msg {per} (RSS {rss / 1024:.0f} MiB); /status p50 "
                    f"{statistics.median(times) * 1e3:.0f} ms; first /status {first_status:.1f}s,"
                    f" recovered {recovered:.1f}s after start; fill {args.queued / fill:.0f}/s")


def body(size: int, label: str) -> bytes:
    """About ``size`` bytes: a few headers and 78-byte lines, CRLF line ends."""
    head = (f"From: <{SENDER}>\r\nTo: <bench@bench.test>\r\nSubject: bench {label}\r\n"
            f"Message-ID: <{label}@sender.bench.test>\r\n\r\n").encode()
    return head + (b"x" * 76 + b"\r\n") * max(1, (size - len(head)) // 78)


# -- the table --------------------------------------------------------------------------------


NAME_WIDTH = 58


def print_header() -> None:
    print(f"{'row':<{NAME_WIDTH}} {'msg/s':>6} {'vs ref':>6} {'cpu us/msg':>10} "
          f"{'p50 ms':>6} {'p99 ms':>6}  notes", flush=True)


def print_row(row: Row, ref: float | None) -> None:
    """One line of the table; ``ref`` is the first reference row's rate (the 1.00x)."""

    def num(value, fmt, width=6):
        return ("-" if value is None else format(value, fmt)).rjust(width)

    ratio = None if ref is None or row.rate is None else row.rate / ref
    print(f"{row.name:<{NAME_WIDTH}} {num(row.rate, '.0f')} {num(ratio, '.2f')} "
          f"{num(None if row.cpu is None else row.cpu * 1e6, '.0f', 10)} "
          f"{num(row.p50, '.1f')} {num(row.p99, '.1f')}  {row.note}", flush=True)


async def main(reactor, args: argparse.Namespace) -> None:
    if find_haproxy() is None or os.geteuid() != 0:
        raise SystemExit("needs root and haproxy (usesrc clientip); see bench/README.rst")
    for tool in (SMTP_SINK, SMTP_SOURCE):
        if not os.access(tool, os.X_OK):
            raise SystemExit(f"needs {tool} (Debian package postfix); see bench/README.rst")
    workdir = tempfile.mkdtemp(prefix="hatwist-bench-")
    _WORKDIRS.add(workdir)
    lab = Lab()
    rows: list[Row] = []
    try:
        await lab.start(reactor, workdir)
        print(f"load average at start {load_average()}", flush=True)
        print(f"{args.messages} messages of {args.size} B, {args.sessions} smtp-source sessions; "
              f"spool under {tempfile.gettempdir()}; hatwist submission "
              f"{'reusing connections (-d)' if args.submit_reuse else 'one message per connection'}"
              f"\n", flush=True)
        print_header()

        reference: list[float] = []

        def add(row: Row) -> None:
            rows.append(row)
            print_row(row, reference[0] if reference else None)

        wanted = set(args.rows.split(","))
        if "ref" in wanted:
            row = await reference_row(reactor, lab, args, reuse=False)
            reference.append(row.rate)
            add(row)
        if "reuse" in wanted:
            add(await reference_row(reactor, lab, args, reuse=True))
        proxied = None
        if "proxied" in wanted:
            profile = None
            if args.py_spy is not None:
                os.makedirs(args.py_spy, exist_ok=True)
                profile = os.path.join(args.py_spy, "proxied.txt")
            proxied = await relay_row(reactor, lab, args, workdir, domain=PROXY_DOMAIN,
                                      name="hatwist proxied: smtp-source -> hatwist -> HAProxy",
                                      profile=profile)
            add(proxied)
        if "bypassed" in wanted:
            add(await relay_row(reactor, lab, args, workdir, domain=DIRECT_DOMAIN,
                                name="hatwist bypassed: smtp-source -> hatwist -> sink"))
        if "delivery" in wanted:
            add(await delivery_only_row(reactor, lab, args, workdir))
        if "workers" in wanted:
            # The same load on one and on two worker processes, twice in turn (the box's
            # other load drifts: the second pair shows by how much).
            plan = [(1, ROOT), (2, ROOT)]
            if args.baseline_tree is not None:
                plan.append((2, Path(args.baseline_tree).resolve()))
            pairs: list[list[Row]] = []
            for turn in range(args.workers_pairs):
                pairs.append([])
                for count, root in plan:
                    profile = None
                    if args.py_spy is not None:
                        os.makedirs(args.py_spy, exist_ok=True)
                        profile = os.path.join(
                            args.py_spy, f"workers-{count}-{turn}{'-base' * (root != ROOT)}.txt")
                    label = f"hatwist proxied, workers = {count}" + (
                        f" ({root.name})" if root != ROOT else "") + (
                        "" if not turn else " again" if turn == 1 else f" again ({turn + 1})")
                    row = await relay_row(
                        reactor, lab, args, workdir, domain=PROXY_DOMAIN, workers=count,
                        name=label, root=root, costs=True, profile=profile,
                        extra=f"workers = {count}\nmax_connections = "
                              f"{args.workers_connections}\n")
                    add(row)
                    pairs[-1].append(row)
            print_workers_summary(pairs)
        idle: list[int] = []
        if "accept" in wanted or "queued" in wanted:
            accept = await accept_only_row(reactor, lab, args, workdir, idle)
            if "accept" in wanted:
                add(accept)
        if "latency" in wanted:
            rate = args.latency_rate or (proxied.rate / 2 if proxied else None)
            if rate is None:
                raise SystemExit("the latency row needs the proxied row or --latency-rate")
            add(await latency_row(reactor, lab, args, workdir, rate))
        if "queued" in wanted and args.queued:
            add(await queued_row(reactor, lab, args, workdir, idle[0] if idle else None))
        if "ref" in wanted:
            # The box's other load drifts during a run: the reference again shows how much.
            row = await reference_row(reactor, lab, args, reuse=False)
            row.name, row.note = row.name.replace("reference:", "reference again:"), (
                "one message per connection, at the end: the drift of this run")
            add(row)
    finally:
        await lab.stop(reactor)
        shutil.rmtree(workdir, ignore_errors=True)
        _WORKDIRS.discard(workdir)


ROWS = "ref,reuse,proxied,bypassed,delivery,workers,accept,latency,queued"


def _parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--messages", type=int, default=5000, help="messages per rate row")
    parser.add_argument("--size", type=int, default=5120, help="message size (bytes)")
    parser.add_argument("--sessions", type=int, default=20, help="smtp-source -s")
    parser.add_argument("--submit-reuse", action="store_true",
                        help="hatwist rows submit with smtp-source -d (reusing connections)")
    parser.add_argument("--queued", type=int, default=1_000_000,
                        help="messages queued for the RSS and recovery row (0: skip it)")
    parser.add_argument("--latency-seconds", type=float, default=10.0,
                        help="length of the paced latency run")
    parser.add_argument("--rows", default=ROWS,
                        help=f"comma-separated rows to run (default: {ROWS}); the ratio is "
                             "to 'ref', so keep it when comparing")
    parser.add_argument("--latency-rate", type=float, default=None,
                        help="pace of the latency row (default: half the proxied row's rate)")
    parser.add_argument("--workers-connections", type=int, default=40,
                        help="max_connections of the workers rows (both; divided among the "
                             "workers): at the default 10 per domain the outbound concurrency, "
                             "not the cores, bounds the rate")
    parser.add_argument("--py-spy", metavar="DIR", default=None,
                        help="record the proxied row's relay with py-spy into DIR/proxied.txt "
                             "(and each workers row into DIR/workers-N-TURN.txt)")
    parser.add_argument("--workers-pairs", type=int, default=2,
                        help="how many times the workers rows run in turn (more pairs: a "
                             "median that the box's other load moves less)")
    parser.add_argument("--perf", action="store_true",
                        help="count the workers rows' accept4/epoll_wait/syscalls/context "
                             "switches per message with perf stat (perturbs the rows a little)")
    parser.add_argument("--baseline-tree", metavar="DIR", default=None,
                        help="also run the workers = 2 row from the checkout in DIR (e.g. "
                             "git archive of an older commit) after each pair, in the same run")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = _parse()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, arguments)))
