"""
What SMTP AUTH costs the listener: logins per second, and how long a NOOP from another
session waits while logins are being checked, for a few ``max_password_checks`` values.
Prints a table.

Run (from the checkout with PYTHONPATH=.):
    python3 bench/bench_inbound_auth.py [--logins 40] [--cost 10] [--checks 1,2,4]
    python3 bench/bench_inbound_auth.py --scheme sha512 [--rounds 5000,100000,1000000]
    python3 bench/bench_inbound_auth.py --timing [--attempts 25]

Each login is a real client session over loopback: connect, EHLO, STARTTLS, EHLO, AUTH
PLAIN (a right password), QUIT, ``--logins`` of them at once. bcrypt is CPU-heavy on
purpose (the script prints what one check costs on the machine), so it runs in threads, at most
``max_password_checks`` at once; the NOOP column shows whether the reactor thread stays
responsive meanwhile (a NOOP is answered by the reactor alone: if a check ran on it, the
NOOP would wait for whole bcrypt runs).

With ``--scheme sha512`` the user has a SHA-512-crypt hash (made by ``openssl passwd -6``,
one table per ``--rounds`` value). libpass hashes it in Python, holding the GIL, so the
NOOP column then shows what a running check costs the reactor thread even off it.

With ``--timing`` it measures what a failed login tells an attacker instead: one table,
a row per shape of the users file's hashes (bcrypt costs, SHA-512-crypt rounds), with the
median time from a wrong AUTH PLAIN to its 535 for a user in the file and for a name that
is not in it. Each is a real client over loopback and STARTTLS, ``--attempts``
sessions with one of each, with the failed-login delay set to zero (it is the
same for both and would only hide the check). The "check" columns are the medians of
``check_password`` alone, twice as many calls, for the same two. Equal columns: the
answer's timing does not say whether a user exists.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import statistics
import subprocess
import tempfile
import time

import bcrypt
from twisted.internet import defer, endpoints, protocol, task

from hatwist.inbound import InboundFactory
from hatwist.inbound._auth import LoginThrottle, ThrottleLimits, check_password, parse_users
from hatwist.inbound._tls import load_server_tls
from hatwist.lab.certs import shared_ca

PASSWORD = b"bench-password"
WRONG = b"wrong-password"
TIMING_SHAPES = [("bcrypt", 4), ("bcrypt", 10), ("bcrypt", 12), ("bcrypt", 13),
                 ("sha512", 5000), ("sha512", 100000)]
"""Shapes for --timing: cost 12 is what an unknown user cost before the dummy followed
the file (every other row then differed); 5000 rounds is SHA-512-crypt's default."""


