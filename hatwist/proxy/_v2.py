# -*- test-case-name: tests.proxy.test_v2 -*-
"""
The binary v2 layout (HAProxy's doc/proxy-protocol.txt, section 2.2).

C{encode_v2} lays out a L{ProxyHeader}; C{read_fixed} and C{decode_v2} read one
back in two steps, so that an incremental parser can refuse a bad signature,
version, command, family or absurd length from the first 16 bytes, before
waiting for a body that may never come.
"""

from __future__ import annotations

import ipaddress

import attrs
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from ._crc32c import crc32c
from ._errors import (
    AddressBlockTooShortError,
    HeaderTooLongError,
    InvalidChecksumError,
    InvalidSignatureError,
    InvalidTLVError,
    UnsupportedCommandError,
    UnsupportedFamilyError,
    UnsupportedVersionError,
)
from ._tlv import TLV_HEADER_LENGTH, decode_tlvs, encode_tlvs
from ._values import (
    CRC32C_LENGTH,
    TLV,
    UNIX_PATH_LENGTH,
    Address,
    Command,
    ProxyHeader,
    TLVType,
)

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
FIXED_LENGTH = 16
"""Signature, version|command, family|transport, 16-bit length."""
VERSION = 2
MAX_LENGTH = 0xFFFF
"""The largest length the 16-bit field can declare."""

FAMILY_UNSPEC = 0x00
FAMILY_TCP4 = 0x11
FAMILY_TCP6 = 0x21
FAMILY_UNIX_STREAM = 0x31
ADDRESS_BLOCK_LENGTHS = {
    FAMILY_UNSPEC: 0,
    FAMILY_TCP4: 4 + 4 + 2 + 2,
    FAMILY_TCP6: 16 + 16 + 2 + 2,
    FAMILY_UNIX_STREAM: UNIX_PATH_LENGTH * 2,
}
_FAMILY_NAMES = {
    FAMILY_UNSPEC: "UNSPEC",
    FAMILY_TCP4: "TCP over IPv4",
    FAMILY_TCP6: "TCP over IPv6",
    FAMILY_UNIX_STREAM: "UNIX stream",
}


@attrs.frozen
class Fixed:
    """What the first 16 bytes of a v2 header say."""

    command: Command
    family: int
    length: int
    """Bytes that follow the fixed part (addresses and TLVs)."""


def _family_of(address: Address | None) -> int:
    if address is None:
        return FAMILY_UNSPEC
    if isinstance(address, UNIXAddress):
        return FAMILY_UNIX_STREAM
    return FAMILY_TCP6 if isinstance(address, IPv6Address) else FAMILY_TCP4


def _pack_ip(address: IPv4Address | IPv6Address) -> bytes:
    return ipaddress.ip_address(address.host).packed


def _address_block(header: ProxyHeader) -> bytes:
    source, destination = header.source, header.destination
    if source is None or destination is None:
        return b""
    if isinstance(source, UNIXAddress) and isinstance(destination, UNIXAddress):
        return source.name.ljust(UNIX_PATH_LENGTH, b"\0") + destination.name.ljust(
            UNIX_PATH_LENGTH, b"\0"
        )
    return (
        _pack_ip(source)
        + _pack_ip(destination)
        + source.port.to_bytes(2, "big")
        + destination.port.to_bytes(2, "big")
    )


def encode_v2(header: ProxyHeader, crc32c_tlv: bool = False) -> bytes:
    """
    Lay out C{header} as v2 bytes.

    @param crc32c_tlv: fill in a CRC32C TLV over the whole header as sent: the
        header's own CRC32C TLV if it has one (in place), else a new one put
        first, as HAProxy does.
    @raise HeaderTooLongError: if addresses and TLVs exceed the 16-bit length.
    """
    tlvs = list(header.tlvs)
    crc_index = next((i for i, tlv in enumerate(tlvs) if tlv.type == TLVType.CRC32C), None)
    if crc32c_tlv:
        if crc_index is None:
            crc_index = 0
            tlvs.insert(0, TLV(TLVType.CRC32C, bytes(CRC32C_LENGTH)))
        else:
            tlvs[crc_index] = TLV(TLVType.CRC32C, bytes(CRC32C_LENGTH))
    addresses = b"" if header.command == Command.LOCAL else _address_block(header)
    body = addresses + encode_tlvs(tlvs)
    if len(body) > MAX_LENGTH:
        raise HeaderTooLongError(
            f"addresses and TLVs take {len(body)} bytes; a v2 header holds at most {MAX_LENGTH}"
        )
    family = FAMILY_UNSPEC if header.command == Command.LOCAL else _family_of(header.source)
    data = (
        SIGNATURE
        + bytes((VERSION << 4 | header.command, family))
        + len(body).to_bytes(2, "big")
        + body
    )
    if not crc32c_tlv:
        return data
    assert crc_index is not None
    offset = FIXED_LENGTH + len(addresses) + TLV_HEADER_LENGTH
    offset += sum(TLV_HEADER_LENGTH + len(tlv.value) for tlv in tlvs[:crc_index])
    checksum = crc32c(data).to_bytes(CRC32C_LENGTH, "big")
    return data[:offset] + checksum + data[offset + CRC32C_LENGTH :]


