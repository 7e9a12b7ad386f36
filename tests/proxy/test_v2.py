"""The v2 binary layout: known vectors, HAProxy's own bytes, and Twisted's parser."""

import ipaddress
from base64 import b64decode

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.protocols.haproxy._v2parser import V2Parser

from hatwist.proxy import (
    TLV,
    Command,
    HeaderTooLongError,
    ProxyHeader,
    TLVType,
    decode,
    encode,
)
from hatwist.proxy._crc32c import crc32c

from ._strategies import local_header, v2_proxy_headers

SIGNATURE = bytes.fromhex("0d0a0d0a000d0a515549540a")
SRC4 = IPv4Address("TCP", "192.0.2.10", 0)
DST4 = IPv4Address("TCP", "198.51.100.25", 25)

# FIELD-NOTES section 2.
PROXY_TCP4 = bytes.fromhex("0d0a0d0a000d0a515549540a 21 11 000c c000020a c6336419 0000 0019")
LOCAL = bytes.fromhex("0d0a0d0a000d0a515549540a 20 00 0000")

# Made by HAProxy (send-proxy-v2 with crc32c, unique-id and SSL TLVs), posted by
# TimWolla in aio-libs/aiosmtpd issue 174 (2021-02-04); the tail after the header
# is application data.
HAPROXY_WITH_CRC32C = b64decode(
    "DQoNCgANClFVSVQKIREAcn8AAAF/AAABsFJipQMABFT9xv8CAAlBVVRIT1JJVFkFAAlVTklRVUVf"
    "SUQgAEQBAAAAACEAB1RMU3YxLjIlAAdSU0E0MDk2JAAKUlNBLVNIQTI1NiMAG0VDREhFLVJTQS1B"
    "RVMyNTYtR0NNLVNIQTM4NFRlc3QgZGF0YSB0aGF0IGlzIG5vdCBwYXJ0IG9mIFBST1hZdjIuCg=="
)


def test_proxy_tcp4_matches_the_known_vector():
    assert encode(ProxyHeader(Command.PROXY, SRC4, DST4)) == PROXY_TCP4
    assert decode(PROXY_TCP4) == (ProxyHeader(Command.PROXY, SRC4, DST4), b"")


def test_local_matches_the_known_vector():
    assert encode(ProxyHeader(Command.LOCAL, None, None)) == LOCAL
    assert decode(LOCAL) == (ProxyHeader(Command.LOCAL, None, None), b"")


def test_proxy_tcp6_layout():
    header = ProxyHeader(
        Command.PROXY,
        IPv6Address("TCP", "2001:db8::9", 1025),
        IPv6Address("TCP", "2001:db8::20", 25),
    )
    assert encode(header) == (
        SIGNATURE
        + bytes.fromhex("21 21 0024")
        + ipaddress.IPv6Address("2001:db8::9").packed
        + ipaddress.IPv6Address("2001:db8::20").packed
        + bytes.fromhex("0401 0019")
    )


def test_unix_stream_layout_pads_names_to_108_bytes():
    header = ProxyHeader(Command.PROXY, UNIXAddress(b"/run/a"), UNIXAddress(b"/run/b"))
    assert encode(header) == (
        SIGNATURE
        + bytes.fromhex("21 31 00d8")
        + b"/run/a".ljust(108, b"\0")
        + b"/run/b".ljust(108, b"\0")
    )


def test_proxy_without_addresses_is_unspec():
    assert encode(ProxyHeader(Command.PROXY, None, None)) == SIGNATURE + bytes.fromhex(
        "21 00 0000"
    )


def test_tlvs_follow_the_addresses_in_the_order_given():
    header = ProxyHeader(
        Command.PROXY,
        SRC4,
        DST4,
        (TLV(TLVType.AUTHORITY, b"mx.example"), TLV(TLVType.ALPN, b"smtp"), TLV(0xE0, b"")),
    )
    assert encode(header) == (
        SIGNATURE
        + bytes.fromhex("21 11 0023")
        + PROXY_TCP4[16:]
        + b"\x02\x00\x0amx.example"
        + b"\x01\x00\x04smtp"
        + b"\xe0\x00\x00"
    )


def test_noop_padding_is_an_ordinary_tlv():
    header = ProxyHeader(Command.PROXY, SRC4, DST4, (TLV(TLVType.NOOP, bytes(5)),))
    data = encode(header)
    assert data[-8:] == b"\x04\x00\x05" + bytes(5)
    assert decode(data)[0] == header


