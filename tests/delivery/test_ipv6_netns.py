"""IPv6 mail delivery through HAProxy, end to end, inside a network namespace.

(runs tests/rig/netns_delivery.py) ``ha_proxy_ipv6_src_addr`` is the source HAProxy must
use for IPv6 MX addresses, ``ha_proxy_src_addr`` the one for IPv4. Only a namespace gives
a test IPv6 addresses of its own, so the module makes one (``fd00::9``, ``fd00::10``
sources; ``fd00::20`` the MX), runs the real HAProxy there on ``[::1]`` (``usesrc
clientip``, one ``server`` line per family), and runs the script that wires the real
DeliveryAgent, DNS server and SMTP sinks inside it. The sinks' view of the peer address
proves which source each message left from. The script runs once for the module; each
test reads one case of what it printed.
"""

from __future__ import annotations

import json
import os

import attrs
import pytest
import pytest_twisted

from tests.rig.haproxy import HAProxy
from tests.rig.needs import require_haproxy, require_netns
from tests.rig.netns import NetNS, ProcessResult

pytestmark = pytest.mark.integration

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: The script's own deliveries each have an 8 s deadline; this bounds the whole run.
SCRIPT_DEADLINE = 40.0
ADDRESSES = ("fd00::9/128", "fd00::10/128", "fd00::20/128")
PROXY_HOST = "::1"


@attrs.frozen
class Run:
    """What the script printed (``seen``) and what HAProxy logged while it ran."""

    process: ProcessResult
    haproxy_logs: tuple[str, ...]
    proxy: str

    def case(self, name: str) -> dict:
        assert self.process.code == 0, self.process.err.decode(errors="replace")
        return json.loads(self.process.out)["cases"][name]

    def haproxy_line(self, source: str) -> str:
        """HAProxy's log line for a session whose PROXY header named ``source``."""
        lines = [line for line in self.haproxy_logs if line.startswith(f"{source}:0 ")]
        assert lines, (source, self.haproxy_logs)
        return lines[0]


@pytest_twisted.async_yield_fixture(scope="module")
async def run():
    from twisted.internet import reactor

    require_haproxy()
    require_netns()
    namespace = await NetNS.create(reactor, addresses=ADDRESSES)
    try:
        relay = HAProxy(reactor, host=PROXY_HOST, netns=namespace.name)
        try:
            await relay.start()
            process = await namespace.run(
                "python3",
                "-m",
                "tests.rig.netns_delivery",
                "--proxy",
                relay.server_text,
                timeout=SCRIPT_DEADLINE,
                cwd=PROJECT_ROOT,
            )
        finally:
            await relay.close()
        yield Run(process, tuple(relay.logs), relay.server_text)
    finally:
        await namespace.delete()


def kinds(delivery: dict) -> list[str]:
    return [r["kind"] for r in delivery["recipients"]]


def test_ipv6_only_mx_arrives_from_the_bindings_ipv6_source(run):
    case = run.case("ipv6_only_mx")
    for delivery in case["deliveries"]:
        assert kinds(delivery) == ["delivered"], delivery
        assert delivery["route"] == f"proxy {run.proxy} from fd00::9"
        assert delivery["mx_address"] == "fd00::20"
    arrivals = case["sinks"]["arrivals"]
    assert [a["id"] for a in arrivals] == ["ipv6_only_mx-1", "ipv6_only_mx-2"]
    assert {(a["peer"], a["local"], a["tls"]) for a in arrivals} == {("fd00::9", "fd00::20", True)}
    # STARTTLS verified for the MX name across the hop, and the session reused.
    assert case["sinks"]["sessions"] == [{"peer": "fd00::9", "local": "fd00::20", "tls": True}]
    assert case["sessions_opened"] == 1
    assert " relay out/mx6 " in run.haproxy_line("fd00::9")


