"""
Messages per second through hatwist.delivery's client: one reused session against one
session per message, to an in-process sink on loopback. Prints a table.

Run (installed, or from the checkout with PYTHONPATH=.):
    python3 bench/bench_client.py [--messages 2000] [--size 2048] [--parallel 1,8] [--tls]

Session reuse is the biggest single lever on outbound throughput (issue 5): a new session
costs a TCP handshake, the banner, EHLO (and with ``--tls`` a STARTTLS handshake and a
second EHLO) before the first MAIL FROM, and a QUIT after. ``--parallel`` runs that many
sessions at once, splitting the messages between them. The sink here only counts, so the
figures are the client's cost (plus the sink's line parsing), not a real MX's.
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
ENVELOPE = Envelope("bench@client.test", ("rcpt@mx.test",))
TIMEOUT = 30.0


class _CountingSink(LineReceiver):
    """Just enough ESMTP to take mail: accepts everything, counts messages."""

    def connectionMade(self):
        self.in_data = False
        self.transport.write(b"220 sink.test ESMTP\r\n")

    def lineReceived(self, line):
        if self.in_data:
            if line == b".":
                self.in_data = False
                self.factory.messages += 1
                self.transport.write(b"250 2.0.0 queued\r\n")
            return
        verb = line[:4].upper()
        if verb == b"EHLO":
            ext = b"250-STARTTLS\r\n" if self.factory.tls is not None else b""
            self.transport.write(b"250-sink.test\r\n" + ext + b"250 8BITMIME\r\n")
        elif verb == b"STAR":
            self.transport.write(b"220 go\r\n")
            self.transport.startTLS(self.factory.tls)
        elif verb == b"DATA":
            self.in_data = True
            self.transport.write(b"354 go\r\n")
        elif verb == b"QUIT":
            self.transport.write(b"221 bye\r\n")
            self.transport.loseConnection()
        else:
            self.transport.write(b"250 ok\r\n")


class _SinkFactory(protocol.Factory):
    protocol = _CountingSink

    def __init__(self, tls):
        self.tls = tls
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


async def _worker(reactor, port, count, content, reuse, tls, trust_root):
    session = None
    for _ in range(count):
        if session is None:
            session = await _open(reactor, port, tls, trust_root)
        [result] = await session.send(ENVELOPE, content)
        assert result.kind == "delivered", result
        if not reuse:
            await session.quit()
            session = None
    if session is not None:
        await session.quit()


async def _run(reactor, port, messages, parallel, content, reuse, tls, trust_root):
    share, extra = divmod(messages, parallel)
    counts = [share + (1 if i < extra else 0) for i in range(parallel)]
    started = time.perf_counter()
    await defer.gatherResults(
        [
            defer.ensureDeferred(_worker(reactor, port, n, content, reuse, tls, trust_root))
            for n in counts
            if n
        ]
    )
    return time.perf_counter() - started


async def main(reactor, args):
    content = (b"x" * 76 + b"\r\n") * max(1, args.size // 78)
    tls_modes = [False, True] if args.tls else [False]
    print(f"{args.messages} messages of {len(content)} bytes each, loopback, in-process sink")
    print(f"{'tls':<5} {'parallel':>8} {'mode':<22} {'seconds':>8} {'msg/s':>9} {'speed-up':>9}")
    for tls in tls_modes:
        server_options, trust_root = _tls_material() if tls else (None, None)
        factory = _SinkFactory(server_options)
        listener = reactor.listenTCP(0, factory, interface=HOST)
        port = listener.getHost().port
        try:
            for parallel in args.parallel:
                rates = {}
                for reuse in (False, True):
                    seconds = await _run(
                        reactor, port, args.messages, parallel, content, reuse, tls, trust_root
                    )
                    rates[reuse] = args.messages / seconds
                    mode = "one session, reused" if reuse else "one session/message"
                    gain = f"{rates[True] / rates[False]:.1f}x" if reuse else ""
                    print(
                        f"{'yes' if tls else 'no':<5} {parallel:>8} {mode:<22} "
                        f"{seconds:>8.2f} {rates[reuse]:>9.0f} {gain:>9}"
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
    return parser.parse_args()


if __name__ == "__main__":
    arguments = _parse()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, arguments)))
