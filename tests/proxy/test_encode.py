"""proxy_header_bytes: the relay's common case, checked argument by argument."""

import pytest

from hatwist.proxy import (
    TLV,
    MixedFamiliesError,
    TLVType,
    decode,
    proxy_header_bytes,
)

V2_TCP4 = bytes.fromhex("0d0a0d0a000d0a515549540a 21 11 000c c000020a c6336419 0000 0019")


def test_ipv4_pair_gives_the_known_vector():
    assert proxy_header_bytes(("192.0.2.10", 0), ("198.51.100.25", 25)) == V2_TCP4


def test_version_1():
    assert (
        proxy_header_bytes(("192.0.2.10", 0), ("198.51.100.25", 25), version=1)
        == b"PROXY TCP4 192.0.2.10 198.51.100.25 0 25\r\n"
    )


def test_ipv6_pair_is_tcp6():
    data = proxy_header_bytes(("2001:db8::9", 0), ("2001:DB8::20", 25))
    assert data[13] == 0x21
    header, _ = decode(data)
    assert (header.source.host, header.destination.host) == ("2001:db8::9", "2001:db8::20")


def test_tlvs_and_crc32c_pass_through():
    data = proxy_header_bytes(
        ("192.0.2.10", 0),
        ("198.51.100.25", 25),
        tlvs=[TLV(TLVType.AUTHORITY, b"mx.example")],
        crc32c=True,
    )
    header, _ = decode(data)
    assert [tlv.type for tlv in header.tlvs] == [TLVType.CRC32C, TLVType.AUTHORITY]


def test_mixed_families_are_refused():
    with pytest.raises(MixedFamiliesError, match=r"'192\.0\.2\.10' and destination '2001:db8::20'"):
        proxy_header_bytes(("192.0.2.10", 0), ("2001:db8::20", 25))


@pytest.mark.parametrize(
    ("source", "destination", "match"),
    [
        (("mx.example", 0), ("198.51.100.25", 25), "source address 'mx.example'"),
        (("192.0.2.10", 0), ("198.51.100.256", 25), "destination address '198.51.100.256'"),
        (("192.0.2.10", 65536), ("198.51.100.25", 25), "source port"),
        (("192.0.2.10", 0), ("198.51.100.25", "25"), "destination port"),
        (("192.0.2.10", 0), ("198.51.100.25", True), "destination port"),
        (("192.0.2.10",), ("198.51.100.25", 25), "source must be an .ip, port. pair"),
        (("192.0.2.10", 0), "198.51.100.25:25", "destination must be an .ip, port. pair"),
        ((3221225994, 0), ("198.51.100.25", 25), "source address must be an IP literal"),
        (("[2001:db8::9]", 0), ("2001:db8::20", 25), "source address"),
    ],
)
def test_bad_arguments_are_named(source, destination, match):
    with pytest.raises(ValueError, match=match):
        proxy_header_bytes(source, destination)


def test_bad_version_is_refused():
    with pytest.raises(ValueError, match="version must be 1 or 2"):
        proxy_header_bytes(("192.0.2.10", 0), ("198.51.100.25", 25), version=3)
