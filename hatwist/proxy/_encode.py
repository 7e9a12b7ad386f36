# -*- test-case-name: tests.proxy.test_encode -*-
"""
The two ways to make header bytes: from a L{ProxyHeader}, or (the common case
for a relay) from a source and destination C{(ip, port)} pair.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from twisted.internet.address import IPv4Address, IPv6Address

from ._errors import MixedFamiliesError
from ._v1 import encode_v1
from ._v2 import encode_v2
from ._values import TLV, Command, ProxyHeader, checked_port


def encode(header: ProxyHeader, *, crc32c: bool = False) -> bytes:
    """
    Return the bytes of C{header}, in the version it names.

    Send them in one write: several receivers (Twisted's own among them)
    refuse a header split across segments.

    @param crc32c: (v2 only) add a CRC32C TLV over the whole header as sent,
        first among the TLVs as HAProxy does; if C{header} already has a
        CRC32C TLV, its value is recomputed in place instead.
    @raise HeaderTooLongError: if a v2 header's TLVs do not fit its length field.
    @raise ValueError: for C{crc32c=True} on a version 1 header.
    """
    if header.version == 1:
        if crc32c:
            raise ValueError("crc32c=True needs a version 2 header; v1 has no TLVs")
        return encode_v1(header)
    return encode_v2(header, crc32c)


def _ip(pair: tuple[str, int], what: str) -> IPv4Address | IPv6Address:
    try:
        literal, port = pair
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be an (ip, port) pair, not {pair!r}") from None
    if not isinstance(literal, str):
        raise ValueError(f"{what} address must be an IP literal string, not {literal!r}")
    try:
        ip = ipaddress.ip_address(literal)
    except ValueError:
        raise ValueError(f"{what} address {literal!r} is not an IP literal") from None
    kind = IPv6Address if ip.version == 6 else IPv4Address
    return kind("TCP", literal, checked_port(port, what))


def proxy_header_bytes(
    source: tuple[str, int],
    destination: tuple[str, int],
    *,
    version: int = 2,
    tlvs: Iterable[TLV] = (),
    crc32c: bool = False,
) -> bytes:
    """
    Return a PROXY header for a TCP connection from C{source} to C{destination}.

    Both are C{(ip_literal, port)}; the family (TCP4 or TCP6) follows from the
    literals.

    @raise MixedFamiliesError: if one is IPv4 and the other IPv6.
    @raise ValueError: naming the argument, for anything else that is wrong.
    """
    src = _ip(source, "source")
    dst = _ip(destination, "destination")
    if type(src) is not type(dst):
        raise MixedFamiliesError(
            f"source {src.host!r} and destination {dst.host!r} are of different "
            "families: both must be IPv4 or both IPv6"
        )
    header = ProxyHeader(Command.PROXY, src, dst, tuple(tlvs), version)
    return encode(header, crc32c=crc32c)