def test_crc32c_comes_first_and_covers_the_header_as_sent():
    header = ProxyHeader(Command.PROXY, SRC4, DST4, (TLV(TLVType.ALPN, b"smtp"),))
    data = encode(header, crc32c=True)
    assert data[16 + 12 : 16 + 12 + 3] == b"\x03\x00\x04"
    crc_at = 16 + 12 + 3
    zeroed = data[:crc_at] + bytes(4) + data[crc_at + 4 :]
    assert data[crc_at : crc_at + 4] == crc32c(zeroed).to_bytes(4, "big")
    assert data[crc_at + 4 :] == b"\x01\x00\x04smtp"
    assert data[14:16] == (12 + 7 + 7).to_bytes(2, "big")


def test_crc32c_is_recomputed_in_place_when_the_header_has_one():
    stale = TLV(TLVType.CRC32C, b"\xde\xad\xbe\xef")
    header = ProxyHeader(Command.PROXY, SRC4, DST4, (TLV(TLVType.ALPN, b"smtp"), stale))
    data = encode(header, crc32c=True)
    parsed, _ = decode(data)
    assert [tlv.type for tlv in parsed.tlvs] == [TLVType.ALPN, TLVType.CRC32C]
    assert parsed.tlvs[1] != stale


def test_haproxy_made_header_with_crc32c_parses_and_verifies():
    header, rest = decode(HAPROXY_WITH_CRC32C)
    assert rest == b"Test data that is not part of PROXYv2.\n"
    assert header.source == IPv4Address("TCP", "127.0.0.1", 45138)
    assert header.destination == IPv4Address("TCP", "127.0.0.1", 25253)
    assert [tlv.type for tlv in header.tlvs] == [
        TLVType.CRC32C,
        TLVType.AUTHORITY,
        TLVType.UNIQUE_ID,
        TLVType.SSL,
    ]
    assert header.tlvs[0].value == b"\x54\xfd\xc6\xff"
    assert header.tlvs[1].value == b"AUTHORITY"
    assert header.tlvs[2].value == b"UNIQUE_ID"
    assert header.tlvs[3].value.endswith(b"ECDHE-RSA-AES256-GCM-SHA384")


def test_haproxy_made_header_reencodes_byte_for_byte():
    header, rest = decode(HAPROXY_WITH_CRC32C)
    original = HAPROXY_WITH_CRC32C[: -len(rest)]
    assert encode(header) == original
    assert encode(header, crc32c=True) == original


def test_local_body_is_skipped_unread():
    body = PROXY_TCP4[16:] + b"\x03\x00\x01x"  # a malformed CRC TLV, never looked at
    data = SIGNATURE + b"\x20\x11" + len(body).to_bytes(2, "big") + body + b"EHLO"
    assert decode(data) == (ProxyHeader(Command.LOCAL, None, None), b"EHLO")


def test_encode_refuses_tlvs_past_the_16_bit_length():
    tlvs = (TLV(TLVType.NOOP, bytes(65535)),)
    try:
        encode(ProxyHeader(Command.PROXY, SRC4, DST4, tlvs))
    except HeaderTooLongError as e:
        assert "65550 bytes" in str(e)
    else:
        raise AssertionError("encode() accepted a body longer than 65535 bytes")


def _twisted_view(address):
    if address is None:
        return None
    if isinstance(address, UNIXAddress):
        return ("UNIX", address.name.rstrip(b"\0"))
    return (type(address).__name__, str(ipaddress.ip_address(address.host)), address.port)


@settings(max_examples=2000, deadline=None)
@given(
    header=v2_proxy_headers | st.just(local_header),
    crc=st.booleans(),
    tail=st.binary(max_size=20),
)
def test_twisted_v2_parser_reads_what_we_encode(header, crc, tail):
    info, rest = V2Parser().feed(encode(header, crc32c=crc) + tail)
    assert rest == tail
    assert _twisted_view(info.source) == _twisted_view(header.source)
    assert _twisted_view(info.destination) == _twisted_view(header.destination)


@settings(max_examples=500, deadline=None)
@given(header=v2_proxy_headers)
def test_decode_inverts_encode(header):
    assert decode(encode(header)) == (header, b"")
    with_crc, _ = decode(encode(header, crc32c=True))
    assert with_crc.tlvs[0].type == TLVType.CRC32C
    assert with_crc.tlvs[1:] == header.tlvs
