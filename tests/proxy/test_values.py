"""ProxyHeader and TLV refuse, on construction, what no header can carry."""

import pytest
from twisted.internet.address import HostnameAddress, IPv4Address, IPv6Address, UNIXAddress

from hatwist.proxy import (
    APPLICATION_TLV_TYPES,
    TLV,
    Command,
    MixedFamiliesError,
    ProxyHeader,
    TLVType,
    is_application_tlv,
)

SRC4 = IPv4Address("TCP", "192.0.2.10", 0)
DST4 = IPv4Address("TCP", "198.51.100.25", 25)
SRC6 = IPv6Address("TCP", "2001:db8::9", 0)
DST6 = IPv6Address("TCP", "2001:db8::20", 25)


def test_ipv6_hosts_are_stored_compressed_and_lower_case():
    header = ProxyHeader(
        Command.PROXY,
        IPv6Address("TCP", "2001:DB8:0:0:0:0:0:9", 1),
        IPv6Address("TCP", "::FFFF:192.0.2.1", 2),
    )
    assert (header.source.host, header.destination.host) == ("2001:db8::9", "::ffff:c000:201")


def test_command_accepts_plain_ints():
    assert ProxyHeader(1, SRC4, DST4).command is Command.PROXY


@pytest.mark.parametrize(
    ("source", "destination"),
    [(SRC4, DST6), (SRC6, DST4), (UNIXAddress(b"/a"), DST4), (SRC6, UNIXAddress(b"/b"))],
)
def test_mixed_families_are_refused(source, destination):
    with pytest.raises(MixedFamiliesError, match="one family"):
        ProxyHeader(Command.PROXY, source, destination)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source": IPv4Address("TCP", "192.0.2.10", 65536)}, "source port"),
        ({"destination": IPv4Address("TCP", "198.51.100.25", -1)}, "destination port"),
        ({"source": IPv4Address("TCP", "2001:db8::1", 0)}, "not an IPv4 literal"),
        ({"source": IPv4Address("TCP", "mx.example", 0)}, "not an IPv4 literal"),
        ({"source": IPv4Address("UDP", "192.0.2.10", 0)}, "TCP address"),
        ({"source": HostnameAddress(b"mx.example", 25)}, "IPv4Address, IPv6Address"),
        ({"source": None}, "both be set"),
        ({"command": 2}, "LOCAL .0. or PROXY .1."),
        ({"command": Command.LOCAL}, "LOCAL header carries no addresses"),
        ({"version": 3}, "version must be 1 or 2"),
        ({"tlvs": (b"\x01\x00\x00",)}, "TLV values"),
        ({"tlvs": (TLV(3, bytes(4)), TLV(3, bytes(4)))}, "at most one CRC32C"),
    ],
)
def test_invalid_headers_are_refused(kwargs, message):
    fields = {"command": Command.PROXY, "source": SRC4, "destination": DST4} | kwargs
    with pytest.raises(ValueError, match=message):
        ProxyHeader(**fields)


def test_ipv6_scope_ids_are_refused():
    with pytest.raises(ValueError, match="scope id"):
        ProxyHeader(Command.PROXY, IPv6Address("TCP", "fe80::1%eth0", 0), DST6)


@pytest.mark.parametrize(
    ("name", "message"),
    [(b"x" * 109, "at most 108"), (b"/tmp/s\0", "end in NUL"), (None, "needs a name")],
)
def test_unix_names_that_cannot_be_sent_are_refused(name, message):
    with pytest.raises(ValueError, match=message):
        ProxyHeader(Command.PROXY, UNIXAddress(name), UNIXAddress(b"/d"))


def test_a_108_byte_unix_name_fits():
    name = b"/" + b"s" * 107
    assert ProxyHeader(Command.PROXY, UNIXAddress(name), UNIXAddress(b"/d")).source.name == name


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"source": UNIXAddress(b"/a"), "destination": UNIXAddress(b"/b")}, "not UNIX"),
        ({"tlvs": (TLV(TLVType.NOOP, b""),)}, "no TLVs"),
        ({"command": Command.LOCAL, "source": None, "destination": None}, "no LOCAL"),
    ],
)
def test_version_1_carries_only_tcp_or_unknown_without_tlvs(fields, message):
    with pytest.raises(ValueError, match=message):
        ProxyHeader(**({"command": Command.PROXY, "source": SRC4, "destination": DST4} | fields),
                    version=1)


def test_known_tlv_types_are_named():
    assert TLV(0x02, b"mx.example").type is TLVType.AUTHORITY
    assert TLV(0xE3, b"").type == 0xE3


@pytest.mark.parametrize(
    ("tlv_type", "value", "message"),
    [
        (256, b"", "0..255"),
        (-1, b"", "0..255"),
        (True, b"", "0..255"),
        (TLVType.NOOP, bytes(65536), "at most 65535"),
        (TLVType.CRC32C, bytes(3), "must be 4 bytes"),
        (TLVType.UNIQUE_ID, bytes(129), "at most 128"),
    ],
)
def test_invalid_tlvs_are_refused(tlv_type, value, message):
    with pytest.raises(ValueError, match=message):
        TLV(tlv_type, value)


def test_limits_are_inclusive():
    assert len(TLV(TLVType.UNIQUE_ID, bytes(128)).value) == 128
    assert len(TLV(TLVType.NOOP, bytes(65535)).value) == 65535


def test_application_range_is_e0_to_ef():
    assert [t for t in range(256) if is_application_tlv(t)] == list(range(0xE0, 0xF0))
    assert list(APPLICATION_TLV_TYPES) == list(range(0xE0, 0xF0))
