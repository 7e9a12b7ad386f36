"""A real Debian redis-server for the tests, on loopback (tests: tests.shared.test_redis).

Each test starts its own on a free 127.0.0.1 port with its own directory and no
persistence (``--save '' --appendonly no``), so nothing outlives the test and no two
tests share a window.  :meth:`RedisServer.kill` is a real SIGKILL; :meth:`start` again
brings up a fresh, empty server on the same port (what an operator's restart without
persistence leaves).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from hatwist.lab.haproxy import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
START_DEADLINE = 10.0

_RUNNING: set[int] = set()


@atexit.register
def _kill_leftovers() -> None:
    for pid in list(_RUNNING):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def require_redis() -> None:
    """Skip without redis-server, except in CI (``CI`` set), where it fails."""
    if os.access(REDIS_SERVER, os.X_OK):
        return
    message = f"{REDIS_SERVER} is not installed (Debian package redis-server)"
    if os.environ.get("CI"):
        pytest.fail(message + " and CI is set: the shared limits must be proved here")
    pytest.skip(message)


class RedisServer:
    """One redis-server process; ``url`` points at it."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port("127.0.0.1")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 (the child keeps it)
        self._process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory), "--daemonize", "no"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        _RUNNING.add(self._process.pid)
        deadline = time.monotonic() + START_DEADLINE
        while not self._answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {self.log()}")
            time.sleep(0.02)
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: Redis vanishes with everything it held."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def _end(self, sig: int) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        _RUNNING.discard(process.pid)
