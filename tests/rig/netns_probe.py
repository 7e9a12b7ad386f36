"""Send one message through an ``haproxy:`` endpoint string to a fresh sink; print JSON.

(tests: tests.test_e2e_endpoint) A process can only use a namespace's addresses from
inside it, so the IPv6 end-to-end test runs this script there with
``ip netns exec NS python3 -m tests.rig.netns_probe ...`` (cwd: the project root, so the
``haproxy:`` plugin is found) and asserts on what it prints: what the sink saw.

    python3 -m tests.rig.netns_probe --proxy 127.0.0.1:PORT --src fd00::9 --dst fd00::20
"""

from __future__ import annotations

import argparse
import json
import sys

from twisted.internet import defer, task
from twisted.internet.endpoints import clientFromString, quoteStringArgument

from tests.rig.sink import SMTPSink
from tests.rig.smtp import send

DEADLINE = 10.0


def endpoint_string(proxy_host: str, proxy_port: int, src: str, dst: str, dport: int) -> str:
    """The ``haproxy:`` client string, IPv6 colons escaped."""
    q = quoteStringArgument
    return f"haproxy:{q(proxy_host)}:{proxy_port}:src={q(src)}:dst={q(dst)}:dport={dport}"


async def probe(reactor, args) -> dict:
    sink = await SMTPSink.start(reactor, host=args.dst, tls=args.tls)
    try:
        proxy_host, _, proxy_port = args.proxy.rpartition(":")
        description = endpoint_string(
            proxy_host.strip("[]"), int(proxy_port), args.src, args.dst, sink.port
        )
        endpoint = clientFromString(reactor, description)
        conversation = await send(
            reactor,
            endpoint,
            rcpt_tos=("rcpt@mx.test",),
            data=b"Subject: v6\n\nthrough the hop\n",
            tls=sink.client_tls_options() if args.tls else None,
            timeout=DEADLINE,
        )
        if conversation.delivered:
            await sink.wait_for(1, timeout=DEADLINE)
        session = sink.sessions[0] if sink.sessions else None
        return {
            "endpoint": description,
            "delivered": conversation.delivered,
            "client_tls": conversation.tls,
            "lost": conversation.lost,
            "peer": list(session.peer) if session else None,
            "local": list(session.local) if session else None,
            "sink_tls": session.tls if session else None,
            "messages": [
                {
                    "peer": list(m.peer),
                    "mail_from": m.mail_from,
                    "rcpt_tos": list(m.rcpt_tos),
                    "data": m.data.decode("utf-8", "replace"),
                }
                for m in sink.messages
            ],
        }
    finally:
        await sink.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxy", required=True, help="HOST:PORT of the HAProxy relay")
    parser.add_argument("--src", required=True, help="source IP for the PROXY header")
    parser.add_argument("--dst", required=True, help="IP the sink listens on (destination)")
    parser.add_argument("--tls", action="store_true", help="sink offers STARTTLS; client uses it")
    args = parser.parse_args(argv)

    async def run(reactor):
        result = await probe(reactor, args)
        sys.stdout.write(json.dumps(result) + "\n")

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))


if __name__ == "__main__":
    main()
