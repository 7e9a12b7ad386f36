"""The ``hatwist demo`` scenario: one relay, the whole lab, a few messages (tests:
tests.test_demo).

A newcomer should see, in one run and without any outside network, what hatwist is for:
the binding of a message picks the source IP a real HAProxy connects from, and a bypassed
domain goes direct. So this starts the lab (real HAProxy on a free 127.0.0.1 port, the
in-process DNS server, a recording SMTP sink on :data:`SINK_HOST`), builds a
:class:`~hatwist.tap.RelayService` from :func:`sample_config`, waits until a health check
has proved the proxy, submits :data:`MESSAGES` over SMTP, waits for them at the sink, and
reports one :class:`Row` per message: the route the relay chose (from its one log event
per attempt) and the source address the sink really saw. Every part it started is stopped
again by :meth:`Lab.stop`, also when the run fails or is interrupted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TextIO

import attrs
from twisted.internet import defer, task, threads
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.logger import globalLogPublisher

from hatwist._text_table import text_table
from hatwist.config import parse_config
from hatwist.lab.dns import DNSServer
from hatwist.lab.haproxy import HAProxy
from hatwist.lab.sink import SMTPSink
from hatwist.lab.smtp import send
from hatwist.web import DELIVERY_EVENT

#: Where the sink (every demo domain's MX) listens; any 127.0.0.0/8 address is local.
SINK_HOST = "127.0.0.20"
#: PROXY source of the default binding, of the ``warmup`` binding, and the local address
#: the bypassed domain's direct connections are bound to.
DEFAULT_SOURCE = "127.0.0.9"
WARMUP_SOURCE = "127.0.0.10"
BYPASS_BIND = "127.0.0.30"
#: Demo destination domains; ``bypass.test`` is delivered directly, not through HAProxy.
DOMAINS = ("pool-a.test", "pool-b.test", "bypass.test")
#: The relay's EHLO name and ``Received:`` host (also spares a blocking FQDN lookup).
RELAY_HOSTNAME = "relay.demo.test"
SENDER = "demo@sender.test"

#: Deadlines (seconds): the first successful health check, each submission, and every
#: message arriving at the sink. The whole demo normally takes about two seconds.
PLUMB_DEADLINE = 5.0
SUBMIT_DEADLINE = 5.0
DELIVERY_DEADLINE = 10.0
#: How often the waits above look again (they watch in-memory state, never the network).
POLL_INTERVAL = 0.05

class DemoError(Exception):
    """The demo could not show what it promises; the message says which step failed."""


@attrs.frozen
class DemoMessage:
    """One message the demo submits, and the source address its binding promises."""

    label: str
    binding: str  # sent as ``X-Binding`` unless "default"
    recipient: str
    expected_source: str

    def content(self) -> bytes:
        lines = [
            f"From: <{SENDER}>",
            f"To: <{self.recipient}>",
            f"Subject: hatwist demo message {self.label}",
            f"Message-ID: <demo-{self.label}@{RELAY_HOSTNAME}>",
        ]
        if self.binding != "default":
            lines.append(f"X-Binding: {self.binding}")
        lines += ["", f"Hello from the hatwist demo, message {self.label}.", ""]
        return "\n".join(lines).encode("ascii")


MESSAGES = (
    DemoMessage("1", "default", "alice@pool-a.test", DEFAULT_SOURCE),
    DemoMessage("2", "warmup", "bob@pool-b.test", WARMUP_SOURCE),
    DemoMessage("3", "warmup", "carol@pool-a.test", WARMUP_SOURCE),
    DemoMessage("4", "default", "dave@bypass.test", BYPASS_BIND),
)


@attrs.frozen
class Row:
    """What happened to one demo message, as the table shows it."""

    message: DemoMessage
    route: str  # "proxy SERVER from SRC", "direct", or "-" when no attempt was seen
    seen_source: str | None  # the peer address the sink saw, None if it never arrived
    result: str
    ok: bool


def sample_config(
    *, proxy: str, resolver: tuple[str, int], smtp_port: int, spool_dir: str
) -> str:
    """The demo's config file: two bindings through ``proxy`` and one bypassed domain."""
    return f"""\
# hatwist demo config: everything on loopback, made for this one run.
# Inbound SMTP, and the /status, /metrics and HTML page listener (port 0: any free one).
listen = 127.0.0.1:0
status_listen = 127.0.0.1:0
spool_dir = "{spool_dir}"
# The demo's own DNS server, and its HAProxy (accept-proxy, usesrc clientip).
resolver = {resolver[0]}:{resolver[1]}
ha_proxy_server = "{proxy}"
# Every MX is the demo's sink, on this port (real MXs listen on 25), without STARTTLS.
remote_smtp_port = {smtp_port}
tls = no
ehlo_hostname = {RELAY_HOSTNAME}
retry_interval = 2
connect_timeout = 2
smtp_timeout = 5
shutdown_grace = 2

# Health checks: a PROXY header from each source address, then the target's 220 banner.
ha_proxy_client {{
  health_check_mode = smtp
  health_check_target = "{SINK_HOST}:{smtp_port}"
  health_check_interval = 2
  health_check_timeout = 1
  health_check_success_threshold = 1
  health_check_failure_threshold = 1
}}

# The default binding: mail submitted without an X-Binding header. IPv4 sources only
# (the demo's MXs have no IPv6 address; check-config would warn about that).
binding {{
  ha_proxy_src_addr = {DEFAULT_SOURCE}
}}

# Mail submitted with "X-Binding: warmup".
binding warmup {{
  ha_proxy_src_addr = {WARMUP_SOURCE}
}}

# Mail to bypass.test goes straight to its MX, from {BYPASS_BIND}, not through HAProxy.
Domain bypass.test {{
  ha_proxy_bypass = true
  bind_address = {BYPASS_BIND}
}}
"""


