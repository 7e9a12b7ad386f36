"""
End to end: ``twistd hatwist`` as a real process in front of the loopback lab (real
HAProxy, DNS, SMTP sink): submission and delivery rates, latency, memory and CPU.

Run as root (HAProxy's ``usesrc clientip`` needs it), from the checkout:
    PYTHONPATH=. python3 bench/bench_relay.py [--messages 2000] [--concurrency 10]
        [--generator auto|smtp-source|twisted] [--big 65536] [--soak 2]

Every row starts a fresh relay (``twistd -n --pidfile= hatwist --config CFG``, cwd the
checkout) with an empty spool on a real disk, submits ``--messages`` messages from
``--concurrency`` SMTP clients that each reuse one connection, and waits until the
sink has them all. The rows set the proxy route against ``ha_proxy_bypass`` (the HAProxy
hop's cost), the default session reuse against ``max_messages_per_connection = 1``, and
2 KiB against ``--big`` bodies. The load generator is Postfix's ``smtp-source`` when
installed (``auto``), else a Twisted client in this process (hatwist's own outbound
session code, pointed at the relay).

The first table (printed row by row): ``acc/s`` messages accepted per second (first
connect to the last 250 at the submitters), ``del/s`` delivered per second (first connect
until the sink holds them all), latency from the relay's ``accepted ID`` log line to its
``ID ...: 1 delivered`` line (both stamped when this process reads them from the relay's
stdout, so the reading delay cancels), outbound SMTP sessions the sink saw, whether every
message arrived from the source its route promises, and error/critical log lines.

The second table (after all rows): the relay's VmRSS before the load, VmHWM (peak) and
VmRSS after it; its CPU seconds (user+system, all threads) and per message; its reactor
(main) thread's CPU and that as a share of the delivery time (``busy``); HAProxy's and this
process's CPU; and per message: fsyncs (``perf stat`` tracepoints, ``-`` without perf),
queries to the lab's DNS server, and relay log lines. ``--soak N`` runs row 1 N more times
on one relay and prints both tables for its rounds: memory that keeps growing shows there.

Rows 1 and 2 are the same load against ``workers = 1`` and ``workers = 2`` in one run
(row 3: the direct route with two workers). With workers, the relay's figures are the
supervisor's and all workers' together (CPU and memory summed over the process tree,
fsyncs counted in every worker), ``busy`` is per reactor, and the per-domain
``max_connections`` is divided among the workers, so both rows open as many outbound
connections. ``gen s`` is smtp-source's own CPU. A spool on a real disk makes the rows
fsync-bound (the workers share one disk); ``TMPDIR=/dev/shm`` puts the spool on tmpfs
and shows what the second core buys when the disk is not the limit.

The sink and the Twisted generator share this process (and the box's two cores) with
nothing else of the relay; the relay's figures are its own processes'.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import attrs
from twisted.internet import defer, error, protocol, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.python.failure import Failure

from hatwist.config import TLSMode
from hatwist.delivery import Envelope, open_session
from hatwist.lab.dns import DNSServer
from hatwist.lab.haproxy import HAProxy, find_haproxy, free_port
from hatwist.lab.sink import SMTPSink

ROOT = Path(__file__).resolve().parents[1]
SINK_HOST = "127.0.0.20"
PROXY_SOURCE = "127.0.0.9"
BYPASS_BIND = "127.0.0.30"
PROXY_DOMAIN = "proxied.bench.test"
DIRECT_DOMAIN = "direct.bench.test"
MX_NAME = "mx.bench.test"
SENDER = "bench@sender.bench.test"
SMALL = 2048
#: Deadlines (seconds): relay start-up, relay stop after SIGTERM, one row's submission
#: and delivery (each), and the log lines that trail the sink's last message.
START_DEADLINE = 20.0
STOP_DEADLINE = 10.0
ROW_DEADLINE = 60.0
LOG_TRAIL = 5.0
SMTP_TIMEOUT = 30.0
CLK_TCK = os.sysconf("SC_CLK_TCK")

_ACCEPTED = re.compile(r"\baccepted (\S+) from ")
_DELIVERED = re.compile(r"\bmessage (\S+) binding \S+ domain \S+: 1 delivered")
_PROBLEM = re.compile(r"#(error|critical)\]|Traceback|Unhandled")

_LAUNCH = (
    "import sys; sys.argv = ['twistd', '-n', '--pidfile=', 'hatwist', '--config', {config!r}]; "
    "from twisted.scripts.twistd import run; run()"
)

#: Children started here and not yet seen to exit, and work directories not yet removed:
#: both go at exit whatever happens (Ctrl-C stops the reactor before any ``finally``).
_CHILDREN: set[int] = set()
_WORKDIRS: set[str] = set()


@atexit.register
def _clean_up_leftovers() -> None:
    for pid in list(_CHILDREN):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    for path in list(_WORKDIRS):
        shutil.rmtree(path, ignore_errors=True)


class BenchError(Exception):
    """A row could not be measured; the message says which step failed."""


@attrs.frozen
class Scenario:
    """One table row: what is sent, where, and how the relay is configured."""

    route: str  # "proxy" or "direct"
    size: int
    per_connection: int | None = None  # max_messages_per_connection; None: the default
    workers: int = 1  # the workers key: > 1 runs the supervisor and that many workers

    @property
    def domain(self) -> str:
        return PROXY_DOMAIN if self.route == "proxy" else DIRECT_DOMAIN

    @property
    def source(self) -> str:
        return PROXY_SOURCE if self.route == "proxy" else BYPASS_BIND


@attrs.frozen
class Result:
    scenario: Scenario
    generator: str
    messages: int
    concurrency: int
    submit_seconds: float
    deliver_seconds: float
    latencies: tuple[float, ...]
    rss_idle: int  # KiB
    rss_peak: int
    rss_after: int
    cpu: float
    reactor_cpu: float  # the relay's main (reactor) thread alone
    haproxy_cpu: float | None
    bench_cpu: float  # this process: sink, DNS server (and the Twisted generator)
    generator_cpu: float  # smtp-source's CPU (children reaped during the row)
    dns_queries: int
    log_lines: int
    fsyncs: int | None
    sessions: int
    sources_ok: bool
    problems: int


def config_text(*, listen: int, status: int, spool: str, dns: tuple[str, int], proxy: str,
                sink_port: int, per_connection: int | None, workers: int = 1,
                max_connections: int | None = None) -> str:
    reuse = "" if per_connection is None else f"max_messages_per_connection = {per_connection}\n"
    if max_connections is not None:
        reuse += f"max_connections = {max_connections}\n"
    # Every submitter comes from 127.0.0.1: the per-address limit (divided among the
    # workers) must not be what a row measures.
    return f"""\
