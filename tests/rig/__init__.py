"""Real parts for tests: HAProxy, an SMTP sink, DNS, network namespaces (tests: tests.rig.test_rig).

Fixtures (``tests/conftest.py``, all function-scoped, torn down even on failure):
``reactor``, ``haproxy`` (started, 127.0.0.1, free port), ``smtp_sink`` (127.0.0.20),
``tls_smtp_sink`` (same, STARTTLS as ``mx.test``), ``dns_server``, ``netns`` (skips with
the reason where namespaces are not permitted). Everything returns Deferreds: ``await``
them in ``@pytest_twisted.ensureDeferred`` tests.

HAProxy (:mod:`tests.rig.haproxy`)::

    relay = HAProxy(reactor, host="127.0.0.1", port=None, netns=None, connect_timeout=5.0)
    await relay.start(); await relay.stop(); await relay.restart()  # same host and port
    relay.host, relay.port, relay.server_text ("127.0.0.1:PORT"), relay.running
    relay.logs (list of lines); await relay.wait_for_log("out/mx", timeout=5)

SMTP sink (:mod:`tests.rig.sink`)::

    sink = await SMTPSink.start(reactor, host="127.0.0.20", port=0, tls=False, name="mx.test")
    sink.host, sink.port, sink.sessions (SinkSession), sink.messages (SinkMessage)
    sink.greeting = (554, "5.3.2 no") | SILENT;  sink.replies["MAIL"] = (451, "4.3.0 later")
    sink.recipient_replies["bad@x.test"] = (550, "5.1.1 no");  sink.drop_in_data = True
    sink.replies[END_OF_DATA] = SILENT;  sink.client_tls_options("mx.test")
    await sink.wait_for(n, timeout); await sink.wait_closed(timeout); await sink.stop()

DNS (:mod:`tests.rig.dns`)::

    dns = await DNSServer.start(reactor);  dns.address == ("127.0.0.1", port)
    dns.add_mx("example.test", [(10, "mx1.example.test")]);  dns.add_mx("n.test", [(0, ".")])
    dns.add_a(name, ip); dns.add_aaaa(name, ip); dns.add_cname(name, target); dns.remove(name)
    dns.servfail(name); dns.blackhole(name); dns.queries; await dns.stop()
    resolver = twisted.names.client.Resolver(servers=[dns.address], timeout=(2,))

Namespaces (:mod:`tests.rig.netns`)::

    ns = await NetNS.create(reactor, addresses=("fd00::9/128", "fd00::20/128"))
    result = await ns.run("python3", "-m", "tests.rig.netns_probe", ..., cwd=ROOT)
    HAProxy(reactor, netns=ns.name);  await ns.delete()

Also: :mod:`tests.rig.smtp` (``send(reactor, endpoint, ...)``: one SMTP conversation with a
deadline, STARTTLS optional), :mod:`tests.rig.certs` (``shared_ca().issue("mx.test")``),
:mod:`tests.rig.needs` (``require_haproxy()``, ``require_netns()``).
"""
