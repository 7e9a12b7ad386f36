"""Tests of the rig itself: HAProxy, the SMTP sink, the DNS server, namespaces.

These use hand-built PROXY headers (not hatwist's codec), so a failure here is the rig's.
"""

from __future__ import annotations

import socket
import struct

import pytest
import pytest_twisted
from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.names import client, dns, error
from twisted.protocols import policies

from tests.rig.haproxy import HAProxy, HAProxyError
from tests.rig.needs import require_haproxy
from tests.rig.sink import END_OF_DATA, SILENT, SMTPSink
from tests.rig.smtp import send

V2_SIGNATURE = bytes.fromhex("0d0a0d0a000d0a515549540a")
DEADLINE = 5.0


def v2_tcp4_header(src: str, dst: str, sport: int, dport: int) -> bytes:
    """A PROXY v2 TCP/IPv4 header built by hand from the spec (FIELD-NOTES section 2)."""
    addresses = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    return V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(addresses)) + addresses


class _HeaderFirst(policies.ProtocolWrapper):
    def makeConnection(self, transport):
        transport.write(self.factory.header)
        super().makeConnection(transport)


class _HeaderFirstFactory(policies.WrappingFactory):
    protocol = _HeaderFirst

    def __init__(self, wrapped, header: bytes):
        super().__init__(wrapped)
        self.header = header


class HeaderFirstEndpoint:
    """Just enough of a PROXY client endpoint to test the rig without hatwist's code."""

    def __init__(self, endpoint, header: bytes):
        self._endpoint, self._header = endpoint, header

    def connect(self, factory):
        d = self._endpoint.connect(_HeaderFirstFactory(factory, self._header))
        return d.addCallback(lambda proto: proto.wrappedProtocol)


class _Collect(protocol.Protocol):
    def __init__(self):
        self.data = b""
        self.closed = defer.Deferred()

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.closed.callback(self.data)


def direct(reactor, sink):
    return TCP4ClientEndpoint(reactor, sink.host, sink.port)


# -- HAProxy ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_haproxy_relays_from_the_header_source(reactor, haproxy, smtp_sink):
    header = v2_tcp4_header("127.0.0.9", "127.0.0.20", 0, smtp_sink.port)
    endpoint = HeaderFirstEndpoint(TCP4ClientEndpoint(reactor, haproxy.host, haproxy.port), header)
    conversation = await send(reactor, endpoint, timeout=DEADLINE)
    assert conversation.delivered
    assert smtp_sink.sessions[0].peer[0] == "127.0.0.9"
    assert await haproxy.wait_for_log("out/mx", timeout=DEADLINE)


@pytest_twisted.ensureDeferred
async def test_haproxy_restart_keeps_address_and_serves_again(reactor, haproxy, smtp_sink):
    port = haproxy.port
    await haproxy.restart()
    assert haproxy.running and haproxy.port == port
    assert haproxy.server_text == f"127.0.0.1:{port}"
    header = v2_tcp4_header("127.0.0.9", "127.0.0.20", 0, smtp_sink.port)
    endpoint = HeaderFirstEndpoint(TCP4ClientEndpoint(reactor, haproxy.host, port), header)
    conversation = await send(reactor, endpoint, timeout=DEADLINE)
    assert conversation.delivered


@pytest_twisted.ensureDeferred
async def test_haproxy_stopped_refuses_connections(reactor, haproxy):
    await haproxy.stop()
    assert not haproxy.running
    endpoint = TCP4ClientEndpoint(reactor, haproxy.host, haproxy.port, timeout=DEADLINE)
    with pytest.raises(Exception, match="refused"):
        await connectProtocol(endpoint, protocol.Protocol())


@pytest_twisted.ensureDeferred
async def test_haproxy_loop_guard_rejects_header_aimed_at_itself(reactor, haproxy):
    header = v2_tcp4_header("127.0.0.9", "127.0.0.1", 0, haproxy.port)
    endpoint = TCP4ClientEndpoint(reactor, haproxy.host, haproxy.port)
    collect = _Collect()
    await connectProtocol(endpoint, collect)
    collect.transport.write(header)
    received = await collect.closed.addTimeout(DEADLINE, reactor)
    assert received == b""
    line = await haproxy.wait_for_log("127.0.0.9:0", timeout=DEADLINE)
    assert "relay/" in line and "out/" not in line