workers = {workers}
max_inbound_connections_per_ip = 1000
listen = 127.0.0.1:{listen}
status_listen = 127.0.0.1:{status}
spool_dir = "{spool}"
resolver = {dns[0]}:{dns[1]}
ha_proxy_server = "{proxy}"
remote_smtp_port = {sink_port}
tls = no
ehlo_hostname = relay.bench.test
retry_interval = 5
connect_timeout = 5
smtp_timeout = 30
shutdown_grace = 2
{reuse}
ha_proxy_client {{
  health_check_mode = connect
  health_check_interval = 5
  health_check_timeout = 2
  health_check_success_threshold = 1
  health_check_failure_threshold = 3
}}
binding {{
  ha_proxy_src_addr = {PROXY_SOURCE}
}}
Domain {DIRECT_DOMAIN} {{
  ha_proxy_bypass = true
  bind_address = {BYPASS_BIND}
}}
"""


# -- processes ------------------------------------------------------------------------------


class _Child(protocol.ProcessProtocol):
    """A child process: its output lines (stamped on arrival) and its end."""

    def __init__(self, on_line=None) -> None:
        self.on_line = on_line
        self.output: list[str] = []
        self.ended: defer.Deferred[int | None] = defer.Deferred()
        self.exited = False
        self._buffers: dict[int, bytes] = {}

    def childDataReceived(self, fd: int, data: bytes) -> None:
        *lines, self._buffers[fd] = (self._buffers.get(fd, b"") + data).split(b"\n")
        now = time.monotonic()
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            self.output.append(line)
            if self.on_line is not None:
                self.on_line(line, now)

    def processEnded(self, reason) -> None:
        self.exited = True
        _CHILDREN.discard(self.transport.pid)
        self.output.extend(b.decode("utf-8", "replace") for b in self._buffers.values() if b)
        self.ended.callback(reason.value.exitCode)


def spawn(reactor, argv: list[str], *, on_line=None, cwd=None, env=None) -> _Child:
    child = _Child(on_line)
    transport = reactor.spawnProcess(child, argv[0], argv, env=env, path=cwd,
                                     childFDs={0: "w", 1: "r", 2: "r"})
    _CHILDREN.add(transport.pid)
    return child


async def stop_child(reactor, child: _Child, sig: str = "TERM") -> None:
    """Signal the child, and SIGKILL it if it has not ended within the deadline."""
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


def _observe(d: defer.Deferred) -> defer.Deferred:
    """A Deferred that fires when ``d`` does, leaving ``d``'s result alone."""
    observer: defer.Deferred = defer.Deferred()
    if d.called:
        observer.callback(None)
    else:
        d.addBoth(lambda r: (observer.callback(None), r)[1])
    return observer


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in KiB."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


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


