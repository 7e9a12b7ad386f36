# -*- test-case-name: tests.proxy.test_v1 -*-
"""
The human-readable v1 line (HAProxy's doc/proxy-protocol.txt, section 2.1).

C{PROXY TCP4|TCP6 SRC DST SPORT DPORT\\r\\n}, or C{PROXY UNKNOWN\\r\\n} when the
addresses are not known; at most 107 bytes including the CRLF.
"""

from __future__ import annotations

import ipaddress

from twisted.internet.address import IPv4Address, IPv6Address

from ._errors import (
    InvalidV1HeaderError,
    MixedFamiliesError,
    UnsupportedFamilyError,
)
from ._values import MAX_PORT, Command, ProxyHeader

PREFIX = b"PROXY "
MAX_LINE_LENGTH = 107
"""The longest v1 line, CRLF included (spec section 2.1)."""
CRLF = b"\r\n"
TCP4, TCP6, UNKNOWN = b"TCP4", b"TCP6", b"UNKNOWN"
_FIELDS = 6
_MAX_PORT_DIGITS = 5


def encode_v1(header: ProxyHeader) -> bytes:
    """Lay out C{header} (version 1: PROXY over TCP4/TCP6, or UNKNOWN) as its text line."""
    source, destination = header.source, header.destination
    if source is None or destination is None:
        return PREFIX + UNKNOWN + CRLF
    protocol = "TCP6" if isinstance(source, IPv6Address) else "TCP4"
    return (
        f"PROXY {protocol} {source.host} {destination.host} "
        f"{source.port} {destination.port}\r\n"
    ).encode("ascii")


def _port(field: bytes, what: str, line: bytes) -> int:
    canonical = field.isdigit() and (field == b"0" or not field.startswith(b"0"))
    if not (canonical and len(field) <= _MAX_PORT_DIGITS and int(field) <= MAX_PORT):
        raise InvalidV1HeaderError(
            f"{what} port {field!r} is not a decimal 0..{MAX_PORT} without leading zeros "
            f"in v1 line {line!r}"
        )
    return int(field)


def _ip(field: bytes, what: str, line: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        ip = ipaddress.ip_address(field.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise InvalidV1HeaderError(
            f"{what} address {field!r} is not an IP literal in v1 line {line!r}"
        ) from None
    if getattr(ip, "scope_id", None):
        raise InvalidV1HeaderError(f"{what} address {field!r} carries a scope id in {line!r}")
    return ip


def decode_v1(line: bytes) -> ProxyHeader:
    """
    Read one whole v1 line, CRLF included.

    For C{UNKNOWN} everything after it up to the CRLF is ignored, as the
    specification asks.

    @raise ProxyProtocolError: the subclass naming what is wrong.
    """
    if not line.endswith(CRLF) or b"\n" in line[:-1] or b"\r" in line[:-2]:
        raise InvalidV1HeaderError(f"v1 line {line!r} must end in CRLF and hold no other CR/LF")
    fields = line[:-2].split(b" ")
    protocol = fields[1] if len(fields) > 1 else b""
    if protocol == UNKNOWN:
        return ProxyHeader(Command.PROXY, None, None, version=1)
    if protocol not in (TCP4, TCP6):
        raise UnsupportedFamilyError(
            f"v1 protocol {protocol!r} is not TCP4, TCP6 or UNKNOWN in {line!r}"
        )
    if len(fields) != _FIELDS:
        raise InvalidV1HeaderError(
            f"v1 line {line!r} has {len(fields)} space-separated fields; "
            f"expected {_FIELDS} (PROXY, protocol, two addresses, two ports)"
        )
    source = _ip(fields[2], "source", line)
    destination = _ip(fields[3], "destination", line)
    if source.version != destination.version:
        raise MixedFamiliesError(
            f"v1 source is IPv{source.version} but destination is IPv{destination.version} "
            f"in {line!r}"
        )
    if source.version != (6 if protocol == TCP6 else 4):
        raise InvalidV1HeaderError(
            f"{protocol.decode()} line carries IPv{source.version} addresses: {line!r}"
        )
    kind = IPv6Address if protocol == TCP6 else IPv4Address
    return ProxyHeader(
        Command.PROXY,
        kind("TCP", str(source), _port(fields[4], "source", line)),
        kind("TCP", str(destination), _port(fields[5], "destination", line)),
        version=1,
    )