@pytest_twisted.ensureDeferred
async def test_haproxy_logs_a_malformed_header(reactor, haproxy):
    collect = _Collect()
    await connectProtocol(TCP4ClientEndpoint(reactor, haproxy.host, haproxy.port), collect)
    collect.transport.write(b"HELLO THERE, THIS IS NOT A PROXY HEADER\r\n")
    await collect.closed.addTimeout(DEADLINE, reactor)
    line = await haproxy.wait_for_log("PROXY protocol header", timeout=DEADLINE)
    assert "relay/" in line


@pytest_twisted.ensureDeferred
async def test_haproxy_start_failure_reports_output(reactor):
    require_haproxy()
    relay = HAProxy(reactor, netns="hatwist-no-such-namespace")
    try:
        with pytest.raises(HAProxyError, match="exited during start-up"):
            await relay.start(timeout=DEADLINE)
        assert any("hatwist-no-such-namespace" in line for line in relay.logs)
    finally:
        await relay.close()


def test_haproxy_config_has_the_production_shape(reactor):
    relay = HAProxy(reactor, port=2525, connect_timeout=1.5)
    text = relay.config_text()
    assert "bind 127.0.0.1:2525 accept-proxy" in text
    assert "tcp-request session reject if { dst_port 2525 }" in text
    assert "server mx 0.0.0.0 source 0.0.0.0 usesrc clientip" in text
    assert "server mx6 ::: source ::: usesrc clientip" in text
    assert text.index("use-server mx if { src 0.0.0.0/0 }") < text.index(
        "use-server mx6 if { src ::/0 }"
    )
    assert "timeout connect 1500ms" in text
    assert "\n    user" not in text and "\n    group" not in text


# -- SMTP sink ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_sink_records_envelope_peer_and_unstuffed_raw_data(reactor, smtp_sink):
    body = b"Subject: dots\n\n.leading dot\n..two dots\nend\n"
    conversation = await send(
        reactor,
        direct(reactor, smtp_sink),
        mail_from="a@client.test",
        rcpt_tos=("b@mx.test", "c@mx.test"),
        data=body,
        helo="relay.client.test",
    )
    assert conversation.delivered
    await smtp_sink.wait_for(1, timeout=DEADLINE)
    [message] = smtp_sink.messages
    assert message.mail_from == "a@client.test"
    assert message.rcpt_tos == ("b@mx.test", "c@mx.test")
    assert message.data == b"Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\nend\r\n"
    assert message.helo == "relay.client.test"
    assert message.peer[0] == "127.0.0.1" and not message.tls
    await smtp_sink.wait_closed(timeout=DEADLINE)
    [session] = smtp_sink.sessions
    assert session.commands[0] == "EHLO relay.client.test"
    assert session.commands[-1] == "QUIT" and session.closed


@pytest_twisted.ensureDeferred
async def test_sink_does_not_end_data_at_a_bare_lf_dot(reactor, smtp_sink):
    collect = _Collect()
    await connectProtocol(direct(reactor, smtp_sink), collect)
    collect.transport.write(
        b"EHLO c\r\nMAIL FROM:<a@c>\r\nRCPT TO:<b@m>\r\nDATA\r\none\n.\nMAIL FROM:<x@y>\r\n"
        b".\r\nQUIT\r\n"
    )
    await collect.closed.addTimeout(DEADLINE, reactor)
    [message] = smtp_sink.messages
    assert message.data == b"one\n.\nMAIL FROM:<x@y>\r\n"


