"""
What hostile peers cost this process, with and without the bounds of issue 11 (items 1
and 6). Prints two tables.

Run (installed, or from the checkout with PYTHONPATH=.):
    python3 bench/bench_hostile.py [--sessions 20] [--stream-mb 32]

1. MX replies: ``--sessions`` outbound sessions at once, each to an in-process MX on
   loopback that answers EHLO with ``250-`` lines and never a last one (up to
   ``--stream-mb`` MB per session, so the unbounded run ends). Rows: hatwist's bounded
   reader, and the same reader with the bounds lifted (as before issue 11). Columns:
   bytes the client read, how the sessions ended, peak RSS growth of this process
   (VmHWM; the bounded row runs first, as the high-water mark only rises).
2. Status port: one chunked POST streaming ``--stream-mb`` MB at hatwist's status site,
   and at a plain twisted.web ``Site``. Columns: bytes the client got to send before the
   answer, the answer, and the temporary files twisted.web made for the body.
"""

from __future__ import annotations

import argparse
import time

from twisted.internet import defer, protocol, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Site

from hatwist.config import TLSMode
from hatwist.delivery import _protocol, open_session
from hatwist.web._limits import LimitedSite

HOST = "127.0.0.1"


def _rss_kb(field: str = "VmHWM") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class _EndlessEHLO(protocol.Protocol):
    def connectionMade(self) -> None:
        self.sent = 0
        self.factory.built.append(self)
        self.transport.write(b"220 mx.bench ready\r\n")

    def dataReceived(self, data: bytes) -> None:
        if data.startswith(b"EHLO"):
            self.transport.registerProducer(self, False)

    def resumeProducing(self) -> None:
        if self.sent >= self.factory.limit:
            return
        chunk = b"250-endless continuation line of an EHLO reply\r\n" * 1300
        self.sent += len(chunk)
        self.transport.write(chunk)

    def stopProducing(self) -> None:
        pass


async def _mx_row(reactor, sessions: int, limit: int, bounded: bool) -> list[str]:
    factory = protocol.Factory.forProtocol(_EndlessEHLO)
    factory.limit, factory.built = limit, []
    port = reactor.listenTCP(0, factory, interface=HOST)
    saved = (_protocol.MAX_REPLY_LINES, _protocol.MAX_REPLY_BYTES)
    if not bounded:
        _protocol.MAX_REPLY_LINES = _protocol.MAX_REPLY_BYTES = 10**12
    before = _rss_kb()
    started = time.perf_counter()
    clock = task.Clock()  # command deadlines never fire: only the bound ends a session
    ends: dict[str, int] = {}
    try:
        endpoint = TCP4ClientEndpoint(reactor, HOST, port.getHost().port)
        opens = [
            open_session(
                endpoint,
                reactor=clock,
                ehlo_hostname="bench.test",
                tls=TLSMode.NO,
                tls_hostname=None,
                connect_timeout=60,
                command_timeout=60,
            )
            for _ in range(sessions)
        ]
        waits = [d.addTimeout(5 + limit / 20e6, reactor) for d in opens]
        results = await defer.DeferredList(waits, consumeErrors=True)
        for ok, value in results:
            name = "opened" if ok else type(value.value).__name__
            if not ok and isinstance(value.value, defer.TimeoutError):
                name = "still reading at the deadline"
            ends[name] = ends.get(name, 0) + 1
    finally:
        _protocol.MAX_REPLY_LINES, _protocol.MAX_REPLY_BYTES = saved
        await port.stopListening()
    elapsed = time.perf_counter() - started
    sent = sum(p.sent for p in factory.built)
    return [
        "bounded (hatwist)" if bounded else "bounds lifted (before)",
        str(sessions),
        ", ".join(f"{n} {k}" for k, n in ends.items()),
        f"{(_rss_kb() - before) / 1024:.1f}",
        f"{elapsed:.2f}",
        f"{sent / 1e6:.1f}",
    ]


class _Hello(Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"hello\n"

    def render_POST(self, request):
        return b"read it all\n"


class _Poster(protocol.Protocol):
    def __init__(self, limit: int) -> None:
        self.limit, self.sent, self.answer = limit, 0, b""
        self.done: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(
            b"POST /status HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        self.transport.registerProducer(self, False)

    def resumeProducing(self) -> None:
        if self.answer:
            return
        if self.sent >= self.limit:
            self.transport.write(b"0\r\n\r\n")
            self.transport.unregisterProducer()
            return
        chunk = b"p" * 65536
        self.sent += len(chunk)
        self.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))

    def stopProducing(self) -> None:
        pass

    def dataReceived(self, data: bytes) -> None:
        self.answer += data

    def connectionLost(self, reason) -> None:
        self.done.callback(None)


async def _post_row(reactor, limit: int, limited: bool) -> list[str]:
    made = []
    real = http.tempfile.TemporaryFile

    def counting(*args, **kwargs):
        made.append(1)
        return real(*args, **kwargs)

    http.tempfile.TemporaryFile = counting
    site = (
        LimitedSite(_Hello(), max_connections=64, idle_timeout=15)
        if limited
        else Site(_Hello())
    )
    port = reactor.listenTCP(0, site, interface=HOST)
    poster = _Poster(limit)
    try:
        endpoint = TCP4ClientEndpoint(reactor, HOST, port.getHost().port)
        await connectProtocol(endpoint, poster)
        while not poster.answer and not poster.done.called:
            await task.deferLater(reactor, 0.01)
        poster.transport.loseConnection()
        await poster.done
    finally:
        http.tempfile.TemporaryFile = real
        await port.stopListening()
    status = poster.answer.split(b"\r\n", 1)[0].decode(errors="replace")
    return [
        "hatwist status site" if limited else "twisted.web Site (before)",
        f"{poster.sent / 1e6:.2f}",
        status,
        str(len(made)),
    ]


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    out = [line, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), line]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([*out, line])


async def main(reactor, args) -> None:
    limit = args.stream_mb * 1024 * 1024
    rows = [
        await _mx_row(reactor, args.sessions, limit, bounded=True),
        await _mx_row(reactor, args.sessions, limit, bounded=False),
    ]
    print(f"1. endless EHLO reply, up to {args.stream_mb} MB per session")
    print(_table(["client", "sessions", "ended", "peak RSS +MB", "seconds", "MX wrote MB"],
                 rows))  # fmt: skip
    print()
    rows = [await _post_row(reactor, limit, True), await _post_row(reactor, limit, False)]
    print(f"2. chunked POST of up to {args.stream_mb} MB to the status port")
    print(_table(["server", "MB sent before the answer", "answer", "temp files"], rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--stream-mb", type=int, default=16)
    arguments = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, arguments)))
