"""Hypothesis strategies for PROXY headers, shared by the codec's property tests."""

from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from hatwist.proxy import TLV, Command, ProxyHeader, TLVType

ports = st.integers(0, 0xFFFF)
ipv4 = st.builds(
    lambda ip, port: IPv4Address("TCP", str(ip), port), st.ip_addresses(v=4), ports
)
ipv6 = st.builds(
    lambda ip, port: IPv6Address("TCP", str(ip), port), st.ip_addresses(v=6), ports
)
unix = st.builds(
    UNIXAddress, st.binary(max_size=108).filter(lambda name: not name.endswith(b"\0"))
)


def _tlv(tlv_type: int, value: bytes) -> TLV:
    if tlv_type == TLVType.CRC32C:
        value = value[:4].ljust(4, b"\0")
    return TLV(tlv_type, value)


tlvs = st.lists(
    st.builds(_tlv, st.integers(0, 0xFF), st.binary(max_size=64)), max_size=5
).filter(lambda found: sum(t.type == TLVType.CRC32C for t in found) <= 1)
"""Random TLVs of any type (a CRC32C among them holds an arbitrary 4-byte
value): at most 5 x 67 bytes, so every header stays under the default cap."""


def _pair(addresses):
    return st.tuples(addresses, addresses)


v2_proxy_headers = st.builds(
    lambda pair, found: ProxyHeader(Command.PROXY, pair[0], pair[1], tuple(found)),
    st.one_of(_pair(ipv4), _pair(ipv6), _pair(unix), st.just((None, None))),
    tlvs.filter(lambda found: all(t.type != TLVType.CRC32C for t in found)),
)
"""v2 PROXY headers whose TLVs carry no CRC32C (a random one would not verify)."""

v1_tcp_headers = st.builds(
    lambda pair: ProxyHeader(Command.PROXY, pair[0], pair[1], version=1),
    st.one_of(_pair(ipv4), _pair(ipv6)),
)
v1_headers = v1_tcp_headers | st.just(ProxyHeader(Command.PROXY, None, None, version=1))
local_header = ProxyHeader(Command.LOCAL, None, None)