@pytest_twisted.ensureDeferred
async def test_sink_answers_per_recipient_codes(reactor, smtp_sink):
    smtp_sink.recipient_replies["bad@mx.test"] = (550, "5.1.1 no such user")
    smtp_sink.recipient_replies["later@mx.test"] = (451, "4.2.0 try later")
    conversation = await send(
        reactor, direct(reactor, smtp_sink), rcpt_tos=("bad@mx.test",), timeout=DEADLINE
    )
    assert conversation.reply_to("RCPT").code == 550 and not conversation.delivered
    conversation = await send(
        reactor, direct(reactor, smtp_sink), rcpt_tos=("later@mx.test",), timeout=DEADLINE
    )
    assert conversation.reply_to("RCPT").text == "4.2.0 try later"
    assert smtp_sink.messages == []
    assert [s.rcpt_tos for s in smtp_sink.sessions] == [["bad@mx.test"], ["later@mx.test"]]


@pytest_twisted.ensureDeferred
async def test_sink_answers_mail_with_configured_temporary_failure(reactor, smtp_sink):
    smtp_sink.replies["MAIL"] = (451, "4.3.0 try later")
    conversation = await send(reactor, direct(reactor, smtp_sink), timeout=DEADLINE)
    assert conversation.reply_to("MAIL").code == 451
    assert smtp_sink.messages == []


@pytest_twisted.ensureDeferred
async def test_sink_refusing_greeting(reactor, smtp_sink):
    smtp_sink.greeting = (554, "5.3.2 not today")
    conversation = await send(reactor, direct(reactor, smtp_sink), timeout=DEADLINE)
    assert conversation.exchanges == [(None, conversation.exchanges[0][1])]
    assert conversation.exchanges[0][1].code == 554


@pytest_twisted.ensureDeferred
async def test_sink_silent_server_never_greets(reactor, smtp_sink):
    smtp_sink.greeting = SILENT
    with pytest.raises(defer.TimeoutError):
        await send(reactor, direct(reactor, smtp_sink), timeout=0.3)
    assert len(smtp_sink.sessions) == 1
    await smtp_sink.wait_closed(timeout=DEADLINE)


@pytest_twisted.ensureDeferred
async def test_sink_drops_connection_in_data(reactor, smtp_sink):
    smtp_sink.drop_in_data = True
    conversation = await send(reactor, direct(reactor, smtp_sink), timeout=DEADLINE)
    assert not conversation.delivered
    assert conversation.exchanges[-1][0] == "DATA"
    assert conversation.lost is not None
    assert smtp_sink.messages == []


@pytest_twisted.ensureDeferred
async def test_sink_silent_after_data(reactor, smtp_sink):
    smtp_sink.replies[END_OF_DATA] = SILENT
    with pytest.raises(defer.TimeoutError):
        await send(reactor, direct(reactor, smtp_sink), timeout=0.3)
    assert smtp_sink.messages == []


@pytest_twisted.ensureDeferred
async def test_sink_starttls_records_tls_and_verifies_as_mx_test(reactor, tls_smtp_sink):
    sink = tls_smtp_sink
    conversation = await send(
        reactor, direct(reactor, sink), tls=sink.client_tls_options(), timeout=DEADLINE
    )
    assert conversation.delivered and conversation.tls
    [message] = sink.messages
    assert message.tls and sink.sessions[0].tls


@pytest_twisted.ensureDeferred
async def test_sink_certificate_fails_verification_for_another_name(reactor, tls_smtp_sink):
    sink = tls_smtp_sink
    conversation = await send(
        reactor,
        direct(reactor, sink),
        tls=sink.client_tls_options("other.test"),
        timeout=DEADLINE,
    )
    assert not conversation.delivered and conversation.lost is not None
    assert sink.messages == []


@pytest_twisted.ensureDeferred
async def test_sink_without_tls_does_not_offer_starttls(reactor, smtp_sink):
    from tests.rig.certs import shared_ca

    conversation = await send(
        reactor,
        direct(reactor, smtp_sink),
        tls=shared_ca().client_options("mx.test"),
        timeout=DEADLINE,
    )
    assert "STARTTLS" not in conversation.reply_to("EHLO").text
    assert not conversation.delivered