def build_rows(
    messages: Iterable[DemoMessage],
    attempts: Mapping[str, Mapping[str, Any]],
    arrived: Mapping[str, str],
) -> list[Row]:
    """One row per message from the last attempt event per recipient and the sink's view.

    ``arrived`` maps recipient -> the peer address the sink saw. A message is ``ok`` only
    when it arrived from the source its binding promises.
    """
    rows = []
    for message in messages:
        event = attempts.get(message.recipient, {})
        route = event.get("route") or "-"
        seen = arrived.get(message.recipient)
        code = (event.get("codes") or {}).get(message.recipient)
        if seen is None:
            why = event.get("error") or (f"answered {code}" if code else "no attempt yet")
            rows.append(Row(message, route, None, f"NOT DELIVERED: {why}", False))
        elif seen != message.expected_source:
            wrong = f"WRONG SOURCE (expected {message.expected_source})"
            rows.append(Row(message, route, seen, wrong, False))
        else:
            rows.append(Row(message, route, seen, f"delivered ({code or 250})", True))
    return rows


_HEADINGS = ("message", "binding", "recipient", "route", "sink saw", "result")


def format_table(rows: Iterable[Row]) -> str:
    """The rows as an aligned plain-text table."""
    cells = (
        (
            r.message.label,
            r.message.binding,
            r.message.recipient,
            r.route,
            r.seen_source or "-",
            r.result,
        )
        for r in rows
    )
    return "\n".join(text_table(_HEADINGS, cells, indent="", rule=True)) + "\n"


async def wait_until(
    reactor: Any, predicate: Callable[[], bool], timeout: float, what: str
) -> None:
    """Return once ``predicate()`` holds; raise :class:`DemoError` naming ``what`` after
    ``timeout`` seconds."""
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() >= deadline:
            raise DemoError(f"timed out after {timeout:g}s waiting for {what}")
        await task.deferLater(reactor, POLL_INTERVAL)


class Lab:
    """The parts one demo run started, so that :meth:`stop` can stop exactly those."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.dns: DNSServer | None = None
        self.sink: SMTPSink | None = None
        self.haproxy: HAProxy | None = None
        self.relay: Any = None
        self.workdir: str | None = None
        self.attempts: dict[str, Mapping[str, Any]] = {}
        self._stopping: defer.Deferred[None] | None = None
        globalLogPublisher.addObserver(self._observe)

    def _observe(self, event: Mapping[str, Any]) -> None:
        """Keep the delivery agent's latest attempt event for each recipient."""
        if event.get("hatwist_event") != DELIVERY_EVENT:
            return
        codes = event.get("codes")
        if isinstance(codes, Mapping):
            for recipient in codes:
                self.attempts[str(recipient)] = event

    def stop(self) -> defer.Deferred[None]:
        """Stop the relay, HAProxy, the sink and DNS, and remove the spool; idempotent."""
        if self._stopping is None:
            self._stopping = defer.Deferred.fromCoroutine(self._stop())
        d: defer.Deferred[None] = defer.Deferred()
        self._stopping.addCallback(d.callback)  # _stop never fails: each step is guarded
        return d

    async def _stop(self) -> None:
        globalLogPublisher.removeObserver(self._observe)
        # The relay first: it stops accepting, finishes attempts in flight, closes sessions.
        relay_running = self.relay is not None and self.relay.running
        steps = [relay_running and self.relay.stopService, self.haproxy and self.haproxy.stop,
                 self.sink and self.sink.stop, self.dns and self.dns.stop]
        for step in steps:
            if step:
                with contextlib.suppress(Exception):
                    await defer.maybeDeferred(step)
        if self.workdir is not None:
            with contextlib.suppress(Exception):
                await threads.deferToThread(shutil.rmtree, self.workdir, ignore_errors=True)


