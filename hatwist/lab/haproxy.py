"""A real HAProxy 2.6 subprocess shaped like production (tests: tests.rig.test_rig).

The relay that hatwist talks to in production is HAProxy with ``accept-proxy`` on the
frontend and ``usesrc clientip`` on the backend (FIELD-NOTES section 3). The demo and the
tests that want to prove what a mail server sees must go through that same software, so
this module writes that config, runs ``haproxy -db`` (optionally inside a network
namespace), waits until it is really serving, and keeps its log lines for assertions.
``usesrc clientip`` needs root.

Readiness is proven, not slept for: the config also declares an admin ``stats socket`` (a
UNIX socket path, so it is reachable from outside a network namespace), and HAProxy only
answers ``show info`` on it once its poll loop runs, i.e. after every listener is bound.
The probe therefore never touches the relay port and leaves no line in :attr:`HAProxy.logs`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable

from twisted.internet import defer, error, protocol
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.interfaces import IReactorCore

HAPROXY_BINARY = "/usr/sbin/haproxy"

#: How long :meth:`HAProxy.start` waits for the admin socket to answer.
START_DEADLINE = 10.0
#: How long :meth:`HAProxy.stop` waits after SIGTERM before it sends SIGKILL.
STOP_DEADLINE = 5.0
#: Interval between readiness probes while HAProxy is starting.
PROBE_INTERVAL = 0.02

_CONFIG = """\
global
    log stdout format raw local0 info
    stats socket {admin_socket} mode 600 level admin
defaults
    mode tcp
    log global
    option tcplog
    timeout connect {connect_timeout}ms
    timeout client {client_timeout}ms
    timeout server {server_timeout}ms
frontend relay
    bind {bind} accept-proxy
    # Loop guard: a header whose destination is this listener would hairpin.
    tcp-request session reject if {{ dst_port {port} }}
    default_backend out
backend out
    # Order matters: an IPv6 pattern also matches IPv4 sources (HAProxy maps them to
    # ::ffff:a.b.c.d), while an IPv4 pattern never matches a real IPv6 source.
    use-server mx if {{ src 0.0.0.0/0 }}
    use-server mx6 if {{ src ::/0 }}
    server mx 0.0.0.0 source 0.0.0.0 usesrc clientip
    server mx6 ::: source ::: usesrc clientip
"""


#: pid -> working directory of every HAProxy started here and not yet seen to exit.
_RUNNING: dict[int, str] = {}


@atexit.register
def _kill_leftovers() -> None:
    """Never leave an HAProxy behind, even when a test forgot to stop its own."""
    for pid, workdir in list(_RUNNING.items()):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(workdir, ignore_errors=True)


class HAProxyError(Exception):
    """HAProxy could not be started, or exited while a test relied on it."""


def find_haproxy() -> str | None:
    """The HAProxy binary to run: Debian's :data:`HAPROXY_BINARY`, else ``haproxy`` on PATH."""
    if os.access(HAPROXY_BINARY, os.X_OK):
        return HAPROXY_BINARY
    return shutil.which("haproxy")


def haproxy_available() -> bool:
    """Whether an HAProxy binary is installed (see :func:`find_haproxy`)."""
    return find_haproxy() is not None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on at ``host`` right now (for configs that need a number)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class _HAProxyProcess(protocol.ProcessProtocol):
    """Collects HAProxy's output lines and reports its exit."""

    def __init__(self, on_line: Callable[[str], None]) -> None:
        self._on_line = on_line
        self._buffers: dict[int, bytes] = {1: b"", 2: b""}
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.exited = False

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        buffer = self._buffers.get(childFD, b"") + data
        *lines, self._buffers[childFD] = buffer.split(b"\n")
        for line in lines:
            self._on_line(line.decode("utf-8", "replace").rstrip("\r"))

    def processEnded(self, reason) -> None:
        for rest in self._buffers.values():
            if rest:
                self._on_line(rest.decode("utf-8", "replace"))
        self._buffers = {}
        self.exited = True
        self.ended.callback(None)


class _InfoProbe(protocol.Protocol):
    """Asks the admin socket ``show info`` and fires with the whole answer."""

    def __init__(self) -> None:
        self.answer: defer.Deferred[bytes] = defer.Deferred()
        self._data = b""

    def connectionMade(self) -> None:
        self.transport.write(b"show info\n")

    def dataReceived(self, data: bytes) -> None:
        self._data += data

    def connectionLost(self, reason) -> None:
        self.answer.callback(self._data)