def tree_cpu(pid: int, *, main_threads: bool = False) -> float:
    """CPU seconds of ``pid`` and its descendants (only their main threads: the reactors)."""
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(member, member if main_threads else None)
    return total


def tree_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM summed over ``pid`` and its descendants, in KiB."""
    total = {"VmRSS": 0, "VmHWM": 0}
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            for key, value in proc_status(member).items():
                total[key] += value
    return total


def children_cpu() -> float:
    """CPU of this process's children that ended and were reaped (smtp-source)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User plus system CPU time of ``pid`` (all its threads; or only thread ``tid``),
    from /proc/PID/stat."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path) as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def perf_works() -> bool:
    """Whether ``perf stat`` can count the fsync tracepoint here (root, tracefs)."""
    perf = shutil.which("perf")
    if perf is None:
        return False
    with contextlib.suppress(OSError):
        import subprocess

        done = subprocess.run([perf, "stat", "-x,", "-e", "syscalls:sys_enter_fsync", "true"],
                              capture_output=True, timeout=10)
        return done.returncode == 0 and b"not supported" not in done.stderr
    return False


# -- the relay --------------------------------------------------------------------------------


class Relay:
    """One ``twistd hatwist`` child with its log lines, and the ids it accepted/delivered."""

    def __init__(self, reactor, config_path: str, listen: int, workers: int = 1) -> None:
        self.reactor = reactor
        self.listen = listen
        self._listening = workers  # one "InboundFactory starting on" line per worker
        self.accepted: dict[str, float] = {}
        self.delivered: dict[str, float] = {}
        self.problems: list[str] = []
        self.lines = 0
        self._ready: defer.Deferred[None] = defer.Deferred()
        self._ready_line = f"starting on {listen}"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
        argv = [sys.executable, "-c", _LAUNCH.format(config=config_path)]
        self.child = spawn(reactor, argv, on_line=self._line, cwd=str(ROOT), env=env)
        self.pid = self.child.transport.pid
        self.child.ended.addCallback(self._ended)

    def _line(self, line: str, now: float) -> None:
        self.lines += 1
        if (m := _ACCEPTED.search(line)) is not None:
            self.accepted[m.group(1)] = now
        elif (m := _DELIVERED.search(line)) is not None:
            self.delivered[m.group(1)] = now
        elif _PROBLEM.search(line):
            self.problems.append(line)
        elif not self._ready.called and self._ready_line in line and "Inbound" in line:
            self._listening -= 1
            if self._listening == 0:
                self._ready.callback(None)

    def _ended(self, status):
        if not self._ready.called:
            self._ready.errback(BenchError("relay exited at start:\n" + self.tail()))
        return status

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.child.output[-n:])

    async def ready(self) -> None:
        try:
            await _observe_result(self._ready).addTimeout(START_DEADLINE, self.reactor)
        except defer.TimeoutError:
            raise BenchError("relay did not listen in time:\n" + self.tail()) from None

    def stop(self) -> defer.Deferred:
        return defer.ensureDeferred(stop_child(self.reactor, self.child))


def _observe_result(d: defer.Deferred) -> defer.Deferred:
    """A Deferred with ``d``'s outcome, leaving ``d`` itself untouched."""
    observer: defer.Deferred = defer.Deferred()

    def fire(result):
        if isinstance(result, Failure):
            observer.errback(result)
        else:
            observer.callback(result)
        return None

    d.addBoth(fire)
    return observer


