"""One test per error class, each with the exact bytes (or values) that trigger it."""

import pytest
from twisted.internet.address import IPv4Address, IPv6Address

from hatwist.proxy import (
    AddressBlockTooShortError,
    Command,
    HeaderParser,
    HeaderTooLongError,
    InvalidChecksumError,
    InvalidSignatureError,
    InvalidTLVError,
    InvalidV1HeaderError,
    MixedFamiliesError,
    ProxyHeader,
    ProxyProtocolError,
    TruncatedHeaderError,
    UnsupportedCommandError,
    UnsupportedFamilyError,
    UnsupportedVersionError,
    decode,
    encode,
    proxy_header_bytes,
)

SIG = bytes.fromhex("0d0a0d0a000d0a515549540a")
ADDRS4 = bytes.fromhex("c000020a c6336419 0000 0019")  # 192.0.2.10:0 -> 198.51.100.25:25


def _refused(data, error, match):
    with pytest.raises(error, match=match) as caught:
        decode(data)
    assert isinstance(caught.value, ProxyProtocolError)
    assert isinstance(caught.value, ValueError)


def test_every_error_is_a_proxy_protocol_error_and_a_value_error():
    for error in (
        AddressBlockTooShortError,
        HeaderTooLongError,
        InvalidChecksumError,
        InvalidSignatureError,
        InvalidTLVError,
        InvalidV1HeaderError,
        MixedFamiliesError,
        TruncatedHeaderError,
        UnsupportedCommandError,
        UnsupportedFamilyError,
        UnsupportedVersionError,
    ):
        assert issubclass(error, ProxyProtocolError)
    assert issubclass(ProxyProtocolError, ValueError)


def test_invalid_signature():
    _refused(b"EHLO mx.example\r\n", InvalidSignatureError, "neither a v2 signature")
    _refused(b"\r\n\r\n\x00\r\nQUIP\n\x21\x11\x00\x0c" + ADDRS4, InvalidSignatureError, "QUIP")


def test_unsupported_version():
    _refused(SIG + b"\x11\x11\x00\x0c" + ADDRS4, UnsupportedVersionError, "version 1; only 2")
    _refused(SIG + b"\x31\x11\x00\x0c" + ADDRS4, UnsupportedVersionError, "byte 0x31")


def test_unsupported_command():
    _refused(SIG + b"\x22\x11\x00\x0c" + ADDRS4, UnsupportedCommandError, "command 2")
    _refused(SIG + b"\x2f\x00\x00\x00", UnsupportedCommandError, "command 15")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (SIG + b"\x21\x12\x00\x0c" + ADDRS4, "0x12"),  # UDP over IPv4
        (SIG + b"\x21\x10\x00\x0c" + ADDRS4, "0x10"),  # IPv4, transport UNSPEC
        (SIG + b"\x21\x41\x00\x0c" + ADDRS4, "0x41"),  # family 4 does not exist
        (SIG + b"\x21\x01\x00\x00", "0x01"),  # UNSPEC family with STREAM
        (b"PROXY UDP4 192.0.2.10 198.51.100.25 0 25\r\n", "b'UDP4'"),
    ],
    ids=["v2-udp4", "v2-no-transport", "v2-family-4", "v2-unspec-stream", "v1-udp4"],
)
def test_unsupported_family_or_transport(data, match):
    _refused(data, UnsupportedFamilyError, match)


def test_truncated_tlv():
    # declared length 16 = 12 address bytes + a TLV header saying 5 bytes + 1 byte
    _refused(
        SIG + b"\x21\x11\x00\x10" + ADDRS4 + b"\x01\x00\x05a",
        TruncatedHeaderError,
        "declares 5 bytes but only 1 remain",
    )


def test_truncated_tlv_header():
    _refused(SIG + b"\x21\x11\x00\x0e" + ADDRS4 + b"\x01\x00", TruncatedHeaderError, "too few")


def test_truncated_stream():
    parser = HeaderParser()
    parser.feed(SIG + b"\x21\x11\x00\x0c" + ADDRS4[:6])
    with pytest.raises(TruncatedHeaderError, match="after 22 bytes of a v2 header"):
        parser.finish()


def test_address_block_too_short():
    with pytest.raises(AddressBlockTooShortError, match="takes 12"):
        HeaderParser().feed(SIG + b"\x21\x11\x00\x08")  # refused before the body arrives
    _refused(SIG + b"\x21\x21\x00\x0c" + ADDRS4, AddressBlockTooShortError, "IPv6 address")
    _refused(SIG + b"\x21\x31\x00\xd7" + bytes(215), AddressBlockTooShortError, "takes 216")


def test_invalid_checksum():
    good = encode(
        ProxyHeader(
            Command.PROXY,
            IPv4Address("TCP", "192.0.2.10", 0),
            IPv4Address("TCP", "198.51.100.25", 25),
        ),
        crc32c=True,
    )
    assert decode(good)[0].tlvs
    bad = good[:27] + b"\x1a" + good[28:]  # destination port 25 -> 26
    _refused(bad, InvalidChecksumError, "CRC32C TLV says 0x")


@pytest.mark.parametrize(
    ("tlvs", "match"),
    [
        (b"\x03\x00\x03abc", "must be 4 bytes"),
        (b"\x05\x00\x81" + b"u" * 129, "at most 128"),
        (b"\x03\x00\x04" + bytes(4) + b"\x03\x00\x04" + bytes(4), "2 CRC32C TLVs"),
    ],
    ids=["short-crc32c", "long-unique-id", "two-crc32c"],
)
def test_invalid_tlv(tlvs, match):
    body = ADDRS4 + tlvs
    _refused(SIG + b"\x21\x11" + len(body).to_bytes(2, "big") + body, InvalidTLVError, match)


def test_mixed_families_on_the_wire():
    _refused(
        b"PROXY TCP4 192.0.2.10 2001:db8::20 0 25\r\n",
        MixedFamiliesError,
        "source is IPv4 but destination is IPv6",
    )


def test_mixed_families_in_values():
    with pytest.raises(MixedFamiliesError):
        ProxyHeader(
            Command.PROXY,
            IPv4Address("TCP", "192.0.2.10", 0),
            IPv6Address("TCP", "2001:db8::20", 25),
        )
    with pytest.raises(MixedFamiliesError):
        proxy_header_bytes(("2001:db8::9", 0), ("198.51.100.25", 25))


def test_header_too_long():
    with pytest.raises(HeaderTooLongError, match="1025 bytes"):
        HeaderParser().feed(SIG + b"\x21\x11\x04\x01")
    with pytest.raises(HeaderTooLongError, match="no LF within the first 107 bytes"):
        HeaderParser().feed(b"PROXY UNKNOWN " + b"x" * 93)


@pytest.mark.parametrize(
    ("line", "match"),
    [
        (b"PROXY TCP4 192.0.2.10 198.51.100.25 0\r\n", "has 5 space-separated fields"),
        (b"PROXY TCP4 192.0.2.10 198.51.100.25 0 65536\r\n", "destination port b'65536'"),
        (b"PROXY TCP4 192.0.2.10 mx.example 0 25\r\n", "b'mx.example' is not an IP"),
        (b"PROXY TCP4 2001:db8::9 2001:db8::20 0 25\r\n", "TCP4 line carries IPv6"),
        (b"PROXY UNKNOWN\n", "must end in CRLF"),
    ],
    ids=["five-fields", "port-65536", "hostname", "tcp4-with-ipv6", "bare-lf"],
)
def test_invalid_v1_header(line, match):
    _refused(line, InvalidV1HeaderError, match)
