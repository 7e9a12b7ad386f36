"""
Messages per second through hatwist.delivery's client: one reused session against one
session per message, to an in-process sink on loopback. Prints a table.

Run (installed, or from the checkout with PYTHONPATH=.):
    python3 bench/bench_client.py [--messages 2000] [--size 2048] [--parallel 1,8] [--tls]
                                  [--latency 20] [--recipients 1]

Session reuse is the biggest single lever on outbound throughput (issue 5): a new session
costs a TCP handshake, the banner, EHLO (and with ``--tls`` a STARTTLS handshake and a
second EHLO) before the first MAIL FROM, and a QUIT after. PIPELINING (RFC 2920) is the
next: RSET, MAIL, every RCPT and DATA in one round trip instead of one each; the rows
"reused, no PIPELINING" are the sink not offering it. ``--latency`` delays every reply by
that many milliseconds, like a real MX's round trip (on bare loopback the round trip is
nearly free, so pipelining saves little there). ``--parallel`` runs that many sessions at
once, splitting the messages between them. The sink here only counts, so the figures are
the client's cost (plus the sink's line parsing), not a real MX's.
"""

from __future__ import annotations

import argparse
import time

from twisted.internet import defer, protocol, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.protocols.basic import LineReceiver

from hatwist.config import TLSMode
from hatwist.delivery import Envelope, open_session

HOST = "127.0.0.1"
TIMEOUT = 30.0

#: (label, reuse sessions, sink offers PIPELINING)
MODES = (
    ("one session/message", False, True),
    ("reused, no PIPELINING", True, False),
    ("reused, PIPELINING", True, True),
)


class _CountingSink(LineReceiver):
    """Just enough ESMTP to take mail: accepts everything, counts messages."""

    def connectionMade(self):
        self.in_data = False
        self.reply(b"220 sink.test ESMTP\r\n")

    def reply(self, data, then=None):
        """Write ``data`` after the simulated round trip (replies keep their order)."""
        if not self.factory.latency:
            self.transport.write(data)
            if then is not None:
                then()
            return

        def write():
            if self.transport.connected:
                self.transport.write(data)
                if then is not None:
                    then()

        self.factory.reactor.callLater(self.factory.latency, write)

    def lineReceived(self, line):
        if self.in_data:
            if line == b".":
                self.in_data = False
                self.factory.messages += 1
                self.reply(b"250 2.0.0 queued\r\n")
            return
        verb = line[:4].upper()
        if verb == b"EHLO":
            ext = b"250-STARTTLS\r\n" if self.factory.tls is not None else b""
            if self.factory.pipelining:
                ext += b"250-PIPELINING\r\n"
            self.reply(b"250-sink.test\r\n" + ext + b"250 8BITMIME\r\n")
        elif verb == b"STAR":
            self.pauseProducing()  # nothing may be read in plaintext after STARTTLS

            def start():
                self.transport.startTLS(self.factory.tls)
                self.resumeProducing()

            self.reply(b"220 go\r\n", start)
        elif verb == b"DATA":
            self.in_data = True
            self.reply(b"354 go\r\n")
        elif verb == b"QUIT":
            self.reply(b"221 bye\r\n", self.transport.loseConnection)
        else:
            self.reply(b"250 ok\r\n")


class _SinkFactory(protocol.Factory):
    protocol = _CountingSink

    def __init__(self, reactor, tls, latency):
        self.reactor = reactor
        self.tls = tls
        self.latency = latency
        self.pipelining = True
        self.messages = 0


def _tls_material():
    """Server options and trust root from the test rig's CA (the checkout's tests/)."""
    from tests.rig.certs import shared_ca

    ca = shared_ca()
    return ca.issue("sink.test").server_options(), ca.trust_root()


async def _open(reactor, port, tls, trust_root):
    return await open_session(
        TCP4ClientEndpoint(reactor, HOST, port),
        reactor=reactor,
        ehlo_hostname="bench.hatwist.test",
        tls=TLSMode.REQUIRED if tls else TLSMode.NO,
        tls_hostname="sink.test",
        trust_root=trust_root,
        connect_timeout=TIMEOUT,
        command_timeout=TIMEOUT,
    )


async def _worker(reactor, port, count, envelope, content, reuse, tls, trust_root):
    session = None
    for _ in range(count):
        if session is None:
            session = await _open(reactor, port, tls, trust_root)
        results = await session.send(envelope, content)
        assert all(r.kind == "delivered" for r in results), results
        if not reuse:
            await session.quit()
            session = None
    if session is not None:
        await session.quit()


async def _run(reactor, port, messages, parallel, envelope, content, reuse, tls, trust_root):
    share, extra = divmod(messages, parallel)
    counts = [share + (1 if i < extra else 0) for i in range(parallel)]
    started = time.perf_counter()
    await defer.gatherResults(
        [
            defer.ensureDeferred(
                _worker(reactor, port, n, envelope, content, reuse, tls, trust_root)
            )
            for n in counts
            if n
        ]
    )
    return time.perf_counter() - started


async def main(reactor, args):
    content = (b"x" * 76 + b"\r\n") * max(1, args.size // 78)
    envelope = Envelope("bench@client.test", [f"r{n}@mx.test" for n in range(args.recipients)])
    tls_modes = [False, True] if args.tls else [False]
    print(
        f"{args.messages} messages of {len(content)} bytes, {args.recipients} recipient(s) "
        f"each, loopback, in-process sink, {args.latency:g} ms reply latency"
    )
    print(f"{'tls':<5} {'parallel':>8} {'mode':<22} {'seconds':>8} {'msg/s':>9} {'speed-up':>9}")
    for tls in tls_modes:
        server_options, trust_root = _tls_material() if tls else (None, None)
        factory = _SinkFactory(reactor, server_options, args.latency / 1000)
        listener = reactor.listenTCP(0, factory, interface=HOST)
        port = listener.getHost().port
        try:
            for parallel in args.parallel:
                first = 0.0
                for mode, reuse, pipelining in MODES:
                    factory.pipelining = pipelining
                    seconds = await _run(
                        reactor, port, args.messages, parallel, envelope, content, reuse, tls,
                        trust_root,
                    )  # fmt: skip
                    rate = args.messages / seconds
                    gain = f"{rate / first:.1f}x" if first else ""
                    first = first or rate
                    print(
                        f"{'yes' if tls else 'no':<5} {parallel:>8} {mode:<22} "
                        f"{seconds:>8.2f} {rate:>9.0f} {gain:>9}"
                    )
        finally:
            await listener.stopListening()


def _parse():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=2048, help="message size in bytes")
    parser.add_argument(
        "--parallel",
        type=lambda s: [int(p) for p in s.split(",")],
        default=[1, 8],
        help="comma-separated counts of concurrent sessions",
    )
    parser.add_argument("--tls", action="store_true", help="also measure with STARTTLS")
    parser.add_argument(
        "--latency", type=float, default=0.0, help="milliseconds before each sink reply"
    )
    parser.add_argument("--recipients", type=int, default=1, help="recipients per message")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = _parse()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, arguments)))
