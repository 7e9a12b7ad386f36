"""Tests for STARTTLS in hatwist.delivery (the ``tls`` setting) against the rig's TLS sink.

The sink's certificate names ``mx.test`` and is signed by the rig's test CA, which the
platform does not trust: passing ``sink.ca.trust_root()`` makes it verifiable.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, task

from hatwist.config import TLSMode
from hatwist.delivery import (
    Envelope,
    SessionTimeout,
    TLSFailed,
    TLSUnavailable,
    open_session,
)
from tests.rig.certs import make_ca

from .test_client_support import ScriptedServer, failure_of, open_to, tcp, within

ENVELOPE = Envelope("a@client.test", ["b@mx.test"])


def _open(reactor, sink, **kwargs):
    return open_to(reactor, tcp(reactor, sink.host, sink.port), **kwargs)


async def _deliver(reactor, session) -> str:
    [result] = await within(reactor, session.send(ENVELOPE, b"secret\r\n"))
    await within(reactor, session.quit())
    return result.kind


@pytest_twisted.ensureDeferred
async def test_ifavailable_uses_starttls_and_reports_verified(reactor, tls_smtp_sink):
    sink = tls_smtp_sink
    session = await within(
        reactor, _open(reactor, sink, tls=TLSMode.IFAVAILABLE, trust_root=sink.ca.trust_root())
    )
    assert (session.tls_active, session.tls_verified) == (True, True)
    assert "STARTTLS" not in session.extensions  # the post-TLS EHLO replaced the list
    assert await _deliver(reactor, session) == "delivered"
    assert sink.messages[0].tls
    ehlo = "EHLO relay.hatwist.test"
    assert sink.sessions[0].commands[:3] == [ehlo, "STARTTLS", ehlo]


@pytest_twisted.ensureDeferred
async def test_messages_of_many_slices_arrive_intact_over_tls(reactor, tls_smtp_sink):
    sink = tls_smtp_sink
    session = await within(
        reactor, _open(reactor, sink, tls=TLSMode.REQUIRED, trust_root=sink.ca.trust_root())
    )
    contents = [b"".join(b"%07d .line\r\n.\r\n" % n for n in range(size)) for size in (1, 60000)]
    for content in contents:  # the second is ~1 MB: many slices of content
        [result] = await within(reactor, session.send(ENVELOPE, content))
        assert result.kind == "delivered"
    await within(reactor, session.quit())
    assert [m.data for m in sink.messages] == contents
    assert all(m.tls for m in sink.messages)


@pytest.mark.parametrize(
    ("hostname", "trusted"),
    [("mx.test", False), ("other.test", True), (None, True)],
    ids=["untrusted-ca", "wrong-host-name", "no-host-name"],
)
@pytest_twisted.ensureDeferred
async def test_ifavailable_delivers_over_unverified_tls(reactor, tls_smtp_sink, hostname, trusted):
    sink = tls_smtp_sink
    trust_root = sink.ca.trust_root() if trusted else None
    session = await within(
        reactor,
        _open(reactor, sink, tls=TLSMode.IFAVAILABLE, tls_hostname=hostname, trust_root=trust_root),
    )
    assert (session.tls_active, session.tls_verified) == (True, False)
    assert await _deliver(reactor, session) == "delivered"
    assert sink.messages[0].tls


@pytest_twisted.ensureDeferred
async def test_ifavailable_without_starttls_offered_is_plaintext(reactor, smtp_sink):
    session = await within(reactor, _open(reactor, smtp_sink, tls=TLSMode.IFAVAILABLE))
    assert (session.tls_active, session.tls_verified) == (False, False)
    assert await _deliver(reactor, session) == "delivered"
    assert not smtp_sink.messages[0].tls


@pytest_twisted.ensureDeferred
async def test_ifavailable_refused_starttls_continues_in_plaintext(reactor, tls_smtp_sink):
    tls_smtp_sink.replies["STARTTLS"] = (454, "4.7.0 TLS not available now")
    session = await within(reactor, _open(reactor, tls_smtp_sink, tls=TLSMode.IFAVAILABLE))
    assert not session.tls_active
    assert session.tls_skipped == "STARTTLS refused: 454 4.7.0 TLS not available now"
    assert await _deliver(reactor, session) == "delivered"
    assert len(tls_smtp_sink.sessions) == 1  # the same session, no reconnect


@pytest_twisted.ensureDeferred
async def test_tls_skipped_is_none_when_tls_was_used_or_never_offered(reactor, tls_smtp_sink):
    sink = tls_smtp_sink
    with_tls = await within(reactor, _open(reactor, sink, tls=TLSMode.IFAVAILABLE))
    without = await within(reactor, _open(reactor, sink, tls=TLSMode.NO))
    assert (with_tls.tls_active, with_tls.tls_skipped) == (True, None)
    assert (without.tls_active, without.tls_skipped) == (False, None)
    await within(reactor, defer.gatherResults([with_tls.quit(), without.quit()]))


@pytest.mark.parametrize("mode", [TLSMode.IFAVAILABLE, TLSMode.REQUIRED])
@pytest_twisted.ensureDeferred
async def test_a_handshake_the_peer_resets_is_tls_failed(reactor, tls_smtp_sink, mode):
    """The session itself never falls back (no retries here): the agent decides."""
    sink = tls_smtp_sink
    sink.break_starttls = True
    error = await failure_of(
        reactor, _open(reactor, sink, tls=mode, trust_root=sink.ca.trust_root())
    )
    assert isinstance(error, TLSFailed) and "handshake" in error.reason
    assert error.temporary
    await within(reactor, sink.wait_closed())
    assert len(sink.sessions) == 1
    assert sink.sessions[0].commands == ["EHLO relay.hatwist.test", "STARTTLS"]


@pytest_twisted.ensureDeferred
async def test_no_means_no_starttls_even_when_offered(reactor, tls_smtp_sink):
    session = await within(reactor, _open(reactor, tls_smtp_sink, tls=TLSMode.NO))
    assert "STARTTLS" in session.extensions
    assert await _deliver(reactor, session) == "delivered"
    assert "STARTTLS" not in tls_smtp_sink.sessions[0].commands


@pytest_twisted.ensureDeferred
async def test_required_verifies_the_certificate_for_the_mx_name(reactor, tls_smtp_sink):
    sink = tls_smtp_sink
    session = await within(
        reactor, _open(reactor, sink, tls=TLSMode.REQUIRED, trust_root=sink.ca.trust_root())
    )
    assert (session.tls_active, session.tls_verified) == (True, True)
    assert await _deliver(reactor, session) == "delivered"
    assert sink.messages[0].tls


@pytest_twisted.ensureDeferred
async def test_required_without_starttls_offered_is_tls_unavailable(reactor, smtp_sink):
    error = await failure_of(reactor, _open(reactor, smtp_sink, tls=TLSMode.REQUIRED))
    assert isinstance(error, TLSUnavailable)
    assert error.temporary
    await within(reactor, smtp_sink.wait_closed())
    assert smtp_sink.sessions[0].commands == ["EHLO relay.hatwist.test", "QUIT"]


@pytest_twisted.ensureDeferred
async def test_required_with_refused_ehlo_is_tls_unavailable(reactor, tls_smtp_sink):
    tls_smtp_sink.replies["EHLO"] = (502, "5.5.1 no ESMTP")
    error = await failure_of(reactor, _open(reactor, tls_smtp_sink, tls=TLSMode.REQUIRED))
    assert isinstance(error, TLSUnavailable)
    assert "HELO relay.hatwist.test" not in tls_smtp_sink.sessions[0].commands


@pytest.mark.parametrize(
    ("hostname", "trusted"),
    [("other.test", True), ("mx.test", False)],
    ids=["wrong-host-name", "untrusted-ca"],
)
@pytest_twisted.ensureDeferred
async def test_required_with_unverifiable_certificate_is_tls_failed(
    reactor, tls_smtp_sink, hostname, trusted
):
    sink = tls_smtp_sink
    # "untrusted-ca": a CA of our own, not the one that signed the sink's certificate.
    trust_root = sink.ca.trust_root() if trusted else make_ca("a stranger").trust_root()
    error = await failure_of(
        reactor,
        _open(reactor, sink, tls=TLSMode.REQUIRED, tls_hostname=hostname, trust_root=trust_root),
    )
    assert isinstance(error, TLSFailed)
    assert error.temporary
    await within(reactor, sink.wait_closed())
    assert sink.messages == []
    assert not any(c.startswith("MAIL") for c in sink.sessions[0].commands)


@pytest_twisted.ensureDeferred
async def test_required_with_refused_starttls_is_tls_failed(reactor, tls_smtp_sink):
    tls_smtp_sink.replies["STARTTLS"] = (454, "4.7.0 TLS not available now")
    error = await failure_of(reactor, _open(reactor, tls_smtp_sink, tls=TLSMode.REQUIRED))
    assert isinstance(error, TLSFailed) and "454" in error.reason


def _starttls_peer(after_220: bytes) -> ScriptedServer:
    def answer(line):
        if line.startswith(b"EHLO"):
            return b"250-peer.test\r\n250 STARTTLS\r\n"
        if line == b"STARTTLS":
            return b"220 go ahead\r\n" + after_220
        return None

    return ScriptedServer(b"220 peer.test\r\n", answer)


@pytest_twisted.ensureDeferred
async def test_plaintext_injected_after_starttls_is_refused(reactor):
    # The reply to the post-TLS EHLO, forged in plaintext right behind the 220.
    server = _starttls_peer(b"250-peer.test\r\n250 AUTH PLAIN\r\n").listen(reactor)
    try:
        opening = open_to(reactor, tcp(reactor, *server.address), tls=TLSMode.IFAVAILABLE)
        error = await failure_of(reactor, opening)
        await within(reactor, server.wait_closed())
    finally:
        await server.stop()
    assert isinstance(error, TLSFailed) and "plaintext" in error.reason


class _NotTLS(protocol.Protocol):
    """Says 220 to STARTTLS, then answers the TLS ClientHello with plaintext (or, when
    the factory has a ``hello`` Deferred, fires it and stays silent)."""

    def connectionMade(self):
        self.transport.write(b"220 peer.test\r\n")
        self.state = "ehlo"

    def dataReceived(self, data):
        if self.state == "ehlo":
            self.transport.write(b"250-peer.test\r\n250 STARTTLS\r\n")
            self.state = "starttls"
        elif self.state == "starttls":
            self.transport.write(b"220 go ahead\r\n")
            self.state = "hello"
        elif getattr(self.factory, "hello", None) is not None:
            hello, self.factory.hello = self.factory.hello, None
            hello.callback(None)
        elif self.state == "hello":
            self.transport.write(b"500 what is this?\r\n")


@pytest_twisted.ensureDeferred
async def test_failed_handshake_is_tls_failed(reactor):
    port = reactor.listenTCP(0, protocol.Factory.forProtocol(_NotTLS), interface="127.0.0.1")
    try:
        address = port.getHost()
        opening = open_to(
            reactor, tcp(reactor, address.host, address.port), tls=TLSMode.IFAVAILABLE
        )
        error = await failure_of(reactor, opening)
    finally:
        await port.stopListening()
    assert isinstance(error, TLSFailed) and "handshake" in error.reason


def test_required_needs_the_mx_host_name():
    with pytest.raises(ValueError, match="tls_hostname"):
        open_session(
            None,
            reactor=None,
            ehlo_hostname="relay.test",
            tls=TLSMode.REQUIRED,
            tls_hostname=None,
            connect_timeout=1,
            command_timeout=1,
        )


@pytest_twisted.ensureDeferred
async def test_silent_handshake_times_out_as_starttls(reactor):
    factory = protocol.Factory.forProtocol(_NotTLS)
    factory.hello = defer.Deferred()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    clock = task.Clock()
    try:
        address = port.getHost()
        opening = open_to(
            reactor,
            tcp(reactor, address.host, address.port),
            clock=clock,
            tls=TLSMode.IFAVAILABLE,
            command_timeout=30,
        )
        await within(reactor, factory.hello)  # the ClientHello arrived: handshake pending
        clock.advance(30)
        error = await failure_of(reactor, opening)
    finally:
        await port.stopListening()
    assert isinstance(error, SessionTimeout) and error.stage == "STARTTLS"