class FsyncCounter:
    """``perf stat`` attached to the relay, counting fsync(2) tracepoint hits."""

    def __init__(self, reactor, pid: int, workdir: str) -> None:
        self.reactor = reactor
        self.out = os.path.join(workdir, "perf.txt")
        self.pids = process_tree(pid)  # a supervisor's workers too
        argv = [shutil.which("perf") or "perf", "stat", "-x,", "-o", self.out,
                "-e", "syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync",
                "-p", ",".join(map(str, self.pids))]
        self.child = spawn(reactor, argv)
        self.pid = pid

    async def attached(self) -> None:
        """Return once perf holds its counters for every thread of the relay (one fd per
        event and thread), so that the row's first fsync is counted."""
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline and not self.child.exited:
            with contextlib.suppress(OSError):
                threads = sum(len(os.listdir(f"/proc/{p}/task")) for p in self.pids)
                fds = os.listdir(f"/proc/{self.child.transport.pid}/fd")
                links = [os.readlink(f"/proc/{self.child.transport.pid}/fd/{fd}") for fd in fds]
                if sum("perf_event" in link for link in links) >= 2 * threads:
                    return
            await task.deferLater(self.reactor, 0.02)
        raise BenchError("perf stat did not attach to the relay:\n" + "\n".join(
            self.child.output[-5:]))

    async def count(self) -> int | None:
        await stop_child(self.reactor, self.child, "INT")
        total = 0
        with contextlib.suppress(OSError, ValueError), open(self.out) as f:
            for line in f:
                fields = line.split(",")
                if len(fields) > 2 and fields[2].startswith("syscalls:"):
                    total += int(fields[0])
            return total
        return None


# -- load generators --------------------------------------------------------------------------


def body(size: int, label: str) -> bytes:
    """A message of about ``size`` bytes: a few headers and 78-byte lines, CRLF line ends."""
    head = (f"From: <{SENDER}>\r\nTo: <bench@bench.test>\r\nSubject: bench {label}\r\n"
            f"Message-ID: <{label}@sender.bench.test>\r\n\r\n").encode()
    return head + (b"x" * 76 + b"\r\n") * max(1, (size - len(head)) // 78)


async def twisted_generator(reactor, port: int, scenario: Scenario, messages: int,
                            concurrency: int) -> None:
    """``concurrency`` sessions, each reused for its share of the messages."""
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=SMTP_TIMEOUT)
    share, extra = divmod(messages, concurrency)

    async def worker(w: int, count: int) -> None:
        session = await open_session(
            endpoint, reactor=reactor, ehlo_hostname="submitter.bench.test", tls=TLSMode.NO,
            tls_hostname=None, trust_root=None, connect_timeout=SMTP_TIMEOUT,
            command_timeout=SMTP_TIMEOUT)
        try:
            for i in range(count):
                label = f"w{w}-{i}"
                envelope = Envelope(SENDER, (f"{label}@{scenario.domain}",))
                [result] = await session.send(envelope, body(scenario.size, label))
                if result.kind != "delivered":
                    raise BenchError(f"relay answered {result}")
        finally:
            await session.quit()

    await defer.gatherResults(
        [defer.ensureDeferred(worker(w, share + (w < extra))) for w in range(concurrency)],
        consumeErrors=True)


async def smtp_source(reactor, port: int, scenario: Scenario, messages: int,
                      concurrency: int) -> None:
    """Postfix's load generator: ``-d`` keeps each of the ``-s`` sessions open."""
    headers = len(body(0, "x")) - 80
    argv = [shutil.which("smtp-source"), "-d", "-N", "-s", str(concurrency), "-m",
            str(messages), "-l", str(max(1, scenario.size - headers)), "-M",
            "submitter.bench.test", "-f", SENDER, "-t", f"r@{scenario.domain}",
            f"127.0.0.1:{port}"]
    child = spawn(reactor, argv)
    try:
        status = await _observe_result(child.ended).addTimeout(ROW_DEADLINE, reactor)
    except defer.TimeoutError:
        await stop_child(reactor, child, "KILL")
        raise BenchError("smtp-source did not finish in time") from None
    if status != 0:
        raise BenchError(f"smtp-source exited {status}: " + " | ".join(child.output[-5:]))


GENERATORS = {"smtp-source": smtp_source, "twisted": twisted_generator}


# -- one row ----------------------------------------------------------------------------------


