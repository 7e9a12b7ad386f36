"""HeaderParser: incremental, version auto-detecting, and spent after one header."""

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address

from hatwist.proxy import (
    Command,
    HeaderParser,
    HeaderTooLongError,
    InvalidSignatureError,
    ProxyHeader,
    TLVType,
    TruncatedHeaderError,
    decode,
    encode,
)

from ._strategies import local_header, v1_headers, v2_proxy_headers

V2_TCP4 = bytes.fromhex("0d0a0d0a000d0a515549540a 21 11 000c c000020a c6336419 0000 0019")
V1_TCP4 = b"PROXY TCP4 192.0.2.10 198.51.100.25 0 25\r\n"


def _feed_in_pieces(parser, data, cuts):
    """Feed C{data} cut at C{cuts}; return the first non-None result and check
    that every earlier feed returned exactly C{(None, b"")}."""
    bounds = [0, *sorted(set(cuts)), len(data)]
    for start, end in itertools.pairwise(bounds):
        header, rest = parser.feed(data[start:end])
        if header is not None:
            return header, rest + data[end:]
        assert rest == b""
    return None, b""


@st.composite
def _encoded(draw):
    header = draw(v2_proxy_headers | v1_headers | st.just(local_header))
    crc = header.version == 2 and draw(st.booleans())
    tail = draw(st.binary(max_size=40))
    data = encode(header, crc32c=crc)
    cuts = draw(st.lists(st.integers(0, len(data) + len(tail)), max_size=8))
    return header, crc, data, tail, cuts


@settings(max_examples=1000, deadline=None)
@given(_encoded())
def test_round_trip_through_arbitrary_chunks_keeps_the_application_bytes(case):
    header, crc, data, tail, cuts = case
    parsed, rest = _feed_in_pieces(HeaderParser(), data + tail, cuts)
    assert rest == tail
    if crc and header.command == Command.PROXY:  # a LOCAL body, CRC included, is skipped
        assert parsed.tlvs[0].type == TLVType.CRC32C
        assert encode(parsed) == data
        parsed = ProxyHeader(parsed.command, parsed.source, parsed.destination, parsed.tlvs[1:])
    assert parsed == header


def test_one_byte_at_a_time():
    parser = HeaderParser()
    for byte in V2_TCP4[:-1]:
        assert parser.feed(bytes([byte])) == (None, b"")
    header, rest = parser.feed(V2_TCP4[-1:] + b"EHLO")
    assert header.destination == IPv4Address("TCP", "198.51.100.25", 25)
    assert rest == b"EHLO"


@pytest.mark.parametrize(
    "first_bytes", [b"E", b"\r\n\r\n\x00X", b"PROXX", b"\r\n\r\n\x00\r\nQUIT\r"]
)
def test_a_wrong_signature_is_refused_as_soon_as_it_shows(first_bytes):
    with pytest.raises(InvalidSignatureError):
        HeaderParser().feed(first_bytes)


def test_a_partial_signature_waits():
    assert HeaderParser().feed(b"\r\n\r\n\x00\r\nQU") == (None, b"")
    assert HeaderParser().feed(b"PROX") == (None, b"")


def test_an_absurd_declared_length_is_refused_before_the_body_arrives():
    fixed = V2_TCP4[:14] + (1025).to_bytes(2, "big")
    with pytest.raises(HeaderTooLongError, match="1025 bytes"):
        HeaderParser().feed(fixed)


def test_max_length_is_the_callers_choice():
    body = V2_TCP4[16:] + b"\x04\x00\x05" + bytes(5)
    data = V2_TCP4[:14] + len(body).to_bytes(2, "big") + body
    with pytest.raises(HeaderTooLongError):
        HeaderParser(max_length=19).feed(data)
    header, _ = HeaderParser(max_length=20).feed(data)
    assert header is not None


def test_max_length_must_fit_the_length_field():
    with pytest.raises(ValueError, match="max_length"):
        HeaderParser(max_length=65536)


def test_feeding_after_a_header_raises():
    parser = HeaderParser()
    parser.feed(V1_TCP4)
    with pytest.raises(RuntimeError, match="already returned"):
        parser.feed(b"more")


def test_feeding_after_an_error_raises():
    parser = HeaderParser()
    with pytest.raises(InvalidSignatureError):
        parser.feed(b"EHLO")
    with pytest.raises(RuntimeError, match="already returned a header or raised"):
        parser.feed(V1_TCP4)


def test_finish_with_nothing_received_is_quiet():
    HeaderParser().finish()


def test_finish_after_a_header_is_quiet():
    parser = HeaderParser()
    parser.feed(V2_TCP4)
    parser.finish()


@pytest.mark.parametrize("partial", [V2_TCP4[:5], V2_TCP4[:20], V1_TCP4[:-1]])
def test_finish_with_a_partial_header_raises_truncated(partial):
    parser = HeaderParser()
    assert parser.feed(partial) == (None, b"")
    with pytest.raises(TruncatedHeaderError, match=f"after {len(partial)} bytes"):
        parser.finish()


def test_decode_needs_the_whole_header():
    with pytest.raises(TruncatedHeaderError):
        decode(V2_TCP4[:-1])
    with pytest.raises(TruncatedHeaderError):
        decode(b"")


def test_local_is_returned_without_addresses():
    assert HeaderParser().feed(encode(local_header) + b"x") == (
        ProxyHeader(Command.LOCAL, None, None),
        b"x",
    )
