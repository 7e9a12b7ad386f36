"""hatwist.config.converters: one value's text to a typed value."""

from __future__ import annotations

import ipaddress

import pytest

from hatwist.config import converters as c
from hatwist.config.values import ServerAddress, Throttle, TLSMode


@pytest.mark.parametrize(
    ("text", "value"),
    [("true", True), ("YES", True), ("1", True), ("false", False), ("No", False), ("0", False)],
)
def test_booleans(text, value):
    assert c.to_bool(text) is value


@pytest.mark.parametrize("text", ["on", "", "2", "truee"])
def test_not_booleans(text):
    with pytest.raises(ValueError, match="true/false"):
        c.to_bool(text)


def test_integers_are_whole_and_in_range():
    assert c.integer(1)("42") == 42
    for bad, words in [("1.5", "whole number"), ("-1", "whole number"), ("0", "at least 1"),
                       ("٣", "whole number")]:  # fmt: skip
        with pytest.raises(ValueError, match=words):
            c.integer(1)(bad)
    with pytest.raises(ValueError, match="at most 65535"):
        c.integer(1, 65535)("65536")


def test_choice_is_case_insensitive():
    assert c.choice(TLSMode)("Required") is TLSMode.REQUIRED
    with pytest.raises(ValueError, match=r"ifavailable \| required \| no"):
        c.choice(TLSMode)("maybe")


def test_server_forms():
    assert c.server("10.0.0.1:8085") == ServerAddress("10.0.0.1", 8085)
    v6 = c.server("[2001:DB8::1]:8085")
    assert (v6.host, v6.port, str(v6)) == ("2001:db8::1", 8085, "[2001:DB8::1]:8085")
    name = c.server("Proxy.Example:5000")
    assert (name.host, name.ip_version, str(name)) == ("proxy.example", None, "Proxy.Example:5000")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("10.0.0.1", "needs a port"),
        ("[2001:db8::1]", "needs a port"),
        ("2001:db8::1:25", r"\[address\]:port"),
        ("[10.0.0.1]:25", "only an IPv6"),
        ("10.0.0.1:0", "invalid port"),
        ("10.0.0.1:x", "invalid port"),
        ("bad_host:25", "neither an IP address nor a host name"),
        # getaddrinfo would read these as 8.0.0.1, 127.0.0.1, ... (issue 12)
        ("010.0.0.1:25", "'010.0.0.1' is not a host name .its last label is a number"),
        ("0177.0.0.01:8085", "'0177.0.0.01' is not a host name"),
        ("127.1:25", "'127.1' is not a host name"),
        ("0x7f.1:25", "'0x7f.1' is not a host name"),
        ("proxy.0x1F:25", "'proxy.0x1F' is not a host name"),
    ],
)
def test_bad_servers(text, words):
    with pytest.raises(ValueError, match=words):
        c.server(text)


def test_resolver_port_defaults_to_53_and_must_be_an_ip():
    assert c.resolver_address("::1") == ServerAddress("::1", 53)
    assert c.resolver_address("127.0.0.1:5353") == ServerAddress("127.0.0.1", 5353)
    with pytest.raises(ValueError, match="not a host name"):
        c.resolver_address("dns.example")


def test_listen_allows_port_zero():
    assert c.listen_address("127.0.0.1:0").port == 0


def test_server_list_space_or_comma_separated_and_no_repeats():
    servers = c.server_list("10.0.0.1:1, 10.0.0.2:2 [::1]:3")
    assert [str(s) for s in servers] == ["10.0.0.1:1", "10.0.0.2:2", "[::1]:3"]
    assert c.server_list("") == ()
    with pytest.raises(ValueError, match="twice"):
        c.server_list("10.0.0.1:1 10.0.0.1:1")


def test_address_families():
    assert c.ipv4_address("9.9.9.9") == "9.9.9.9"
    assert c.ipv6_address("490C:D8FE::1") == "490c:d8fe::1"
    with pytest.raises(ValueError, match=r"must be an IPv4 address; '::1' is IPv6"):
        c.ipv4_address("::1")
    with pytest.raises(ValueError, match=r"must be an IPv6 address; '9\.9\.9\.9' is IPv4"):
        c.ipv6_address("9.9.9.9")


def test_networks():
    assert c.networks("10.0.0.0/8, ::1") == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    with pytest.raises(ValueError, match="CIDR"):
        c.networks("10.0.0.0/33")
    with pytest.raises(ValueError, match="at least one"):
        c.networks(" , ")


def test_names():
    assert c.domain("Example.COM.") == "example.com"
    assert c.binding_name("Pool-A") == "pool-a"
    with pytest.raises(ValueError, match="not a valid domain"):
        c.domain("-bad.example")
    for numeric in ("127.1", "010.0.0.1."):
        with pytest.raises(ValueError, match="last label is a number"):
            c.hostname(numeric)
    assert c.hostname("mx1.beef.cafe") == "mx1.beef.cafe"
    with pytest.raises(ValueError, match="not a valid name"):
        c.binding_name("pool a")


def test_throttle_is_messages_per_seconds():
    assert c.throttle("50/3600") == Throttle(messages=50, seconds=3600)
    assert c.throttle(" 1 / 1 ") == Throttle(messages=1, seconds=1)
    assert str(c.throttle("50/3600")) == "50/3600"
    assert c.throttle("") is None


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("50", "expected messages/seconds"),
        ("50/1h", "expected messages/seconds"),
        ("50/-1", "expected messages/seconds"),
        ("1.5/60", "expected messages/seconds"),
        ("٣/60", "expected messages/seconds"),
        ("0/60", "at least 1"),
        ("50/0", "at least 1"),
    ],
)
def test_bad_throttles_name_the_expected_form(text, words):
    with pytest.raises(ValueError, match=words):
        c.throttle(text)