def _status_url(relay: Any) -> str | None:
    """``http://host:port/status`` of the relay's status site, if it is listening."""
    port = relay.status_listener.port
    if port is None:
        return None
    address = port.getHost()
    return f"http://{address.host}:{address.port}/status"


async def run_demo(
    reactor: Any, lab: Lab, out: TextIO, *, show_config: bool = True, hold: float = 0.0
) -> bool:
    """Run the demo with ``lab``'s parts, print to ``out``; True when every message arrived
    from its binding's source. Raises :class:`DemoError` when a step fails or times out.
    The caller stops ``lab`` (whatever happens)."""
    from hatwist.tap import RelayService  # the whole relay: only needed here

    def say(text: str = "") -> None:
        out.write(text + "\n")
        out.flush()

    lab.dns = await DNSServer.start(reactor)
    lab.sink = await SMTPSink.start(reactor, host=SINK_HOST, name="mx.demo.test")
    lab.haproxy = HAProxy(reactor)
    await lab.haproxy.start()
    for domain in DOMAINS:
        lab.dns.add_mx(domain, [(10, f"mx.{domain}")])
        lab.dns.add_a(f"mx.{domain}", SINK_HOST)
    say(f"HAProxy {lab.haproxy.server_text} (pid {lab.haproxy.pid}; accept-proxy, "
        "usesrc clientip), "
        f"DNS {lab.dns.address[0]}:{lab.dns.address[1]}, "
        f"SMTP sink {lab.sink.host}:{lab.sink.port} (MX of {', '.join(DOMAINS)})")

    lab.workdir = tempfile.mkdtemp(prefix="hatwist-demo-")
    text = sample_config(
        proxy=lab.haproxy.server_text,
        resolver=lab.dns.address,
        smtp_port=lab.sink.port,
        spool_dir=os.path.join(lab.workdir, "spool"),
    )
    if show_config:
        say("\nThe relay's config:\n")
        say("    " + text.rstrip("\n").replace("\n", "\n    "))
    config = parse_config(text, filename="<hatwist demo>")
    lab.relay = relay = RelayService(config, reactor=reactor, hostname=RELAY_HOSTNAME)
    relay.startService()
    listening = relay.listener.listening
    port = await listening.addTimeout(SUBMIT_DEADLINE, reactor)
    listen_port = port.getHost().port

    (server,) = config.proxy_servers

    def plumbed() -> bool:
        status = relay.registry.status(server)
        return status.consecutive_successes >= 1 and relay.registry.is_plumbed(server)

    await wait_until(reactor, plumbed, PLUMB_DEADLINE,
                     f"a successful health check of {server.text}")
    say(f"\nRelay listening on 127.0.0.1:{listen_port}; proxy {server.text} is plumbed "
        f"(health check proved sources {', '.join(config.sources_for(server))}).")

    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", listen_port, timeout=SUBMIT_DEADLINE)
    for message in MESSAGES:
        conversation = await send(
            reactor, endpoint, mail_from=SENDER, rcpt_tos=(message.recipient,),
            data=message.content(), helo="submitter.demo.test", timeout=SUBMIT_DEADLINE,
        )
        if not conversation.delivered:
            raise DemoError(
                f"the relay did not accept message {message.label}: "
                f"{conversation.exchanges[-1][1] if conversation.exchanges else conversation.lost}"
            )
    say(f"Submitted {len(MESSAGES)} messages over SMTP; waiting for them at the sink.\n")

    def arrived() -> dict[str, str]:
        return {rcpt: m.peer[0] for m in lab.sink.messages for rcpt in m.rcpt_tos}

    def all_seen() -> bool:
        seen = arrived()
        return all(m.recipient in seen and m.recipient in lab.attempts for m in MESSAGES)

    timed_out: DemoError | None = None
    try:
        await wait_until(reactor, all_seen, DELIVERY_DEADLINE, "every message at the sink")
    except DemoError as e:
        timed_out = e
    rows = build_rows(MESSAGES, lab.attempts, arrived())
    say(format_table(rows))
    url = _status_url(relay)
    if timed_out is not None:
        raise timed_out
    if url is not None and hold > 0:
        say(f"Status: {url} (also /metrics, and the HTML page at /).")
    elif url is not None:
        say(f"The relay's status was at {url} while it ran; "
            "`hatwist demo --hold 60` keeps it up for a look.")
    if hold > 0:
        say(f"Keeping everything running for {hold:g}s (Ctrl-C stops it sooner).")
        await task.deferLater(reactor, hold)
    return all(row.ok for row in rows)
