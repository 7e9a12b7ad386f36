"""Run the smtp health check through HAProxy inside a namespace; print JSON.

(tests: tests.health.test_ipv6_netns) A process can only use a namespace's addresses from
inside it, so the per-family health check test starts HAProxy in the namespace and runs
this script there too:

    ip netns exec NS python3 -m tests.health.netns_health --proxy 127.0.0.1:PORT \\
        --target HOST:PORT-OR-NAME [--ipv6-target ...] --case NAME

Sinks listen on ``127.0.0.20`` and ``fd00::20`` on one port (printed as ``{port}`` in
targets, filled in here). The config is parsed from text, the probe built by
``make_probe`` as the service does, and the real registry records two checks. What is
printed is what happened, not a verdict: each path's state and last error, and the peer
address every sink session came from (the source HAProxy used).
"""

from __future__ import annotations

import argparse
import json
import sys

from twisted.internet import defer, task

from hatwist.config import parse_config
from hatwist.health import ServerRegistry, SourceResults, make_probe
from hatwist.lab.sink import SMTPSink

DEADLINE = 8.0
SOURCES = ("127.0.0.9", "fd00::9")


def config_text(proxy: str, target: str, ipv6_target: str | None) -> str:
    lines = [
        "health_check_mode = smtp",
        "health_check_interval = 5",
        "health_check_timeout = 3",
        f'health_check_target = "{target}"',
    ]
    if ipv6_target:
        lines.append(f'health_check_ipv6_target = "{ipv6_target}"')
    module = "".join(f"  {line}\n" for line in lines)
    return (
        f'ha_proxy_server = "{proxy}"\n'
        f"ha_proxy_client {{\n{module}}}\n"
        f'binding b1 {{\n  ha_proxy_src_addr = "{SOURCES[0]}"\n'
        f'  ha_proxy_ipv6_src_addr = "{SOURCES[1]}"\n}}\n'
    )


async def run(reactor, args) -> dict:
    v6 = await SMTPSink.start(reactor, host="fd00::20")
    sinks = [v6, await SMTPSink.start(reactor, host="127.0.0.20", port=v6.port)]
    try:
        target = args.target.format(port=v6.port)
        ipv6_target = args.ipv6_target.format(port=v6.port) if args.ipv6_target else None
        config = parse_config(config_text(args.proxy, target, ipv6_target))
        (server,) = config.proxy_servers
        registry = ServerRegistry([server], success_threshold=1, failure_threshold=1)
        probe = make_probe(config.health, reactor=reactor, sources_for=config.sources_for)
        for _ in range(2):
            verdict = await probe.check(server).addTimeout(DEADLINE, reactor)
            assert isinstance(verdict, SourceResults)
            registry.record_sources(server, verdict.as_dict(), at=reactor.seconds())
        for sink in sinks:
            await sink.wait_closed(timeout=DEADLINE)
        status = registry.status(server)
        return {
            "server": status.state.value,
            "paths": {
                p.source: {"state": p.state.value, "failures": p.failures, "error": p.last_error}
                for p in status.paths
            },
            "peers": sorted({s.peer[0] for sink in sinks for s in sink.sessions}),
            "sink_sessions": {sink.host: len(sink.sessions) for sink in sinks},
        }
    finally:
        for sink in sinks:
            await sink.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxy", required=True, help="ha_proxy_server HOST:PORT")
    parser.add_argument("--target", required=True, help="health_check_target; {port} filled in")
    parser.add_argument("--ipv6-target", help="health_check_ipv6_target; {port} filled in")
    args = parser.parse_args(argv)

    async def go(reactor):
        sys.stdout.write(json.dumps(await run(reactor, args)) + "\n")

    task.react(lambda reactor: defer.ensureDeferred(go(reactor)))


if __name__ == "__main__":
    main()