class Lab:
    """HAProxy, DNS and the sink, shared by every row."""

    def __init__(self) -> None:
        self.haproxy: HAProxy | None = None
        self.dns: DNSServer | None = None
        self.sink: SMTPSink | None = None

    async def start(self, reactor) -> None:
        self.dns = await DNSServer.start(reactor)
        for domain in (PROXY_DOMAIN, DIRECT_DOMAIN):
            self.dns.add_mx(domain, [(10, MX_NAME)])
        self.dns.add_a(MX_NAME, SINK_HOST)
        self.sink = await SMTPSink.start(reactor, host=SINK_HOST, name=MX_NAME)
        self.haproxy = HAProxy(reactor)
        await self.haproxy.start()

    async def stop(self) -> None:
        for part in (self.haproxy, self.sink, self.dns):
            if part is not None:
                with contextlib.suppress(Exception):
                    await part.stop()


async def run_row(reactor, lab: Lab, scenario: Scenario, *, generator: str, messages: int,
                  concurrency: int, count_fsyncs: bool, soak: int = 0,
                  profile: str | None = None, max_connections: int | None = None
                  ) -> list[Result]:
    """Measure ``scenario`` on a fresh relay (``soak`` more rounds on the same relay);
    ``profile`` names a file for py-spy's collapsed stacks of the relay over the row."""
    workdir = tempfile.mkdtemp(prefix="hatwist-bench-")
    _WORKDIRS.add(workdir)
    relay = fsyncs = spy = None
    results = []
    try:
        listen = free_port()
        config_path = os.path.join(workdir, "hatwist.conf")
        with open(config_path, "w") as f:
            f.write(config_text(
                listen=listen, status=free_port(), spool=os.path.join(workdir, "spool"),
                dns=lab.dns.address, proxy=lab.haproxy.server_text, sink_port=lab.sink.port,
                per_connection=scenario.per_connection, workers=scenario.workers,
                max_connections=max_connections))
        relay = Relay(reactor, config_path, listen, scenario.workers)
        await relay.ready()
        if profile is not None:
            spy = spawn(reactor, [shutil.which("py-spy") or "py-spy", "record", "--format",
                                  "raw", "--rate", "200", "--threads", "--output", profile,
                                  "--pid", str(relay.pid)])
        for _ in range(1 + soak):
            if count_fsyncs:
                fsyncs = FsyncCounter(reactor, relay.pid, workdir)
                await fsyncs.attached()
            results.append(await _measure(reactor, lab, relay, scenario, generator, messages,
                                          concurrency, fsyncs))
    finally:
        for child in (spy, fsyncs and fsyncs.child):
            if child is not None:
                await stop_child(reactor, child, "INT")
        if relay is not None:
            await relay.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        _WORKDIRS.discard(workdir)
    return results


async def _measure(reactor, lab: Lab, relay: Relay, scenario: Scenario, generator: str,
                   messages: int, concurrency: int, fsyncs: FsyncCounter | None) -> Result:
    sink = lab.sink
    sink.messages.clear()
    sink.sessions.clear()
    relay.accepted.clear()
    relay.delivered.clear()
    rss_idle = tree_status(relay.pid)["VmRSS"]
    cpu_before = tree_cpu(relay.pid)
    reactor_before = tree_cpu(relay.pid, main_threads=True)
    bench_before = time.process_time()
    children_before = children_cpu()
    dns_before, lines_before = len(lab.dns.queries), relay.lines
    haproxy_before = cpu_seconds(lab.haproxy.pid) if scenario.route == "proxy" else None
    started = time.monotonic()
    await GENERATORS[generator](reactor, relay.listen, scenario, messages, concurrency)
    submitted = time.monotonic()
    try:
        await sink.wait_for(messages, timeout=ROW_DEADLINE)
    except defer.TimeoutError:
        raise BenchError(f"{len(sink.messages)} of {messages} messages reached the sink in "
                         f"{ROW_DEADLINE:g}s; relay log:\n{relay.tail()}") from None
    arrived = time.monotonic()
    deadline = arrived + LOG_TRAIL
    while len(relay.delivered) < messages and time.monotonic() < deadline:
        await task.deferLater(reactor, 0.05)
    memory = tree_status(relay.pid)
    cpu = tree_cpu(relay.pid) - cpu_before
    reactor_cpu = tree_cpu(relay.pid, main_threads=True) - reactor_before
    bench_cpu = time.process_time() - bench_before
    generator_cpu = children_cpu() - children_before
    haproxy_cpu = (None if haproxy_before is None
                   else cpu_seconds(lab.haproxy.pid) - haproxy_before)
    count = await fsyncs.count() if fsyncs is not None else None
    latencies = sorted(relay.delivered[i] - t for i, t in relay.accepted.items()
                       if i in relay.delivered)
    return Result(
        scenario=scenario, generator=generator, messages=messages, concurrency=concurrency,
        submit_seconds=submitted - started, deliver_seconds=arrived - started,
        latencies=tuple(latencies), rss_idle=rss_idle, rss_peak=memory["VmHWM"],
        rss_after=memory["VmRSS"], cpu=cpu, reactor_cpu=reactor_cpu, haproxy_cpu=haproxy_cpu,
        bench_cpu=bench_cpu, generator_cpu=generator_cpu,
        dns_queries=len(lab.dns.queries) - dns_before,
        log_lines=relay.lines - lines_before, fsyncs=count,
        sessions=len(sink.sessions),
        sources_ok=all(m.peer[0] == scenario.source for m in sink.messages),
        problems=len(relay.problems),
    )


