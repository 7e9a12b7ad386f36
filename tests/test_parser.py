"""The ``haproxy:`` client endpoint string (hatwist._parser) through clientFromString."""

from __future__ import annotations

import pytest
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    clientFromString,
    serverFromString,
)
from twisted.internet.testing import MemoryReactorClock

from hatwist.endpoint import HAProxyClientEndpoint

BASE = "haproxy:127.0.0.1:5000:src=127.0.0.9:dst=127.0.0.20:dport=25"


def parse(description: str) -> HAProxyClientEndpoint:
    return clientFromString(MemoryReactorClock(), description)


def test_plugin_is_discovered_by_clientFromString():
    endpoint = parse(BASE)

    assert isinstance(endpoint, HAProxyClientEndpoint)
    assert isinstance(endpoint._proxy, TCP4ClientEndpoint)
    assert endpoint._source == ("127.0.0.9", 0)
    assert endpoint._destination == ("127.0.0.20", 25)
    assert endpoint._version == 2


def test_optional_arguments():
    endpoint = parse(BASE + ":sport=1234:version=1:timeout=2.5:bindAddress=127.0.0.1")

    assert endpoint._source == ("127.0.0.9", 1234)
    assert endpoint._version == 1
    assert endpoint._timeout == 2.5
    assert endpoint._proxy._bindAddress == ("127.0.0.1", 0)
    assert endpoint._proxy._timeout == 2.5


def test_ipv6_literals_with_escaped_colons():
    endpoint = parse(
        r"haproxy:\:\:1:5000:src=2001\:db8\:\:9:dst=2001\:db8\:\:25:dport=25"
    )

    assert isinstance(endpoint._proxy, TCP6ClientEndpoint)
    assert endpoint._source == ("2001:db8::9", 0)
    assert endpoint._destination == ("2001:db8::25", 25)


def test_proxy_and_destination_host_names():
    endpoint = parse("haproxy:proxy.example:5000:src=127.0.0.9:dst=mx.example:dport=25")

    assert isinstance(endpoint._proxy, HostnameEndpoint)
    assert endpoint._destination == ("mx.example", 25)


@pytest.mark.parametrize(
    ("description", "names"),
    [
        ("haproxy:127.0.0.1:5000:dst=127.0.0.20:dport=25", "src"),
        ("haproxy:127.0.0.1:5000:src=127.0.0.9:dport=25", "dst"),
        ("haproxy:127.0.0.1:5000:src=127.0.0.9:dst=127.0.0.20", "dport"),
        (BASE.replace("src=127.0.0.9", "src=nine"), "src='nine'"),
        (BASE.replace("dst=127.0.0.20", "dst=not a host!"), "dst="),
        (BASE.replace("dst=127.0.0.20", r"dst=\:\:1"), "mix"),
        (BASE.replace("dport=25", "dport=65536"), "dport=65536"),
        (BASE.replace("dport=25", "dport=smtp"), "dport='smtp'"),
        (BASE.replace(":5000:", ":99999:"), "PROXYPORT"),
        (BASE + ":sport=-1", "sport"),
        (BASE + ":version=3", "version"),
        (BASE + ":timeout=soon", "timeout"),
        (BASE + ":timeout=0", "timeout"),
        (BASE + ":bindAddress=localhost", "bindAddress"),
        (BASE + ":colour=blue", "colour"),
        ("haproxy:127.0.0.1:src=127.0.0.9:dst=127.0.0.20:dport=25", "PROXYPORT"),
        ("haproxy:::1:5000:src=::9:dst=::20:dport=25", "escape IPv6"),
        # Each against the documented promise (issue 12): ports are ASCII digits, a
        # destination port is never 0, a timeout is finite decimal seconds, names end.
        (BASE.replace("dport=25", "dport=2_5"), "dport='2_5' is not a port"),
        (BASE.replace("dport=25", "dport= 25"), "dport=' 25' is not a port"),
        (BASE.replace("dport=25", "dport=0"), "dport=0 is out of range 1-65535"),
        (BASE.replace(":5000:", ":0:"), "PROXYPORT=0 is out of range 1-65535"),
        (BASE + ":sport=1_0", "sport='1_0'"),
        (BASE + ":timeout=inf", "timeout='inf' is not a number of seconds"),
        (BASE + ":timeout=nan", "timeout='nan'"),
        (BASE + ":timeout=1e3", "timeout='1e3'"),
        (BASE.replace("dst=127.0.0.20", "dst=mx.example\n"), "dst='mx.example.n' is neither"),
        (BASE.replace("haproxy:127.0.0.1", "haproxy:proxy.example\n"), "PROXYHOST="),
        (BASE.replace("dst=127.0.0.20", "dst=010.0.0.1"), "dst='010.0.0.1'.*last label"),
        (BASE.replace("dst=127.0.0.20", "dst=127.1"), "dst='127.1'.*last label"),
        (BASE.replace("haproxy:127.0.0.1", "haproxy:0x7f.1"), "PROXYHOST='0x7f.1'.*last"),
        (BASE.replace("haproxy:127.0.0.1", "haproxy:0177.0.0.01"), "PROXYHOST=.*last label"),
    ],
)
def test_bad_arguments_name_what_is_wrong(description, names):
    with pytest.raises(ValueError, match=names.replace("(", r"\(")):
        parse(description)


def test_twisted_own_server_side_parser_still_works():
    endpoint = serverFromString(MemoryReactorClock(), "haproxy:tcp:0:interface=127.0.0.1")

    assert type(endpoint).__name__ == "_WrapperServerEndpoint"