@pytest_twisted.ensureDeferred
async def test_sink_stop_aborts_open_sessions(reactor):
    sink = await SMTPSink.start(reactor, host="127.0.0.20")
    collect = _Collect()
    await connectProtocol(direct(reactor, sink), collect)
    await sink.wait_for_sessions(1, timeout=DEADLINE)
    await sink.stop()
    await collect.closed.addTimeout(DEADLINE, reactor)
    assert sink.connections == 0


# -- DNS ----------------------------------------------------------------------------------


def resolver(dns_server, timeout=(DEADLINE,)):
    return client.Resolver(servers=[dns_server.address], timeout=timeout)


@pytest_twisted.ensureDeferred
async def test_dns_answers_mx_a_and_aaaa(dns_server):
    dns_server.add_mx("example.test", [(10, "mx1.example.test"), (20, "mx2.example.test")])
    dns_server.add_a("mx1.example.test", "127.0.0.20")
    dns_server.add_aaaa("mx1.example.test", "fd00::20")
    r = resolver(dns_server)
    answers, _, _ = await r.lookupMailExchange("example.test")
    assert sorted((a.payload.preference, str(a.payload.name)) for a in answers) == [
        (10, "mx1.example.test"),
        (20, "mx2.example.test"),
    ]
    answers, _, _ = await r.lookupAddress("mx1.example.test")
    assert [a.payload.dottedQuad() for a in answers] == ["127.0.0.20"]
    answers, _, _ = await r.lookupIPV6Address("MX1.example.test")
    assert [socket.inet_ntop(socket.AF_INET6, a.payload.address) for a in answers] == ["fd00::20"]
    assert [(q.name, q.type) for q in dns_server.queries] == [
        ("example.test", dns.MX),
        ("mx1.example.test", dns.A),
        ("mx1.example.test", dns.AAAA),
    ]


@pytest_twisted.ensureDeferred
async def test_dns_null_mx(dns_server):
    dns_server.add_mx("nomail.test", [(0, ".")])
    answers, _, _ = await resolver(dns_server).lookupMailExchange("nomail.test")
    assert [(a.payload.preference, a.payload.name.name) for a in answers] == [(0, b"")]


@pytest_twisted.ensureDeferred
async def test_dns_unknown_name_is_nxdomain_and_known_name_without_type_is_empty(dns_server):
    dns_server.add_a("host.test", "127.0.0.20")
    with pytest.raises(error.DNSNameError):
        await resolver(dns_server).lookupAddress("nothere.test")
    answers, authority, _ = await resolver(dns_server).lookupMailExchange("host.test")
    assert answers == [] and authority[0].type == dns.SOA


@pytest_twisted.ensureDeferred
async def test_dns_servfail_and_blackhole(dns_server):
    dns_server.add_a("broken.test", "127.0.0.20")
    dns_server.servfail("broken.test")
    dns_server.blackhole("silent.test")
    with pytest.raises(error.DNSServerError):
        await resolver(dns_server).lookupAddress("broken.test")
    with pytest.raises(defer.TimeoutError):
        await resolver(dns_server, timeout=(0.2,)).lookupAddress("silent.test")
    dns_server.remove("broken.test")
    with pytest.raises(error.DNSNameError):
        await resolver(dns_server).lookupAddress("broken.test")


@pytest_twisted.ensureDeferred
async def test_dns_answers_over_tcp(dns_server):
    dns_server.add_a("tcp.test", "127.0.0.21")
    message = await resolver(dns_server).queryTCP([dns.Query(b"tcp.test", dns.A)])
    assert [a.payload.dottedQuad() for a in message.answers] == ["127.0.0.21"]
    assert dns_server.queries[-1].protocol == "tcp"


# -- network namespaces -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_netns_has_its_addresses_and_is_deleted(reactor, netns):
    result = await netns.run("ip", "-6", "addr", "show", "dev", "lo")
    assert result.code == 0
    assert b"fd00::9/128" in result.out and b"fd00::20/128" in result.out
    result = await netns.run("ip", "-4", "addr", "show", "dev", "lo")
    assert b"127.0.0.1/8" in result.out
    await netns.delete()
    from tests.rig.netns import run_process

    listing = await run_process(reactor, ["ip", "netns", "list"], DEADLINE)
    assert netns.name.encode() not in listing.out
