"""End to end through a real HAProxy: the source IP the client asks for is the one the MX sees.

This is the proof for issue 2: the ``haproxy:`` endpoint string and
:class:`hatwist.endpoint.HAProxyClientEndpoint` write a header that HAProxy 2.6 (the shape
of FIELD-NOTES section 3, ``usesrc clientip``) turns into a TCP connection from the
requested source to the requested destination, for IPv4 on loopback and for IPv6 inside a
network namespace, with STARTTLS working across the hop.
"""

from __future__ import annotations

import json
import os

import pytest
import pytest_twisted
from twisted.internet import defer, protocol
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    clientFromString,
    connectProtocol,
    serverFromString,
)

from hatwist.endpoint import HAProxyClientEndpoint
from tests.rig.haproxy import HAProxy
from tests.rig.netns_probe import endpoint_string
from tests.rig.smtp import send

pytestmark = pytest.mark.integration

DEADLINE = 10.0
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("source", ["127.0.0.9", "127.0.0.77"])
@pytest_twisted.ensureDeferred
async def test_endpoint_string_delivers_from_requested_source(reactor, haproxy, smtp_sink, source):
    endpoint = clientFromString(
        reactor,
        f"haproxy:127.0.0.1:{haproxy.port}:src={source}:dst=127.0.0.20:dport={smtp_sink.port}",
    )
    conversation = await send(
        reactor, endpoint, mail_from="a@client.test", rcpt_tos=("b@mx.test",), timeout=DEADLINE
    )
    assert conversation.delivered, conversation
    await smtp_sink.wait_for(1, timeout=DEADLINE)
    [session] = smtp_sink.sessions
    assert session.peer[0] == source
    assert session.local == ("127.0.0.20", smtp_sink.port)
    [message] = smtp_sink.messages
    assert (message.mail_from, message.rcpt_tos) == ("a@client.test", ("b@mx.test",))
    line = await haproxy.wait_for_log(f"{source}:0 ", timeout=DEADLINE)
    assert " relay out/mx " in line


@pytest_twisted.ensureDeferred
async def test_endpoint_string_version_1_header_works_through_haproxy(reactor, haproxy, smtp_sink):
    endpoint = clientFromString(
        reactor,
        f"haproxy:127.0.0.1:{haproxy.port}:src=127.0.0.9:dst=127.0.0.20"
        f":dport={smtp_sink.port}:sport=4025:version=1",
    )
    conversation = await send(reactor, endpoint, timeout=DEADLINE)
    assert conversation.delivered, conversation
    # usesrc clientip takes the header's source IP only; the kernel picks the port.
    assert smtp_sink.sessions[0].peer[0] == "127.0.0.9"


@pytest_twisted.ensureDeferred
async def test_starttls_through_the_hop_keeps_the_source(reactor, haproxy, tls_smtp_sink):
    sink = tls_smtp_sink
    endpoint = clientFromString(
        reactor,
        f"haproxy:127.0.0.1:{haproxy.port}:src=127.0.0.9:dst=127.0.0.20:dport={sink.port}",
    )
    conversation = await send(
        reactor, endpoint, tls=sink.client_tls_options("mx.test"), timeout=DEADLINE
    )
    assert conversation.delivered and conversation.tls, conversation
    [session] = sink.sessions
    assert session.tls and session.peer[0] == "127.0.0.9"
    assert sink.messages[0].tls


class _Addresses(protocol.Protocol):
    """Records what the application's transport says its two ends are."""

    def connectionMade(self):
        self.peer = self.transport.getPeer()
        self.host = self.transport.getHost()
        self.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_programmatic_endpoint_reaches_sink_and_reports_both_ends(
    reactor, haproxy, smtp_sink
):
    proxy = TCP4ClientEndpoint(reactor, haproxy.host, haproxy.port)
    endpoint = HAProxyClientEndpoint(
        reactor, proxy, source=("127.0.0.9", 0), destination=("127.0.0.20", smtp_sink.port)
    )
    conversation = await send(reactor, endpoint, timeout=DEADLINE)
    assert conversation.delivered, conversation
    assert smtp_sink.sessions[0].peer[0] == "127.0.0.9"

    seen = await connectProtocol(endpoint, _Addresses()).addTimeout(DEADLINE, reactor)
    assert (seen.peer.host, seen.peer.port) == ("127.0.0.20", smtp_sink.port)
    assert seen.host.host == "127.0.0.9"