# -- the table --------------------------------------------------------------------------------


def _pct(values: tuple[float, ...], q: float) -> str:
    if not values:
        return "-"
    return f"{values[min(len(values) - 1, int(q * len(values)))] * 1e3:.0f}"


def _mb(kib: int) -> str:
    return f"{kib / 1024:.0f}"


def _per(value: float | None, result: Result, scale: float = 1.0, digits: int = 1) -> str:
    return "-" if value is None else f"{value / result.messages * scale:.{digits}f}"


#: Rates and latency, printed as each row finishes.
SPEED = [
    ("#", 2, lambda n, r: str(n)),
    ("generator", 11, lambda n, r: r.generator),
    ("route", 6, lambda n, r: r.scenario.route),
    ("per-conn", 8, lambda n, r: str(r.scenario.per_connection or "50*")),
    ("workers", 7, lambda n, r: str(r.scenario.workers)),
    ("msgs", 5, lambda n, r: str(r.messages)),
    ("size", 5, lambda n, r: f"{r.scenario.size // 1024}K"),
    ("conc", 4, lambda n, r: str(r.concurrency)),
    ("acc/s", 6, lambda n, r: f"{r.messages / r.submit_seconds:.0f}"),
    ("del/s", 6, lambda n, r: f"{r.messages / r.deliver_seconds:.0f}"),
    ("p50 ms", 6, lambda n, r: _pct(r.latencies, 0.50)),
    ("p95 ms", 6, lambda n, r: _pct(r.latencies, 0.95)),
    ("p99 ms", 6, lambda n, r: _pct(r.latencies, 0.99)),
    ("out-sess", 8, lambda n, r: str(r.sessions)),
    ("src", 3, lambda n, r: "ok" if r.sources_ok else "BAD"),
    ("errs", 4, lambda n, r: str(r.problems)),
]
#: Memory and costs, printed after all rows.
COSTS = [
    ("#", 2, lambda n, r: str(n)),
    ("rss MiB", 7, lambda n, r: _mb(r.rss_idle)),
    ("peak", 5, lambda n, r: _mb(r.rss_peak)),
    ("after", 5, lambda n, r: _mb(r.rss_after)),
    ("cpu s", 6, lambda n, r: f"{r.cpu:.1f}"),
    ("ms/msg", 6, lambda n, r: _per(r.cpu, r, 1e3, 2)),
    ("reactor s", 9, lambda n, r: f"{r.reactor_cpu:.1f}"),
    ("busy", 5, lambda n, r: f"{r.reactor_cpu / r.deliver_seconds / r.scenario.workers:.0%}"),
    ("haproxy s", 9, lambda n, r: "-" if r.haproxy_cpu is None else f"{r.haproxy_cpu:.1f}"),
    ("bench s", 7, lambda n, r: f"{r.bench_cpu:.1f}"),
    ("gen s", 5, lambda n, r: f"{r.generator_cpu:.1f}"),
    ("fsync/msg", 9, lambda n, r: _per(r.fsyncs, r)),
    ("dns q/msg", 9, lambda n, r: _per(r.dns_queries, r)),
    ("log/msg", 7, lambda n, r: _per(r.log_lines, r)),
]


