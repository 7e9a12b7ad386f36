"""
Hostile submitters against ``twistd hatwist``: what they cost the relay in memory.

Run from the checkout (no root, no HAProxy needed; nothing is delivered):
    PYTHONPATH=. python3 bench/bench_inbound_hostile.py [--clients 4] [--megabytes 16]
        [--checkout DIR] [--set "KEY = VALUE" ...]

A fresh relay (``twistd -n --pidfile= hatwist --config CFG``, cwd ``--checkout``, by
default this one: point it at another checkout to compare code) listens on loopback with
only the keys every version knows, plus any ``--set`` lines. Each row attacks it one way
and prints the relay's VmRSS before and after, its VmHWM (peak), and what the peers got:

- ``never-read``: ``--clients`` sessions each write ``--megabytes`` MB of ``EHLO`` lines
  and never read a reply; the row ends when no client could write for 2 s (the kernel
  buffers and the relay's are full) or all was written. ``sent`` is what the kernel took.
- ``idle-outsiders``: 200 connections from 127.0.0.77 and up (outside ``relay_from``),
  held open; ``220`` is how many got a greeting, then whether a submitter inside
  ``relay_from`` still does.
- ``long-lines``: one 60 KB RCPT line in one segment, and one 1 MB line in a message; the
  replies are shown.

RSS is the relay process's own (``/proc/PID/status``), so the load generator in this
process does not count.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINE = b"EHLO hostile.example\r\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in KiB."""
    found = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0])
    return found


class Relay:
    def __init__(self, checkout: Path, directory: str, extra: list[str]) -> None:
        self.port = free_port()
        config = os.path.join(directory, "hatwist.conf")
        with open(config, "w") as f:
            f.write(f"listen = 127.0.0.1:{self.port}\n"
                    f"status_listen = 127.0.0.1:{free_port()}\n"
                    f'spool_dir = "{directory}/spool"\n'
                    f"resolver = 127.0.0.1:{free_port()}\n"  # nothing is delivered
                    'relay_from = "127.0.0.1/32"\n' + "".join(f"{line}\n" for line in extra))
        self.log = open(os.path.join(directory, "relay.log"), "w+")  # noqa: SIM115 (closed in stop)
        env = dict(os.environ, PYTHONPATH=str(checkout))
        self.process = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.argv = ['twistd', '-n', '--pidfile=', "
             f"'hatwist', '--config', {config!r}]; "
             "from twisted.scripts.twistd import run; run()"],
            cwd=checkout, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=1) as s:
                s.recv(100)
                return
            time.sleep(0.1)
        self.stop()
        raise SystemExit("the relay did not start:\n" + Path(self.log.name).read_text())

    def memory(self) -> dict[str, int]:
        return memory(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def connect(port: int, source: str = "127.0.0.1", timeout: float = 5) -> socket.socket:
    s = socket.socket()
    s.bind((source, 0))
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    return s


def never_read(relay: Relay, clients: int, megabytes: int) -> tuple[str, str]:
    total = megabytes * 1024 * 1024
    payload = LINE * (total // len(LINE))
    sockets = [connect(relay.port) for _ in range(clients)]
    sent = [0] * clients
    for s in sockets:
        s.setblocking(False)
    closed: set[int] = set()
    last_progress = time.monotonic()
    while (time.monotonic() - last_progress < 2 and len(closed) < clients
           and min(sent) < len(payload)):
        progress = False
        for i, s in enumerate(sockets):
            if i in closed:
                continue
            try:
                n = s.send(payload[sent[i]:sent[i] + 65536])
            except BlockingIOError:
                continue
            except OSError:  # the relay closed the session
                closed.add(i)
                continue
            sent[i] += n
            progress = progress or n > 0
        if progress:
            last_progress = time.monotonic()
        else:
            time.sleep(0.01)
    time.sleep(0.5)  # let the relay read what it will
    after = relay.memory()
    for s in sockets:
        s.close()
    return (f"sent {sum(sent) / 2**20:.1f} MB of {clients * len(payload) / 2**20:.0f}; "
            f"{len(closed)}/{clients} closed by the relay"), after


def idle_outsiders(relay: Relay, count: int = 200) -> tuple[str, dict[str, int]]:
    held, greeted = [], 0
    for n in range(count):
        s = connect(relay.port, f"127.0.0.{77 + n % 150}")
        with contextlib.suppress(OSError):
            greeted += s.recv(200).startswith(b"220")
        held.append(s)
    inside = connect(relay.port)
    ok = inside.recv(200).startswith(b"220")
    after = relay.memory()
    for s in [*held, inside]:
        s.close()
    return f"{greeted}/{count} got 220; inside: {'220' if ok else 'refused'}", after


def replies(s: socket.socket, count: int) -> list[str]:
    data = b""
    with contextlib.suppress(OSError):
        while data.count(b"\r\n") < count:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return [line.decode()[:40] for line in data.split(b"\r\n") if line]


def long_lines(relay: Relay) -> tuple[str, dict[str, int]]:
    s = connect(relay.port)
    s.sendall(b"EHLO me\r\nMAIL FROM:<s@example.org>\r\nRCPT TO:<" + b"x" * 60_000
              + b"@example.net>\r\n")
    first = replies(s, 4)[-1]
    s.close()
    s = connect(relay.port)
    s.sendall(b"EHLO me\r\nMAIL FROM:<s@example.org>\r\nRCPT TO:<r@example.net>\r\nDATA\r\n"
              + b"Subject: long\r\n\r\n" + b"y" * 1_000_000 + b"\r\n.\r\n")
    second = replies(s, 10)[-1]
    s.close()
    return f"60 KB RCPT: {first!r}; 1 MB line: {second!r}", relay.memory()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--megabytes", type=int, default=16)
    parser.add_argument("--checkout", type=Path, default=ROOT)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config line for the relay (repeatable)")
    options = parser.parse_args()
    rows = [("never-read", lambda r: never_read(r, options.clients, options.megabytes)),
            ("idle-outsiders", idle_outsiders),
            ("long-lines", long_lines)]
    print(f"checkout: {options.checkout}; config: {' '.join(options.set) or 'defaults'}")
    print(f"{'row':<15} {'RSS before':>10} {'RSS after':>10} {'peak':>10}  peers got")
    for name, attack in rows:
        with tempfile.TemporaryDirectory(prefix="hatwist-bench-") as directory:
            relay = Relay(options.checkout, directory, options.set)
            try:
                before = relay.memory()
                result, after = attack(relay)
            finally:
                relay.stop()
        result = " ".join(result.split())
        print(f"{name:<15} {before['VmRSS'] / 1024:>8.0f}MB {after['VmRSS'] / 1024:>8.0f}MB "
              f"{after['VmHWM'] / 1024:>8.0f}MB  {result}")


if __name__ == "__main__":
    main()