def read_fixed(fixed: bytes, max_length: int = MAX_LENGTH) -> Fixed:
    """
    Read and check the 16-byte fixed part of a v2 header.

    @param max_length: refuse a declared length above this.
    @raise ProxyProtocolError: the subclass naming what is wrong.
    """
    if fixed[:12] != SIGNATURE:
        raise InvalidSignatureError(f"bytes {fixed[:12]!r} are not the v2 signature")
    version, command = fixed[12] >> 4, fixed[12] & 0x0F
    family, length = fixed[13], int.from_bytes(fixed[14:16], "big")
    if version != VERSION:
        raise UnsupportedVersionError(
            f"version|command byte 0x{fixed[12]:02X} says version {version}; only 2 exists"
        )
    if command not in tuple(Command):
        raise UnsupportedCommandError(
            f"version|command byte 0x{fixed[12]:02X} says command {command}; "
            "only LOCAL (0) and PROXY (1) exist"
        )
    if length > max_length:
        raise HeaderTooLongError(
            f"header declares {length} bytes after the fixed part; this parser accepts "
            f"at most {max_length}"
        )
    if command == Command.PROXY:
        if family not in ADDRESS_BLOCK_LENGTHS:
            raise UnsupportedFamilyError(
                f"family|transport byte 0x{family:02X} is not UNSPEC (0x00) or STREAM over "
                "IPv4 (0x11), IPv6 (0x21) or UNIX (0x31)"
            )
        needed = ADDRESS_BLOCK_LENGTHS[family]
        if length < needed:
            raise AddressBlockTooShortError(
                f"header declares {length} bytes after the fixed part, but a "
                f"{_FAMILY_NAMES[family]} address block alone takes {needed}"
            )
    return Fixed(Command(command), family, length)


def _unpack_addresses(family: int, block: bytes) -> tuple[Address, Address] | tuple[None, None]:
    if family == FAMILY_UNSPEC:
        return None, None
    if family == FAMILY_UNIX_STREAM:
        return (
            UNIXAddress(block[:UNIX_PATH_LENGTH].rstrip(b"\0")),
            UNIXAddress(block[UNIX_PATH_LENGTH:].rstrip(b"\0")),
        )
    size = 4 if family == FAMILY_TCP4 else 16
    kind = IPv4Address if family == FAMILY_TCP4 else IPv6Address
    source = str(ipaddress.ip_address(block[:size]))
    destination = str(ipaddress.ip_address(block[size : 2 * size]))
    ports = block[2 * size :]
    return (
        kind("TCP", source, int.from_bytes(ports[:2], "big")),
        kind("TCP", destination, int.from_bytes(ports[2:4], "big")),
    )


def decode_v2(data: bytes, max_length: int = MAX_LENGTH) -> ProxyHeader:
    """
    Read a whole v2 header: exactly C{16 + declared length} bytes.

    A LOCAL header's body is skipped unread (the receiver must ignore it).
    A CRC32C TLV, if present, is verified.

    @raise ProxyProtocolError: the subclass naming what is wrong.
    """
    fixed = read_fixed(data[:FIXED_LENGTH], max_length)
    assert len(data) == FIXED_LENGTH + fixed.length
    if fixed.command == Command.LOCAL:
        return ProxyHeader(Command.LOCAL, None, None)
    block_end = FIXED_LENGTH + ADDRESS_BLOCK_LENGTHS[fixed.family]
    source, destination = _unpack_addresses(fixed.family, data[FIXED_LENGTH:block_end])
    located = decode_tlvs(data[block_end:], block_end)
    crcs = [(offset, tlv) for offset, tlv in located if tlv.type == TLVType.CRC32C]
    if len(crcs) > 1:
        raise InvalidTLVError(
            f"header carries {len(crcs)} CRC32C TLVs (at offsets "
            f"{', '.join(str(offset - TLV_HEADER_LENGTH) for offset, _ in crcs)}); at most one"
        )
    if crcs:
        offset, tlv = crcs[0]
        zeroed = data[:offset] + bytes(CRC32C_LENGTH) + data[offset + CRC32C_LENGTH :]
        computed = crc32c(zeroed)
        if computed != int.from_bytes(tlv.value, "big"):
            raise InvalidChecksumError(
                f"CRC32C TLV says 0x{tlv.value.hex().upper()} but the header's "
                f"checksum is 0x{computed:08X}"
            )
    return ProxyHeader(Command.PROXY, source, destination, tuple(tlv for _, tlv in located))

