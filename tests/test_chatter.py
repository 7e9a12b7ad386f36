"""Tests for hatwist._chatter: what a DNS lookup logged is dropped, nothing else is."""

from __future__ import annotations

import pytest_twisted
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from hatwist._chatter import is_chatter, without_chatter
from hatwist.mx import MXResolver, build_resolver
from tests.rig.dns import DNSServer


@pytest_twisted.ensureDeferred
async def test_a_real_lookup_logs_only_chatter_and_the_filter_drops_all_of_it(reactor):
    dns = await DNSServer.start(reactor)
    dns.add_mx("x.test", [(10, "mx.x.test")])
    dns.add_a("mx.x.test", "127.0.0.20")
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    resolver = MXResolver(build_resolver(dns.address, reactor=reactor), reactor=reactor)
    try:
        hosts = await resolver.resolve("x.test").addTimeout(10, reactor)
    finally:
        resolver.close()
        await dns.stop()
        globalLogPublisher.removeObserver(events.append)
    assert hosts[0].addresses == ("127.0.0.20",)
    texts = [formatEvent(e) for e in events]
    assert any("UDP Port" in t for t in texts) and any("starting on" in t for t in texts)
    kept: list[dict] = []
    filtered = without_chatter(kept.append)
    for event in events:
        filtered(event)
    leftover = [formatEvent(e) for e in kept]
    assert not [t for t in leftover if "UDP" in t or "DNSDatagramProtocol" in t], leftover


def test_errors_and_other_lines_are_never_chatter():
    events = [
        {"log_namespace": "log_legacy", "log_level": LogLevel.info,
         "log_text": "(UDP Port 5353 Closed)"},
        {"log_namespace": "log_legacy", "log_level": LogLevel.error, "isError": 1,
         "log_text": "(UDP Port 5353 Closed)"},
        {"log_namespace": "log_legacy", "log_level": LogLevel.info,
         "log_text": "(TCP Port 2525 Closed)"},
        {"log_namespace": "hatwist.tap", "log_level": LogLevel.info,
         "log_format": "(UDP Port 1 Closed)"},
        {"log_namespace": "log_legacy", "message": ("DNSDatagramProtocol starting on 41459",)},
    ]
    assert [is_chatter(e) for e in events] == [True, False, False, False, True]


def test_the_relays_buffered_log_drops_chatter_and_keeps_the_rest():
    import io

    from twisted.internet import task

    from hatwist._logging import BufferedFileLogObserver

    class Reactor(task.Clock):
        running = False

        def addSystemEventTrigger(self, *args):
            pass

    out = io.StringIO()
    observer = BufferedFileLogObserver(out, lambda e: e["log_text"] + "\n", Reactor())
    observer({"log_namespace": "log_legacy", "log_level": LogLevel.info,
              "log_text": "(UDP Port 41459 Closed)"})
    observer({"log_namespace": "log_legacy", "log_level": LogLevel.info,
              "log_text": "(TCP Port 2525 Closed)"})
    assert out.getvalue() == "(TCP Port 2525 Closed)\n"