@pytest_twisted.ensureDeferred
async def test_destination_host_name_is_resolved_at_connect(reactor, haproxy):
    # The sink listens on 127.0.0.1, which "localhost" resolves to (/etc/hosts).
    from tests.rig.sink import SMTPSink

    sink = await SMTPSink.start(reactor, host="127.0.0.1")
    try:
        endpoint = clientFromString(
            reactor,
            f"haproxy:127.0.0.1:{haproxy.port}:src=127.0.0.9:dst=localhost:dport={sink.port}",
        )
        conversation = await send(reactor, endpoint, timeout=DEADLINE)
        assert conversation.delivered, conversation
        assert sink.sessions[0].peer[0] == "127.0.0.9"
    finally:
        await sink.stop()


class _PeerRecorder(protocol.Protocol):
    # Twisted's server wrapper calls connectionMade before the header has arrived, so
    # the PROXY addresses are only visible once data follows the header.
    def dataReceived(self, data):
        self.factory.peers.append((self.transport.getPeer(), self.transport.getHost(), data))
        self.factory.arrived.callback(None)


class _SayHello(protocol.Protocol):
    def connectionMade(self):
        self.transport.write(b"hello")


@pytest.mark.parametrize("version", [1, 2])
@pytest_twisted.ensureDeferred
async def test_twisted_server_side_haproxy_parser_reads_our_header(reactor, version):
    factory = protocol.Factory.forProtocol(_PeerRecorder)
    factory.peers = []
    factory.arrived = defer.Deferred()
    port = await serverFromString(reactor, "haproxy:tcp:0:interface=127.0.0.1").listen(factory)
    try:
        endpoint = clientFromString(
            reactor,
            f"haproxy:127.0.0.1:{port.getHost().port}:src=127.0.0.9:dst=127.0.0.20"
            f":dport=25:sport=4321:version={version}",
        )
        client = await connectProtocol(endpoint, _SayHello()).addTimeout(DEADLINE, reactor)
        await factory.arrived.addTimeout(DEADLINE, reactor)
        client.transport.loseConnection()
        [(peer, host, data)] = factory.peers
        assert (peer.host, peer.port) == ("127.0.0.9", 4321)
        assert (host.host, host.port) == ("127.0.0.20", 25)
        assert data == b"hello"
    finally:
        await port.stopListening()


@pytest.mark.parametrize(("proxy_host", "tls"), [("127.0.0.1", False), ("::1", True)])
@pytest_twisted.ensureDeferred
async def test_ipv6_source_inside_a_network_namespace(reactor, netns, proxy_host, tls):
    relay = HAProxy(reactor, host=proxy_host, netns=netns.name)
    try:
        await relay.start()
        argv = ["--proxy", relay.server_text, "--src", "fd00::9", "--dst", "fd00::20"]
        result = await netns.run(
            "python3",
            "-m",
            "tests.rig.netns_probe",
            *argv,
            *(["--tls"] if tls else []),
            timeout=30,
            cwd=PROJECT_ROOT,
        )
    finally:
        await relay.close()
    assert result.code == 0, result.err.decode()
    seen = json.loads(result.out)
    assert seen["delivered"], seen
    assert seen["peer"][0] == "fd00::9"
    assert seen["local"][0] == "fd00::20"
    assert seen["sink_tls"] is tls
    assert seen["messages"][0]["data"] == "Subject: v6\r\n\r\nthrough the hop\r\n"
    assert any(line.startswith("fd00::9:0 ") and "out/mx6" in line for line in relay.logs)


def test_probe_endpoint_string_escapes_ipv6_colons():
    assert endpoint_string("::1", 5000, "fd00::9", "fd00::20", 25) == (
        r"haproxy:\:\:1:5000:src=fd00\:\:9:dst=fd00\:\:20:dport=25"
    )
