# -*- test-case-name: tests.proxy.test_values -*-
"""
What a PROXY protocol header says, independent of how it is written.

A L{ProxyHeader} is checked when it is made, so that anything that exists can be
encoded: the encoders only lay out bytes.  Addresses are Twisted's own address
values (as in L{twisted.protocols.haproxy._info.ProxyInfo}), stored in canonical
form (IPv6 compressed and lower case, UNIX names as bytes) so that a header
compares equal to the result of parsing its own encoding.
"""

from __future__ import annotations

import enum
import ipaddress

import attrs
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from ._errors import MixedFamiliesError

Address = IPv4Address | IPv6Address | UNIXAddress

MAX_PORT = 0xFFFF
MAX_TLV_LENGTH = 0xFFFF
MAX_UNIQUE_ID_LENGTH = 128
CRC32C_LENGTH = 4
UNIX_PATH_LENGTH = 108
APPLICATION_TLV_TYPES = range(0xE0, 0xF0)
"""TLV types reserved for applications (PP2_TYPE_MIN_CUSTOM..PP2_TYPE_MAX_CUSTOM)."""


class Command(enum.IntEnum):
    """The v2 command nibble; v1 headers are always PROXY."""

    LOCAL = 0
    """The connection was made by the proxy itself (e.g. a health check):
    the receiver uses the real connection endpoints."""
    PROXY = 1
    """The connection is relayed on behalf of C{source}."""


class TLVType(enum.IntEnum):
    """TLV types named by HAProxy's doc/proxy-protocol.txt."""

    ALPN = 0x01
    AUTHORITY = 0x02
    CRC32C = 0x03
    NOOP = 0x04
    UNIQUE_ID = 0x05
    SSL = 0x20
    NETNS = 0x30


def is_application_tlv(tlv_type: int) -> bool:
    """Whether C{tlv_type} is in the range reserved for applications (0xE0..0xEF)."""
    return tlv_type in APPLICATION_TLV_TYPES


def _tlv_type(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFF:
        raise ValueError(f"TLV type must be an int in 0..255, not {value!r}")
    try:
        return TLVType(value)
    except ValueError:
        return value


@attrs.frozen
class TLV:
    """
    One type-length-value extension of a v2 header, its value kept as bytes.

    Checked on construction: the value must fit the 16-bit length, a CRC32C is
    4 bytes and a UNIQUE_ID at most 128.  Known types are stored as L{TLVType}.
    """

    type: int = attrs.field(converter=_tlv_type)
    value: bytes = attrs.field(converter=bytes)

    def __attrs_post_init__(self) -> None:
        size = len(self.value)
        if size > MAX_TLV_LENGTH:
            raise ValueError(f"TLV value is {size} bytes; at most {MAX_TLV_LENGTH} fit")
        if self.type == TLVType.CRC32C and size != CRC32C_LENGTH:
            raise ValueError(f"CRC32C TLV value must be {CRC32C_LENGTH} bytes, not {size}")
        if self.type == TLVType.UNIQUE_ID and size > MAX_UNIQUE_ID_LENGTH:
            raise ValueError(
                f"UNIQUE_ID TLV value is {size} bytes; at most {MAX_UNIQUE_ID_LENGTH} allowed"
            )


def checked_port(port: object, what: str) -> int:
    """C{port} if it can be carried in a header; ValueError naming C{what} otherwise."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= MAX_PORT:
        raise ValueError(f"{what} port must be an int in 0..{MAX_PORT}, not {port!r}")
    return port


def canonical_address(value: object, what: str) -> Address | None:
    """
    Check C{value} can be carried in a header and return it in canonical form.

    @param what: which field this is (C{"source"}), to name it in errors.
    @raise ValueError: for anything a PROXY header cannot carry.
    """
    if value is None:
        return None
    if isinstance(value, UNIXAddress):
        name = value.name
        if name is None:
            raise ValueError(f"{what} UNIX address needs a name")
        if len(name) > UNIX_PATH_LENGTH:
            raise ValueError(
                f"{what} UNIX name is {len(name)} bytes; at most {UNIX_PATH_LENGTH} fit"
            )
        if name.endswith(b"\0"):
            raise ValueError(f"{what} UNIX name must not end in NUL (it is padding on the wire)")
        return UNIXAddress(name)
    if isinstance(value, IPv4Address | IPv6Address):
        if value.type != "TCP":
            raise ValueError(f"{what} must be a TCP address, not {value.type}")
        family = ipaddress.IPv4Address if isinstance(value, IPv4Address) else ipaddress.IPv6Address
        try:
            ip = family(value.host)
        except ValueError:
            raise ValueError(
                f"{what} host {value.host!r} is not an {family.__name__[:4]} literal"
            ) from None
        if getattr(ip, "scope_id", None):
            raise ValueError(f"{what} host {value.host!r} has a scope id, which cannot be sent")
        return type(value)("TCP", str(ip), checked_port(value.port, what))
    raise ValueError(
        f"{what} must be an IPv4Address, IPv6Address or UNIXAddress, not {type(value).__name__}"
    )


def _command(value: object) -> Command:
    try:
        return Command(value)
    except ValueError:
        raise ValueError(f"command must be LOCAL (0) or PROXY (1), not {value!r}") from None


def _family(address: Address) -> str:
    return type(address).__name__


@attrs.frozen
class ProxyHeader:
    """
    A PROXY protocol header: who the relayed connection is for, and where to.

    C{source} and C{destination} are both set (same family) for PROXY, or
    both C{None}: UNSPEC in v2, C{UNKNOWN} in v1.  LOCAL carries no addresses.
    Version 1 can carry only TCP over IPv4/IPv6 (or UNKNOWN), and no TLVs.

    @raise MixedFamiliesError: if C{source} and C{destination} differ in family.
    @raise ValueError: for any other value a header cannot carry.
    """

    command: Command = attrs.field(converter=_command)
    source: Address | None = attrs.field(
        converter=lambda value: canonical_address(value, "source")
    )
    destination: Address | None = attrs.field(
        converter=lambda value: canonical_address(value, "destination")
    )
    tlvs: tuple[TLV, ...] = attrs.field(default=(), converter=tuple)
    version: int = 2

    def __attrs_post_init__(self) -> None:
        if self.version not in (1, 2):
            raise ValueError(f"version must be 1 or 2, not {self.version!r}")
        for tlv in self.tlvs:
            if not isinstance(tlv, TLV):
                raise ValueError(f"tlvs must hold TLV values, not {type(tlv).__name__}")
        if sum(tlv.type == TLVType.CRC32C for tlv in self.tlvs) > 1:
            raise ValueError("a header carries at most one CRC32C TLV")
        if (self.source is None) != (self.destination is None):
            raise ValueError("source and destination must both be set, or both be None")
        if self.command == Command.LOCAL and self.source is not None:
            raise ValueError("a LOCAL header carries no addresses")
        if self.source is not None and type(self.source) is not type(self.destination):
            raise MixedFamiliesError(
                f"source is {_family(self.source)} but destination is "
                f"{_family(self.destination)}: both must be of one family"
            )
        if self.version == 1:
            if self.command != Command.PROXY:
                raise ValueError("version 1 has no LOCAL command")
            if isinstance(self.source, UNIXAddress):
                raise ValueError("version 1 carries only TCP4, TCP6 or UNKNOWN, not UNIX")
            if self.tlvs:
                raise ValueError("version 1 carries no TLVs")