class HAProxy:
    """One HAProxy relay: ``accept-proxy`` frontend, ``usesrc clientip`` backend.

    ``host`` is the loopback address the relay listens on, ``port`` a fixed port (default:
    a free one, kept across :meth:`restart`). ``netns`` names a network namespace to run
    HAProxy in (see ``tests/rig/netns.py``); the listener is then inside it too.
    ``connect_timeout`` bounds HAProxy's connect to the destination; ``client_timeout``
    and ``server_timeout`` are its idle timeouts (seconds).
    """

    def __init__(
        self,
        reactor: IReactorCore,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        netns: str | None = None,
        connect_timeout: float = 5.0,
        client_timeout: float = 60.0,
        server_timeout: float = 60.0,
    ) -> None:
        self._reactor = reactor
        self.host = host
        self.netns = netns
        if port is None:
            # Inside a fresh namespace nothing listens: any number free here will do.
            port = free_port(host if netns is None else "127.0.0.1")
        self.port = port
        self.connect_timeout = connect_timeout
        self.client_timeout = client_timeout
        self.server_timeout = server_timeout
        #: Every line HAProxy wrote (stdout log lines and stderr alerts), across restarts.
        self.logs: list[str] = []
        self._workdir: str | None = None  # exists only while HAProxy runs
        self._process: _HAProxyProcess | None = None
        self._transport = None
        self._log_waiters: list[tuple[str, defer.Deferred[str]]] = []

    @property
    def server_text(self) -> str:
        """The relay as ``host:port`` (IPv6 as ``[addr]:port``), e.g. for a config file."""
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The HAProxy process id while it runs (so callers can prove it is gone later)."""
        return self._transport.pid if self.running else None

    @property
    def running(self) -> bool:
        return self._process is not None and not self._process.exited

    @property
    def config_path(self) -> str:
        return os.path.join(self._workdir or "WORKDIR", "haproxy.cfg")

    @property
    def admin_socket(self) -> str:
        return os.path.join(self._workdir or "WORKDIR", "admin.sock")

    def config_text(self) -> str:
        """The configuration HAProxy is (or will be) started with."""
        bind = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        return _CONFIG.format(
            admin_socket=self.admin_socket,
            bind=bind,
            port=self.port,
            connect_timeout=_ms(self.connect_timeout),
            client_timeout=_ms(self.client_timeout),
            server_timeout=_ms(self.server_timeout),
        )

    def _line(self, line: str) -> None:
        self.logs.append(line)
        for waiter in list(self._log_waiters):
            needle, d = waiter
            if needle in line:
                self._log_waiters.remove(waiter)
                d.callback(line)

    def wait_for_log(self, needle: str, timeout: float = 5.0) -> defer.Deferred[str]:
        """Fire with the first log line containing ``needle`` (already seen lines count)."""
        for line in self.logs:
            if needle in line:
                return defer.succeed(line)
        d: defer.Deferred[str] = defer.Deferred()
        waiter = (needle, d)
        self._log_waiters.append(waiter)

        def forget(result):
            if waiter in self._log_waiters:
                self._log_waiters.remove(waiter)
            return result

        d.addTimeout(timeout, self._reactor)
        d.addBoth(forget)
        return d

    @defer.inlineCallbacks
    def start(self, timeout: float = START_DEADLINE):
        """Write the config, run HAProxy and fire once it serves (fails with its log)."""
        if self.running:
            raise HAProxyError("HAProxy is already running")
        self._remove_workdir()
        self._workdir = tempfile.mkdtemp(prefix="hatwist-haproxy-")
        with open(self.config_path, "w", encoding="utf-8") as f:
            f.write(self.config_text())
        argv = [find_haproxy() or HAPROXY_BINARY, "-db", "-f", self.config_path]
        if self.netns is not None:
            # ``ip netns exec`` execs the command, so signals reach HAProxy itself.
            argv = ["ip", "netns", "exec", self.netns, *argv]
        self._process = process = _HAProxyProcess(self._line)
        self._transport = transport = self._reactor.spawnProcess(
            process, argv[0], argv, env=None, childFDs={0: "w", 1: "r", 2: "r"}
        )
        pid = transport.pid
        _RUNNING[pid] = self._workdir
        process.ended.addCallback(lambda _: _RUNNING.pop(pid, None))
        deadline = self._reactor.seconds() + timeout
        endpoint = UNIXClientEndpoint(self._reactor, self.admin_socket, timeout=1)
        while True:
            if process.exited:
                self._remove_workdir()
                raise HAProxyError("HAProxy exited during start-up:\n" + "\n".join(self.logs[-20:]))
            answer = b""
            with contextlib.suppress(error.ConnectError, OSError):
                probe = yield connectProtocol(endpoint, _InfoProbe())
                try:
                    answer = yield probe.answer.addTimeout(1, self._reactor)
                except defer.TimeoutError:
                    probe.transport.abortConnection()
            if b"Name: HAProxy" in answer:
                return self
            if self._reactor.seconds() > deadline:
                yield self.stop()
                raise HAProxyError(
                    f"HAProxy did not become ready within {timeout}s:\n"
                    + "\n".join(self.logs[-20:])
                )
            yield _sleep(self._reactor, PROBE_INTERVAL)

    @defer.inlineCallbacks
    def stop(self, timeout: float = STOP_DEADLINE):
        """Stop HAProxy (SIGTERM, then SIGKILL after ``timeout``); a no-op if not running.

        Its config file and admin socket go too; :attr:`logs` stays.
        """
        process = self._process
        if process is None or process.exited:
            self._remove_workdir()
            return None
        with contextlib.suppress(error.ProcessExitedAlready):
            self._transport.signalProcess("TERM")
        waiting = process.ended
        try:
            yield _deadline(self._reactor, _observe(waiting), timeout)
        except defer.TimeoutError:
            with contextlib.suppress(error.ProcessExitedAlready):
                self._transport.signalProcess("KILL")
            yield _deadline(self._reactor, _observe(waiting), timeout)
        self._remove_workdir()
        return None

    def _remove_workdir(self) -> None:
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    @defer.inlineCallbacks
    def restart(self):
        """Stop, then start again on the same address and port."""
        yield self.stop()
        yield self.start()
        return self

    def close(self) -> defer.Deferred[None]:
        """Stop HAProxy and clean up (fixture teardown; same as :meth:`stop`)."""
        return self.stop()


def _sleep(reactor, seconds: float) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


def _observe(d: defer.Deferred) -> defer.Deferred:
    """A new Deferred that fires when ``d`` does, without consuming ``d``'s result."""
    observer: defer.Deferred = defer.Deferred()

    def fire(result):
        observer.callback(None)
        return result

    if d.called:
        observer.callback(None)
    else:
        d.addBoth(fire)
    return observer


def _deadline(reactor, d: defer.Deferred, timeout: float) -> defer.Deferred:
    return d.addTimeout(timeout, reactor)
