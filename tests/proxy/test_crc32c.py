"""CRC32C against the published check value and RFC 3720 appendix B.4."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hatwist.proxy._crc32c import crc32c

# RFC 3720 B.4, with each CRC read as the little-endian word the RFC prints.
_ISCSI_READ_PDU = bytes.fromhex(
    "01c0000000000000000000000000000014000000000004000000001400000018"
    "28000000000000000200000000000000"
)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"123456789", 0xE3069283),
        (bytes(32), 0x8A9136AA),
        (b"\xff" * 32, 0x62A8AB43),
        (bytes(range(32)), 0x46DD794E),
        (bytes(range(31, -1, -1)), 0x113FDB5C),
        (_ISCSI_READ_PDU, 0xD9963A56),
        (b"", 0),
    ],
    ids=["check", "zeros", "ones", "incrementing", "decrementing", "iscsi-read", "empty"],
)
def test_known_vectors(data, expected):
    assert crc32c(data) == expected


@given(st.binary(max_size=200), st.binary(max_size=200))
def test_continues_over_pieces(first, second):
    assert crc32c(second, crc32c(first)) == crc32c(first + second)
