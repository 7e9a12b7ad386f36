# -*- test-case-name: tests.proxy.test_crc32c -*-
"""
CRC32C (Castagnoli), the checksum of the PROXY v2 CRC32C TLV.

The standard library only has zlib's CRC32 (a different polynomial), and PROXY
headers are a few hundred bytes at most, so a small table-driven pure-Python
implementation is fast enough and adds no dependency.
"""

_POLYNOMIAL = 0x82F63B78  # Castagnoli polynomial 0x1EDC6F41, bit-reflected


def _make_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _POLYNOMIAL if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = _make_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """
    Return the CRC32C of C{data}.

    @param crc: the CRC of preceding data, to checksum a message in pieces:
        C{crc32c(b, crc32c(a)) == crc32c(a + b)}.
    """
    table = _TABLE
    crc ^= 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF
