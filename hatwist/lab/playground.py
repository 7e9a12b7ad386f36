"""``hatwist lab``: the demo's HAProxy, DNS and SMTP sink, left running for you (tests:
tests.test_lab).

``hatwist demo`` shows the relay end to end and stops; a newcomer's next step is to point
their *own* relay and their own SMTP client at the same parts.  :func:`run_lab` starts
them (a real HAProxy with ``accept-proxy`` and ``usesrc clientip``, the in-process DNS
server with a small zone it prints, and the recording sink as every zone domain's MX),
prints a relay config that uses them and a ``swaks`` line to try, then reports every
message the sink receives (recipients and the source address it came from) until it is
stopped (Ctrl-C).  Nothing leaves loopback.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, TextIO

from twisted.internet import defer, task

from hatwist.lab.demo import BYPASS_BIND, DEFAULT_SOURCE, DOMAINS, SINK_HOST, WARMUP_SOURCE
from hatwist.lab.dns import DNSServer
from hatwist.lab.haproxy import HAProxy
from hatwist.lab.sink import SMTPSink

#: How often arrivals at the sink are looked for (in memory; never the network).
POLL_INTERVAL = 0.2
#: The ``listen`` and ``status_listen`` the printed config gives the newcomer's relay.
RELAY_LISTEN = "127.0.0.1:2525"
RELAY_STATUS = "127.0.0.1:8025"
READY = "lab ready"


def relay_config(*, proxy: str, resolver: tuple[str, int], smtp_port: int,
                 spool_dir: str) -> str:
    """A config for the newcomer's own relay that delivers through the lab."""
    return f"""\
# A relay config for `hatwist lab` (everything on loopback).
listen = {RELAY_LISTEN}
status_listen = {RELAY_STATUS}
spool_dir = "{spool_dir}"
resolver = {resolver[0]}:{resolver[1]}
ha_proxy_server = "{proxy}"
remote_smtp_port = {smtp_port}
tls = no
ehlo_hostname = relay.lab.test

ha_proxy_client {{
  health_check_mode = smtp
  health_check_target = "{SINK_HOST}:{smtp_port}"
  health_check_interval = 2
  health_check_timeout = 1
}}

binding {{
  ha_proxy_src_addr = {DEFAULT_SOURCE}
}}

binding warmup {{
  ha_proxy_src_addr = {WARMUP_SOURCE}
}}

Domain bypass.test {{
  ha_proxy_bypass = true
  bind_address = {BYPASS_BIND}
}}
"""


def zone_lines(dns: DNSServer) -> list[str]:
    """The sample zone, as it would read in a zone file."""
    lines = []
    for domain in DOMAINS:
        lines += [f"{domain}.  MX 10 mx.{domain}.", f"mx.{domain}.  A  {SINK_HOST}"]
    return lines


class Playground:
    """The parts one ``hatwist lab`` run started; :meth:`stop` stops exactly those."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.dns: DNSServer | None = None
        self.sink: SMTPSink | None = None
        self.haproxy: HAProxy | None = None
        self._watch: task.LoopingCall | None = None
        self._reported = 0

    async def start(self) -> None:
        self.dns = await DNSServer.start(self.reactor)
        self.sink = await SMTPSink.start(self.reactor, host=SINK_HOST, name="mx.lab.test")
        self.haproxy = HAProxy(self.reactor)
        await self.haproxy.start()
        for domain in DOMAINS:
            self.dns.add_mx(domain, [(10, f"mx.{domain}")])
            self.dns.add_a(f"mx.{domain}", SINK_HOST)

    def watch(self, out: TextIO) -> None:
        """Print each message the sink receives from now on: recipients and source."""

        def report() -> None:
            assert self.sink is not None
            for message in self.sink.messages[self._reported:]:
                out.write(f"sink received from {message.peer[0]}: "
                          f"<{message.mail_from}> -> {', '.join(message.rcpt_tos)}\n")
                out.flush()
            self._reported = len(self.sink.messages)

        self._watch = task.LoopingCall(report)
        self._watch.clock = self.reactor
        self._watch.start(POLL_INTERVAL, now=True)

    async def stop(self) -> None:
        """Stop HAProxy, the sink and DNS; each step is guarded, so this never fails."""
        if self._watch is not None and self._watch.running:
            self._watch.stop()
        for step in (self.haproxy and self.haproxy.stop, self.sink and self.sink.stop,
                     self.dns and self.dns.stop):
            if step:
                with contextlib.suppress(Exception):
                    await defer.maybeDeferred(step)


async def run_lab(reactor: Any, lab: Playground, out: TextIO, *, config_path: str | None,
                  spool_dir: str) -> None:
    """Start ``lab``, print how to use it, and report arrivals until the reactor stops."""
    await lab.start()
    assert lab.dns is not None and lab.sink is not None and lab.haproxy is not None
    text = relay_config(proxy=lab.haproxy.server_text, resolver=lab.dns.address,
                        smtp_port=lab.sink.port, spool_dir=spool_dir)
    say = out.write
    say(f"HAProxy   {lab.haproxy.server_text} (accept-proxy, usesrc clientip; "
        f"pid {lab.haproxy.pid})\n")
    say(f"DNS       {lab.dns.address[0]}:{lab.dns.address[1]} (UDP and TCP), this zone:\n")
    for line in zone_lines(lab.dns):
        say(f"            {line}\n")
    say(f"SMTP sink {lab.sink.host}:{lab.sink.port} (every domain's MX; prints what it "
        "receives below)\n\n")
    if config_path:
        with open(config_path, "w", encoding="utf-8") as f:
            f.write(text)
        say(f"A relay config for this lab is in {config_path}:\n\n")
    else:
        say("A relay config for this lab (save it, e.g. as lab.conf):\n\n")
    say("    " + text.rstrip("\n").replace("\n", "\n    ") + "\n\n")
    name = config_path or "lab.conf"
    say(f"Run your relay:   twistd -n --pidfile= hatwist --config {name}\n")
    say(f"Then submit:      swaks --server {RELAY_LISTEN} --from you@sender.test "
        "--to someone@pool-a.test\n")
    say("  another IP:     add --header 'X-Binding: warmup' (leaves from "
        f"{WARMUP_SOURCE}); bypass.test goes direct from {BYPASS_BIND}\n")
    say(f"Watch it:         hatwist status --config {name}\n\n")
    say(f"{READY}; Ctrl-C stops it.\n")
    out.flush()
    lab.watch(out)
    os.makedirs(spool_dir, exist_ok=True)