def test_dual_stack_mx_with_only_an_ipv4_source_is_reached_over_ipv4(run):
    case = run.case("dual_stack_ipv4_source_only")
    [delivery] = case["deliveries"]
    assert kinds(delivery) == ["delivered"], delivery
    assert delivery["mx_address"] == "127.0.0.20"
    assert delivery["route"] == f"proxy {run.proxy} from 127.0.0.9"
    [arrival] = case["sinks"]["arrivals"]
    assert (arrival["peer"], arrival["local"]) == ("127.0.0.9", "127.0.0.20")
    # The A address comes first and took the message: the AAAA one was never tried.
    assert case["sessions_opened"] == 1
    assert len(case["sinks"]["sessions"]) == 1
    assert " relay out/mx " in run.haproxy_line("127.0.0.9")


def test_dual_stack_mx_whose_ipv4_address_fails_names_the_missing_ipv6_source(run):
    case = run.case("dual_stack_ipv4_source_only_ipv4_down")
    [delivery] = case["deliveries"]
    assert kinds(delivery) == ["temporary"], delivery
    error = delivery["error"]
    domain = "dual-stack-ipv4-source-only-ipv4-down.test"
    assert f"mx.{domain} [127.0.0.21] via proxy {run.proxy} from 127.0.0.9" in error
    assert "proxy connected, no greeting" in error
    assert (
        "binding b1 has no ha_proxy_ipv6_src_addr; "
        "IPv6 MX address fd00::20 cannot go through the proxy"
    ) in error
    assert case["sessions_opened"] == 1  # the IPv4 address only
    assert case["sinks"]["sessions"] == []


def test_dual_stack_mx_with_only_an_ipv6_source_is_reached_over_ipv6(run):
    case = run.case("dual_stack_ipv6_source_only")
    [delivery] = case["deliveries"]
    assert kinds(delivery) == ["delivered"], delivery
    assert delivery["mx_address"] == "fd00::20"
    assert delivery["route"] == f"proxy {run.proxy} from fd00::9"
    [arrival] = case["sinks"]["arrivals"]
    assert (arrival["peer"], arrival["local"]) == ("fd00::9", "fd00::20")
    # The A address was skipped for want of an IPv4 source, without a connection.
    assert case["sessions_opened"] == 1
    assert len(case["sinks"]["sessions"]) == 1


def test_two_bindings_each_deliver_from_their_own_ipv6_source(run):
    case = run.case("two_bindings")
    sources = {"b1": "fd00::9", "b2": "fd00::10"}
    by_id = {a["id"]: a for a in case["sinks"]["arrivals"]}
    assert len(case["deliveries"]) == 4
    for delivery in case["deliveries"]:
        assert kinds(delivery) == ["delivered"], delivery
        source = sources[delivery["binding"]]
        assert delivery["route"] == f"proxy {run.proxy} from {source}"
        assert by_id[delivery["message_id"]]["peer"] == source
    # One session per binding, each reused for that binding's second message only.
    assert sorted(s["peer"] for s in case["sinks"]["sessions"]) == ["fd00::10", "fd00::9"]
    assert " relay out/mx6 " in run.haproxy_line("fd00::10")


def test_ipv6_only_mx_without_an_ipv6_source_fails_temporarily_without_connecting(run):
    case = run.case("ipv6_only_mx_no_ipv6_source")
    [delivery] = case["deliveries"]
    [recipient] = delivery["recipients"]
    assert (recipient["kind"], recipient["code"]) == ("temporary", 451)
    assert recipient["response"].startswith("4.4.4 ")
    assert "binding b1 has no ha_proxy_ipv6_src_addr" in delivery["error"]
    assert "IPv6 MX address fd00::20 cannot go through the proxy" in delivery["error"]
    assert delivery["waiting_for_proxy"] is False
    assert case["sessions_opened"] == 0
    assert case["sinks"]["sessions"] == []


def test_ipv4_only_mx_without_an_ipv4_source_names_ha_proxy_src_addr(run):
    case = run.case("ipv4_only_mx_no_ipv4_source")
    [delivery] = case["deliveries"]
    assert kinds(delivery) == ["temporary"], delivery
    assert case["sessions_opened"] == 0
    assert "binding b1 has no ha_proxy_src_addr; " in delivery["error"]
