"""A self-contained loopback lab: real HAProxy, authoritative DNS, a recording SMTP sink —
for ``hatwist demo`` and the test suite (tests: tests.rig.test_rig).

Everything here runs on loopback (or inside a network namespace a test made) and is torn
down by whoever started it. Each module has one job:

HAProxy (:mod:`hatwist.lab.haproxy`), shaped like production (``accept-proxy`` frontend,
``usesrc clientip`` backend; needs root)::

    relay = HAProxy(reactor, host="127.0.0.1", port=None, netns=None, connect_timeout=5.0)
    await relay.start(); await relay.stop(); await relay.restart()  # same host and port
    relay.host, relay.port, relay.server_text ("127.0.0.1:PORT"), relay.running
    relay.logs (list of lines); await relay.wait_for_log("out/mx", timeout=5)
    find_haproxy() -> path or None; haproxy_available(); free_port(host)

SMTP sink (:mod:`hatwist.lab.sink`)::

    sink = await SMTPSink.start(reactor, host="127.0.0.20", port=0, tls=False, name="mx.test")
    sink.host, sink.port, sink.sessions (SinkSession), sink.messages (SinkMessage)
    sink.greeting = (554, "5.3.2 no") | SILENT;  sink.replies["MAIL"] = (451, "4.3.0 later")
    sink.recipient_replies["bad@x.test"] = (550, "5.1.1 no");  sink.drop_in_data = True
    sink.replies[END_OF_DATA] = SILENT;  sink.client_tls_options("mx.test")
    await sink.wait_for(n, timeout); await sink.wait_closed(timeout); await sink.stop()

DNS (:mod:`hatwist.lab.dns`)::

    dns = await DNSServer.start(reactor);  dns.address == ("127.0.0.1", port)
    dns.add_mx("example.test", [(10, "mx1.example.test")]);  dns.add_mx("n.test", [(0, ".")])
    dns.add_a(name, ip); dns.add_aaaa(name, ip); dns.add_cname(name, target); dns.remove(name)
    dns.servfail(name); dns.blackhole(name); dns.queries; await dns.stop()

Also :mod:`hatwist.lab.smtp` (``send(reactor, endpoint, ...)``: one SMTP conversation with
a deadline, STARTTLS optional) and :mod:`hatwist.lab.certs` (``shared_ca().issue("mx.test")``,
throw-away certificates for the sink's STARTTLS).
"""