def header(columns) -> str:
    return " ".join(name.rjust(width) for name, width, _ in columns)


def format_row(columns, n: int, result: Result) -> str:
    return " ".join(cell(n, result).rjust(width) for _, width, cell in columns)


def print_costs(results: list[Result]) -> None:
    print("\n" + header(COSTS))
    for n, result in enumerate(results, 1):
        print(format_row(COSTS, n, result))


# -- main ------------------------------------------------------------------------------------


def scenarios(big: int) -> list[Scenario]:
    return [
        Scenario("proxy", SMALL),
        Scenario("proxy", SMALL, workers=2),  # against row 1, in the same run
        Scenario("direct", SMALL, workers=2),
        Scenario("direct", SMALL),
        Scenario("proxy", SMALL, per_connection=1),
        Scenario("proxy", big),
        Scenario("direct", big),
    ]


async def main(reactor, args: argparse.Namespace) -> None:
    if find_haproxy() is None or os.geteuid() != 0:
        raise SystemExit("needs root and haproxy (usesrc clientip); see bench/README.rst")
    generator = args.generator
    if generator == "auto":
        generator = "smtp-source" if shutil.which("smtp-source") else "twisted"
    count_fsyncs = perf_works()
    lab = Lab()
    try:
        await lab.start(reactor)
        print(f"relay: twistd hatwist (fresh process and spool per row, spool under "
              f"{tempfile.gettempdir()}); HAProxy {lab.haproxy.server_text}; sink "
              f"{SINK_HOST}:{lab.sink.port}; max_connections "
              f"{args.max_connections or '10 (default)'} per domain, divided among workers")
        print(f"generator: {generator}; each client reuses one connection; "
              f"fsyncs: {'perf stat' if count_fsyncs else 'not counted (no perf)'}")
        print("* = default max_messages_per_connection; latency = relay log 'accepted' to "
              "'delivered'; busy = reactor thread CPU / delivery time\n")
        print(header(SPEED))
        results = []
        rows = [(generator, s) for s in scenarios(args.big)]
        if generator != "twisted" and args.compare_generators:
            rows.append(("twisted", Scenario("proxy", SMALL)))
        for n, (gen, scenario) in enumerate(rows, 1):
            count = args.messages if scenario.size <= SMALL else args.big_messages
            profile = None if args.py_spy is None else os.path.join(args.py_spy, f"row{n}.txt")
            [result] = await run_row(reactor, lab, scenario, generator=gen, messages=count,
                                     concurrency=args.concurrency, count_fsyncs=count_fsyncs,
                                     profile=profile, max_connections=args.max_connections)
            results.append(result)
            print(format_row(SPEED, n, result), flush=True)
        print_costs(results)
        if args.soak:
            print(f"\nsoak: {args.soak + 1} rounds of row 1 on one relay process\n")
            print(header(SPEED))
            rounds = await run_row(reactor, lab, Scenario("proxy", SMALL), generator=generator,
                                   messages=args.messages, concurrency=args.concurrency,
                                   count_fsyncs=count_fsyncs, soak=args.soak)
            for n, result in enumerate(rounds, 1):
                print(format_row(SPEED, n, result))
            print_costs(rounds)
    finally:
        await lab.stop()


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1].strip())
    parser.add_argument("--messages", type=int, default=2000, help="messages per 2 KiB row")
    parser.add_argument("--big", type=int, default=65536, help="size of the big rows (bytes)")
    parser.add_argument("--big-messages", type=int, default=500,
                        help="messages per big row")
    parser.add_argument("--concurrency", type=int, default=10, help="concurrent submitters")
    parser.add_argument("--max-connections", type=int, default=None,
                        help="max_connections per domain (the relay's, divided among workers)")
    parser.add_argument("--generator", choices=["auto", "smtp-source", "twisted"],
                        default="auto")
    parser.add_argument("--no-compare-generators", dest="compare_generators",
                        action="store_false",
                        help="skip the extra Twisted-generator row when smtp-source runs")
    parser.add_argument("--soak", type=int, default=2,
                        help="extra rounds of the first row on one relay (memory growth)")
    parser.add_argument("--py-spy", metavar="DIR", default=None,
                        help="profile the relay of each row with py-spy into DIR/rowN.txt")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = _parse()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, arguments)))
