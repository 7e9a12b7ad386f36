# -*- test-case-name: tests.proxy.test_v2 -*-
"""
The TLV list of a v2 header: type (1 byte), length (2 bytes, big-endian), value.

Kept apart from the v2 layout because it is the one part of a header whose size
is open-ended, and the part a CRC32C has to be located in.
"""

from __future__ import annotations

from collections.abc import Iterable

from ._errors import InvalidTLVError, TruncatedHeaderError
from ._values import TLV

TLV_HEADER_LENGTH = 3


def encode_tlvs(tlvs: Iterable[TLV]) -> bytes:
    """Lay out C{tlvs} in the order given (the wire order is meaningful: HAProxy
    puts CRC32C first, and receivers must not re-sort)."""
    return b"".join(
        bytes((tlv.type,)) + len(tlv.value).to_bytes(2, "big") + tlv.value for tlv in tlvs
    )


def decode_tlvs(block: bytes, offset: int = 0) -> list[tuple[int, TLV]]:
    """
    Split C{block} (the bytes after the address block) into TLVs, in wire order.

    @param offset: where C{block} starts in the whole header, so that the
        offsets returned (of each TLV's value) and messages refer to the header.
    @return: C{(value_offset, tlv)} pairs.
    @raise TruncatedHeaderError: if a TLV runs past the end of C{block}.
    @raise InvalidTLVError: if a TLV is malformed for its type.
    """
    tlvs = []
    position = 0
    end = len(block)
    while position < end:
        if end - position < TLV_HEADER_LENGTH:
            raise TruncatedHeaderError(
                f"{end - position} byte(s) at header offset {offset + position} are too few "
                f"for a TLV (type and length need {TLV_HEADER_LENGTH})"
            )
        tlv_type = block[position]
        length = int.from_bytes(block[position + 1 : position + 3], "big")
        start = position + TLV_HEADER_LENGTH
        if start + length > end:
            raise TruncatedHeaderError(
                f"TLV type 0x{tlv_type:02X} at header offset {offset + position} declares "
                f"{length} bytes but only {end - start} remain within the declared length"
            )
        try:
            tlv = TLV(tlv_type, block[start : start + length])
        except ValueError as e:
            raise InvalidTLVError(f"TLV at header offset {offset + position}: {e}") from None
        tlvs.append((offset + start, tlv))
        position = start + length
    return tlvs