class _Client(protocol.Protocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.waiting: tuple[int, defer.Deferred] | None = None
        self.replies = 0

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            if line[3:4] != b"-":
                self.replies += 1
        if self.waiting and self.replies >= self.waiting[0]:
            d, self.waiting = self.waiting[1], None
            d.callback(None)

    def send(self, data: bytes, replies: int) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.waiting = (self.replies + replies, d)
        self.transport.write(data)
        return d


async def _session(reactor, port: int) -> _Client:
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    client = await endpoints.connectProtocol(endpoint, _Client())
    if client.replies < 1:
        await client.send(b"", 1)
    return client


async def _login(reactor, port: int) -> None:
    client = await _session(reactor, port)
    await client.send(b"EHLO bench\r\nSTARTTLS\r\n", 2)
    client.transport.startTLS(shared_ca().client_options("relay.bench"))
    token = base64.b64encode(b"\0alice\0" + PASSWORD)
    await client.send(b"EHLO bench\r\nAUTH PLAIN " + token + b"\r\n", 2)
    client.transport.loseConnection()


async def _noops(reactor, port: int, stop: list[bool]) -> list[float]:
    client = await _session(reactor, port)
    waits = []
    while not stop[0]:
        started = time.perf_counter()
        await client.send(b"NOOP\r\n", 1)
        waits.append(time.perf_counter() - started)
        await task.deferLater(reactor, 0.005)
    client.transport.loseConnection()
    return waits


async def _row(reactor, logins: int, checks: int, users, tls) -> tuple:
    factory = InboundFactory(
        spool=None, relay_from=(), max_message_size=1000, hostname="relay.bench",
        binding_exists=lambda name: True, on_accepted=lambda m: None, reactor=reactor,
        tls=tls, users=users, max_password_checks=checks, max_sessions_unlisted=logins + 1,
        max_sessions_per_ip=logins + 1, junk_command_limit=10**6,
    )
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    number = port.getHost().port
    stop = [False]
    noops = defer.ensureDeferred(_noops(reactor, number, stop))
    started = time.perf_counter()
    await defer.gatherResults([defer.ensureDeferred(_login(reactor, number))
                               for _ in range(logins)])
    elapsed = time.perf_counter() - started
    stop[0] = True
    waits = sorted(await noops)
    await port.stopListening()
    p99 = waits[min(len(waits) - 1, int(len(waits) * 0.99))]
    return (checks, logins, f"{elapsed:.2f}", f"{logins / elapsed:.1f}",
            f"{statistics.median(waits) * 1000:.1f}", f"{p99 * 1000:.1f}")


async def _auth_timings(reactor, port: int, attempts: int) -> tuple[list[float], list[float]]:
    """Seconds from a wrong AUTH PLAIN to its answer: for alice (in the file), for zoe
    (not), interleaved so that a slower moment of the box hits both alike. A session
    takes a few failures only (then 421: too many errors), so each pair has its own."""
    known: list[float] = []
    unknown: list[float] = []
    for i in range(attempts + 1):
        client = await _session(reactor, port)
        await client.send(b"EHLO bench\r\nSTARTTLS\r\n", 2)
        client.transport.startTLS(shared_ca().client_options("relay.bench"))
        await client.send(b"EHLO bench\r\n", 1)
        pair = [(b"alice", known), (b"zoe", unknown)]
        for user, into in pair if i % 2 else pair[::-1]:
            token = base64.b64encode(b"\0" + user + b"\0" + WRONG)
            started = time.perf_counter()
            await client.send(b"AUTH PLAIN " + token + b"\r\n", 1)
            if i:  # the first pair warms up (threads, TLS buffers)
                into.append(time.perf_counter() - started)
        client.transport.loseConnection()
    return known, unknown


def _check_timings(users, attempts: int) -> tuple[float, float]:
    """Median seconds of check_password alone (no session, no thread), for a wrong
    password of alice and of zoe, interleaved: the cost without the network's noise."""
    known: list[float] = []
    unknown: list[float] = []
    for i in range(attempts * 2):
        pair = [("alice", known), ("zoe", unknown)]
        for user, into in pair if i % 2 else pair[::-1]:
            started = time.perf_counter()
            check_password(users, user, WRONG)
            into.append(time.perf_counter() - started)
    return statistics.median(known), statistics.median(unknown)


async def _timing(reactor, args, tls) -> None:
    rows = [("users' hashes", "check known ms", "check unknown ms", "known user p50 ms",
             "unknown user p50 ms", "unknown/known")]
    for scheme, cost in TIMING_SHAPES:
        if scheme == "bcrypt":
            name = f"bcrypt cost {cost}"
            hashes = [bcrypt.hashpw(PASSWORD, bcrypt.gensalt(cost)).decode()
                      for _ in range(3)]
        else:
            name = f"SHA-512-crypt rounds={cost}"
            hashes = [_openssl_sha512(cost, salt=f"benchsalt{i}benchs") for i in range(3)]
        users = parse_users("".join(f"{user}:{hashed}\n" for user, hashed
                                    in zip(("alice", "bob", "carol"), hashes, strict=True)),
                            "bench")
        alone_known, alone_unknown = _check_timings(users, args.attempts)
        factory = InboundFactory(
            spool=None, relay_from=(), max_message_size=1000, hostname="relay.bench",
            binding_exists=lambda name: True, on_accepted=lambda m: None, reactor=reactor,
            tls=tls, users=users, max_password_checks=2,
            login_throttle=LoginThrottle(ThrottleLimits(
                max_failures=10**9, base_delay=0.0, max_delay=0.0)),
            junk_command_limit=10**6,
        )
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        try:
            known, unknown = await _auth_timings(reactor, port.getHost().port, args.attempts)
        finally:
            await port.stopListening()
        k, u = statistics.median(known), statistics.median(unknown)
        rows.append((name, f"{alone_known * 1000:.1f}", f"{alone_unknown * 1000:.1f}",
                     f"{k * 1000:.1f}", f"{u * 1000:.1f}", f"{u / k:.2f}"))
    print(f"wrong password, {args.attempts} attempts each; {os.cpu_count()} CPUs")
    _print_rows(rows)


async def main(reactor, args) -> None:
    directory = tempfile.mkdtemp(prefix="bench-auth-")
    cert = shared_ca().issue("relay.bench")
    cert_path, key_path = os.path.join(directory, "c.pem"), os.path.join(directory, "k.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.cert_pem)
    with open(key_path, "wb") as f:
        f.write(cert.key_pem)
    tls = load_server_tls(cert_path, key_path)
    if args.timing:
        await _timing(reactor, args, tls)
        return
    if args.scheme == "bcrypt":
        schemes = [(f"bcrypt cost {args.cost}",
                    bcrypt.hashpw(PASSWORD, bcrypt.gensalt(args.cost)).decode())]
    else:
        schemes = [(f"SHA-512-crypt rounds={rounds}", _openssl_sha512(rounds))
                   for rounds in args.rounds]
    for name, hashed in schemes:
        users = parse_users(f"alice:{hashed}\n", "bench")
        started = time.perf_counter()
        assert check_password(users, "alice", PASSWORD)
        one = time.perf_counter() - started
        print(f"{name}: one check {one * 1000:.0f} ms; {os.cpu_count()} CPUs")
        await _table(reactor, args, users, tls)


def _openssl_sha512(rounds: int, salt: str = "benchsaltbenchsa") -> str:
    argv = [shutil.which("openssl") or "openssl", "passwd", "-6", "-stdin",
            "-salt", f"rounds={rounds}${salt}"]
    done = subprocess.run(argv, input=PASSWORD, capture_output=True, check=True, timeout=600)
    return done.stdout.decode("ascii").strip()


async def _table(reactor, args, users, tls) -> None:
    header = ("checks at once", "logins", "seconds", "logins/s", "NOOP p50 ms", "NOOP p99 ms")
    rows = [header]
    for checks in args.checks:
        rows.append(await _row(reactor, args.logins, checks, users, tls))
    _print_rows(rows)


def _print_rows(rows: list[tuple]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(v).rjust(w) for v, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logins", type=int, default=40)
    parser.add_argument("--cost", type=int, default=10)
    parser.add_argument("--scheme", choices=["bcrypt", "sha512"], default="bcrypt")
    parser.add_argument("--rounds", type=lambda t: [int(x) for x in t.split(",")],
                        default=[5000, 100000, 1000000])
    parser.add_argument("--checks", type=lambda t: [int(x) for x in t.split(",")],
                        default=[1, 2, 4])
    parser.add_argument("--timing", action="store_true",
                        help="a wrong password's answer time, known vs unknown user")
    parser.add_argument("--attempts", type=int, default=25)
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, parser.parse_args())))
