"""The v1 text line: the known vector, UNKNOWN, and Twisted's parser."""

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.protocols.haproxy._v1parser import V1Parser

from hatwist.proxy import Command, InvalidV1HeaderError, ProxyHeader, decode, encode

from ._strategies import v1_tcp_headers

# FIELD-NOTES section 2.
V1_TCP4 = b"PROXY TCP4 192.0.2.10 198.51.100.25 0 25\r\n"
HEADER_TCP4 = ProxyHeader(
    Command.PROXY,
    IPv4Address("TCP", "192.0.2.10", 0),
    IPv4Address("TCP", "198.51.100.25", 25),
    version=1,
)


def test_tcp4_matches_the_known_vector():
    assert encode(HEADER_TCP4) == V1_TCP4
    assert decode(V1_TCP4 + b"220 ") == (HEADER_TCP4, b"220 ")


def test_tcp6_uses_canonical_addresses():
    header = ProxyHeader(
        Command.PROXY,
        IPv6Address("TCP", "2001:DB8:0::9", 1025),
        IPv6Address("TCP", "2001:db8::20", 25),
        version=1,
    )
    assert encode(header) == b"PROXY TCP6 2001:db8::9 2001:db8::20 1025 25\r\n"


def test_unknown_has_no_addresses():
    header = ProxyHeader(Command.PROXY, None, None, version=1)
    assert encode(header) == b"PROXY UNKNOWN\r\n"
    assert decode(b"PROXY UNKNOWN\r\n") == (header, b"")


def test_unknown_ignores_the_rest_of_its_line():
    assert decode(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\nQUIT")[1] == b"QUIT"


def test_longest_possible_line_is_accepted():
    line = (
        b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
        b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
    )
    assert len(line) == 104
    padded = b"PROXY UNKNOWN " + b"x" * 91 + b"\r\n"
    assert len(padded) == 107
    assert decode(line)[0].source.host == "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    assert decode(padded) == (ProxyHeader(Command.PROXY, None, None, version=1), b"")


def test_encode_refuses_crc32c_for_version_1():
    with pytest.raises(ValueError, match="version 2"):
        encode(HEADER_TCP4, crc32c=True)


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 192.0.2.10 198.51.100.25 0 025\r\n",
        b"PROXY TCP4 192.0.2.10 198.51.100.25 +1 25\r\n",
        b"PROXY TCP4 192.0.2.10 198.51.100.25  0 25\r\n",
        b"PROXY TCP4 192.0.2.10 198.51.100.25 0 25 \r\n",
        b"PROXY TCP4 192.0.2.010 198.51.100.25 0 25\r\n",
        b"PROXY TCP6 192.0.2.10 198.51.100.25 0 25\r\n",
        b"PROXY TCP6 fe80::1%eth0 fe80::2 0 25\r\n",
        b"PROXY TCP4 192.0.2.10 198.51.100.25 0 25\r\r\n",
    ],
    ids=[
        "leading-zero-port",
        "signed-port",
        "double-space",
        "trailing-space",
        "leading-zero-octet",
        "tcp6-with-ipv4",
        "scope-id",
        "stray-cr",
    ],
)
def test_malformed_lines_are_refused(line):
    with pytest.raises(InvalidV1HeaderError):
        decode(line)


def _twisted_view(address):
    if address is None:
        return None
    return (type(address).__name__, str(ipaddress.ip_address(address.host)), address.port)


# Twisted 26.10's V1Parser refuses the bare "PROXY UNKNOWN\r\n" that the
# specification and HAProxy use (it wants a space after UNKNOWN), so UNKNOWN is
# covered by the tests above and by the round trips in test_parser.
@settings(max_examples=1000, deadline=None)
@given(header=v1_tcp_headers, tail=st.binary(max_size=20))
def test_twisted_v1_parser_reads_what_we_encode(header, tail):
    info, rest = V1Parser().feed(encode(header) + tail)
    assert rest == tail
    assert _twisted_view(info.source) == _twisted_view(header.source)
    assert _twisted_view(info.destination) == _twisted_view(header.destination)
