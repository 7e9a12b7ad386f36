"""
Throughput of the PROXY protocol codec (hatwist.proxy), printed as a table.

Run (installed, or from the checkout with PYTHONPATH=.):
    python3 bench/bench_codec.py [--seconds 0.5]

Encoding happens once per proxied SMTP connection, so the figure to compare is
connections per second the relay could open; parsing matters only to test rigs
and to anyone using the parser server-side.  Twisted's own V2Parser is timed on
the same bytes as a reference point.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.protocols.haproxy._v2parser import V2Parser

from hatwist.proxy import TLV, Command, HeaderParser, ProxyHeader, TLVType, encode

TCP4 = ProxyHeader(
    Command.PROXY,
    IPv4Address("TCP", "192.0.2.10", 0),
    IPv4Address("TCP", "198.51.100.25", 25),
)
TCP6_TLVS = ProxyHeader(
    Command.PROXY,
    IPv6Address("TCP", "2001:db8::9", 0),
    IPv6Address("TCP", "2001:db8::20", 25),
    (TLV(TLVType.AUTHORITY, b"mx.example.net"), TLV(TLVType.UNIQUE_ID, bytes(32))),
)
V1 = ProxyHeader(TCP4.command, TCP4.source, TCP4.destination, version=1)


def _rate(operation: Callable[[], object], seconds: float) -> float:
    """Calls per second of C{operation}, timed in batches for at least C{seconds}."""
    batch, calls, started = 200, 0, time.perf_counter()
    while True:
        for _ in range(batch):
            operation()
        calls += batch
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return calls / elapsed


def _parse(data: bytes) -> Callable[[], object]:
    return lambda: HeaderParser().feed(data)


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    options.add_argument("--seconds", type=float, default=0.5, help="time per row")
    seconds = options.parse_args().seconds

    rows = []
    for name, header, crc in [
        ("v2 TCP4", TCP4, False),
        ("v2 TCP4 + CRC32C", TCP4, True),
        ("v2 TCP6 + 2 TLVs", TCP6_TLVS, False),
        ("v2 TCP6 + 2 TLVs + CRC32C", TCP6_TLVS, True),
        ("v1 TCP4", V1, False),
    ]:
        data = encode(header, crc32c=crc)
        rows.append(
            (
                name,
                len(data),
                _rate(lambda header=header, crc=crc: encode(header, crc32c=crc), seconds),
                _rate(_parse(data), seconds),
            )
        )
    tcp4 = encode(TCP4)
    twisted = _rate(lambda: V2Parser().feed(tcp4), seconds)

    print(f"{'header':<28} {'bytes':>5} {'encode/s':>10} {'parse/s':>10}")
    for name, size, encodes, parses in rows:
        print(f"{name:<28} {size:>5} {encodes:>10,.0f} {parses:>10,.0f}")
    print(f"{'(Twisted V2Parser, TCP4)':<28} {len(tcp4):>5} {'':>10} {twisted:>10,.0f}")


if __name__ == "__main__":
    main()
