"""Deliver mail with hatwist's DeliveryAgent through HAProxy inside a namespace; print JSON.

(tests: tests.delivery.test_ipv6_netns) A process can only use a namespace's addresses
from inside it, so the IPv6 delivery test starts HAProxy in the namespace and runs this
script there too:

    ip netns exec NS python3 -m tests.rig.netns_delivery --proxy [::1]:PORT [--case NAME]

Each case gets its own domain in one in-process DNS server, its own sinks (``fd00::20``
and ``127.0.0.20`` on one port, so a dual-stack MX host is one ``remote_smtp_port``), its
own config and a fresh agent (:data:`CASES`). What is printed is what happened, not a
verdict: every :class:`~hatwist.delivery.attempt.AttemptResult`, how many sessions the
agent tried to open, and what the sinks saw (the peer address is the source HAProxy used).
The namespace needs ``fd00::9``, ``fd00::10`` and ``fd00::20``; 127.0.0.0/8 is on ``lo``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

import attrs
from twisted.internet import defer, task

from hatwist.config import parse_config
from hatwist.delivery import Envelope, client
from hatwist.delivery.attempt import AttemptResult, DeliveryAgent, OutboundMessage
from hatwist.health import ServerRegistry
from hatwist.lab.dns import DNSServer
from hatwist.lab.sink import SMTPSink
from hatwist.mx import MXResolver, build_resolver

#: Deadline on every awaited Deferred, so the script ends before the test's own deadline.
DEADLINE = 8.0
#: The MX's addresses inside the namespace: where the sinks listen.
MX_IPV6 = "fd00::20"
MX_IPV4 = "127.0.0.20"
#: Nothing listens here: an IPv4 MX address that HAProxy cannot reach.
DEAD_IPV4 = "127.0.0.21"
#: Header carrying a message's id, so an arrival can be matched to its attempt.
ID_HEADER = "X-Hatwist-Test-Id"
_ID = re.compile(rb"^" + ID_HEADER.encode() + rb": (\S+)\r?$", re.MULTILINE)


@attrs.frozen
class Source:
    """The proxy sources of one binding (None: the option is not set)."""

    ipv4: str | None = None
    ipv6: str | None = None


@attrs.frozen
class Case:
    """One scenario: bindings and their sources, the MX host's addresses, what to send.

    ``sends`` lists the binding of each message, in order; ``tls`` makes the binding
    require STARTTLS, verified against the sink's certificate for the MX host name.
    ``connect_timeout`` also bounds the wait for the banner: short where the MX is down
    (HAProxy retries a refused connect, so the client only ever sees silence).
    """

    bindings: dict[str, Source]
    a: tuple[str, ...] = ()
    aaaa: tuple[str, ...] = ()
    sends: tuple[str, ...] = ("b1",)
    tls: bool = False
    connect_timeout: int = 3


CASES: dict[str, Case] = {
    "ipv6_only_mx": Case(
        {"b1": Source("127.0.0.9", "fd00::9")}, aaaa=(MX_IPV6,), sends=("b1", "b1"), tls=True
    ),
    "dual_stack_ipv4_source_only": Case(
        {"b1": Source(ipv4="127.0.0.9")}, a=(MX_IPV4,), aaaa=(MX_IPV6,)
    ),
    "dual_stack_ipv4_source_only_ipv4_down": Case(
        {"b1": Source(ipv4="127.0.0.9")}, a=(DEAD_IPV4,), aaaa=(MX_IPV6,), connect_timeout=1
    ),
    "dual_stack_ipv6_source_only": Case(
        {"b1": Source(ipv6="fd00::9")}, a=(MX_IPV4,), aaaa=(MX_IPV6,)
    ),
    "two_bindings": Case(
        {"b1": Source(ipv6="fd00::9"), "b2": Source(ipv6="fd00::10")},
        aaaa=(MX_IPV6,),
        sends=("b1", "b2", "b1", "b2"),
    ),
    "ipv6_only_mx_no_ipv6_source": Case({"b1": Source(ipv4="127.0.0.9")}, aaaa=(MX_IPV6,)),
    "ipv4_only_mx_no_ipv4_source": Case({"b1": Source(ipv6="fd00::9")}, a=(MX_IPV4,)),
}


def domain_of(name: str) -> str:
    return name.replace("_", "-") + ".test"


def config_text(proxy: str, port: int, case: Case) -> str:
    """The relay config for one case: every binding through ``proxy`` to ``port``."""
    blocks = []
    for name, source in case.bindings.items():
        lines = [
            f'ha_proxy_server = "{proxy}"',
            f'remote_smtp_port = "{port}"',
            'ehlo_hostname = "relay.hatwist.test"',
            f'tls = "{"required" if case.tls else "no"}"',
            f'connect_timeout = "{case.connect_timeout}"',
            'smtp_timeout = "5"',
        ]
        if source.ipv4:
            lines.append(f'ha_proxy_src_addr = "{source.ipv4}"')
        if source.ipv6:
            lines.append(f'ha_proxy_ipv6_src_addr = "{source.ipv6}"')
        body = "".join(f"  {line}\n" for line in lines)
        blocks.append(f"binding {name} {{\n{body}}}\n")
    return "".join(blocks)


def _result(result: AttemptResult, binding: str) -> dict[str, Any]:
    return {
        "message_id": result.message_id,
        "binding": binding,
        "recipients": [
            {"address": r.address, "code": r.code, "response": r.response, "kind": r.kind}
            for r in result.recipients
        ],
        "route": result.route,
        "mx_host": result.mx_host,
        "mx_address": result.mx_address,
        "error": result.error,
        "waiting_for_proxy": result.waiting_for_proxy,
        "no_greeting": list(result.no_greeting),
    }


def _seen(sinks: list[SMTPSink]) -> dict[str, Any]:
    sessions, arrivals = [], []
    for sink in sinks:
        for session in sink.sessions:
            sessions.append(
                {"peer": session.peer[0], "local": session.local[0], "tls": session.tls}
            )
        for message in sink.messages:
            found = _ID.search(message.data)
            arrivals.append(
                {
                    "id": found.group(1).decode() if found else None,
                    "peer": message.peer[0],
                    "local": sink.host,
                    "rcpt_tos": list(message.rcpt_tos),
                    "tls": message.tls,
                }
            )
    return {"sessions": sessions, "arrivals": arrivals}


async def run_case(reactor, name: str, case: Case, proxy: str, dns: DNSServer) -> dict:
    """Deliver the case's messages with a fresh agent; what the agent and the sinks saw."""
    domain = domain_of(name)
    mx_host = f"mx.{domain}"
    dns.add_mx(domain, [(10, mx_host)])
    for address in case.a:
        dns.add_a(mx_host, address)
    for address in case.aaaa:
        dns.add_aaaa(mx_host, address)
    sinks: list[SMTPSink] = []
    agent = None
    try:
        v6 = await SMTPSink.start(reactor, host=MX_IPV6, tls=case.tls, name=mx_host)
        sinks.append(v6)
        sinks.append(
            await SMTPSink.start(reactor, host=MX_IPV4, port=v6.port, tls=case.tls, name=mx_host)
        )
        config = parse_config(config_text(proxy, v6.port, case))
        registry = ServerRegistry(config.proxy_servers, success_threshold=1, failure_threshold=1)
        resolver = MXResolver(build_resolver(dns.address, reactor=reactor), reactor=reactor)
        opened: list[str] = []

        def open_session(endpoint, **kwargs):
            opened.append(kwargs["tls_hostname"])
            return client.open_session(endpoint, **kwargs)

        agent = DeliveryAgent(
            config,
            registry,
            resolver,
            reactor=reactor,
            open_session=open_session,
            trust_root=v6.ca.trust_root() if case.tls else None,
        )
        results = []
        for n, binding in enumerate(case.sends, 1):
            message_id = f"{name}-{n}"
            message = OutboundMessage(
                id=message_id,
                binding=binding,
                domain=domain,
                envelope=Envelope(f"sender@{binding}.hatwist.test", (f"rcpt@{domain}",)),
                content=(
                    f"{ID_HEADER}: {message_id}\r\nSubject: {name} {n}\r\n\r\nbody\r\n"
                ).encode(),
            )
            result = await agent.deliver(message).addTimeout(DEADLINE, reactor)
            results.append(_result(result, binding))
        await agent.close()
        agent = None
        resolver.close()
        for sink in sinks:
            await sink.wait_closed(timeout=DEADLINE)
        return {"deliveries": results, "sessions_opened": len(opened), "sinks": _seen(sinks)}
    finally:
        if agent is not None:
            await agent.close()
        for sink in sinks:
            await sink.stop()


async def run(reactor, proxy: str, names: list[str]) -> dict:
    dns = await DNSServer.start(reactor)
    try:
        cases = {}
        for name in names:
            cases[name] = await run_case(reactor, name, CASES[name], proxy, dns)
        return {"proxy": proxy, "cases": cases}
    finally:
        await dns.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxy", required=True, help="ha_proxy_server: HOST:PORT, [V6]:PORT")
    parser.add_argument(
        "--case", action="append", choices=sorted(CASES), help="run only this case (repeatable)"
    )
    args = parser.parse_args(argv)

    async def go(reactor):
        result = await run(reactor, args.proxy, args.case or list(CASES))
        sys.stdout.write(json.dumps(result) + "\n")

    task.react(lambda reactor: defer.ensureDeferred(go(reactor)))


if __name__ == "__main__":
    main()
