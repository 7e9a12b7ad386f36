"""STARTTLS on the inbound listener (hatwist.inbound._secure, _tls), SMTPUTF8 submission.

Real sockets on 127.0.0.1, a real spool, and the standard library's smtplib and ssl as
the client (in a thread), so the TLS handshake is the one a real submitter does.
"""

from __future__ import annotations

import smtplib
import ssl

import pytest
import pytest_twisted
from OpenSSL import SSL
from twisted.internet import defer, reactor, threads

from hatwist.inbound import InboundFactory
from hatwist.inbound._tls import ListenerTLSError, load_server_tls
from tests._inbound import DEADLINE, message_content, servers_in
from tests.rig.certs import make_ca, shared_ca

NAME = "relay.test"


@pytest.fixture
def server_for(tmp_path):
    yield from servers_in(tmp_path)


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory):
    """A certificate for relay.test and 127.0.0.1 from the shared CA, as PEM files."""
    directory = tmp_path_factory.mktemp("tls")
    cert = shared_ca().issue(NAME, ips=("127.0.0.1",))
    (directory / "cert.pem").write_bytes(cert.cert_pem)
    (directory / "key.pem").write_bytes(cert.key_pem)
    return str(directory / "cert.pem"), str(directory / "key.pem")


@pytest.fixture
def tls(cert_files):
    return load_server_tls(*cert_files)


def client_context() -> ssl.SSLContext:
    return ssl.create_default_context(cadata=shared_ca().cert_pem.decode("ascii"))


def in_thread(f, *args, **kwargs):
    return threads.deferToThread(f, *args, **kwargs).addTimeout(DEADLINE, reactor)


def smtp(port: int) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=DEADLINE)
    client.ehlo()
    return client


def port_of(server) -> int:
    return server.port.getHost().port


# -- the certificate files -----------------------------------------------------------------


def test_a_key_that_does_not_match_the_certificate_names_both_files(tmp_path, cert_files):
    other = make_ca("another").issue(NAME)
    (tmp_path / "other.pem").write_bytes(other.key_pem)
    with pytest.raises(ListenerTLSError, match="does not match listen_tls_cert"):
        load_server_tls(cert_files[0], str(tmp_path / "other.pem"))


def test_unreadable_and_non_pem_files_are_named(tmp_path, cert_files):
    (tmp_path / "junk.pem").write_bytes(b"not a certificate\n")
    with pytest.raises(ListenerTLSError, match=r"listen_tls_cert .*junk.pem: no PEM"):
        load_server_tls(str(tmp_path / "junk.pem"), cert_files[1])
    with pytest.raises(ListenerTLSError, match=r"listen_tls_key .*missing.pem: cannot read"):
        load_server_tls(cert_files[0], str(tmp_path / "missing.pem"))


# -- STARTTLS ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_starttls_is_offered_and_a_message_goes_through_tls(server_for, tls):
    server = server_for(tls=tls)

    def session():
        with smtp(port_of(server)) as client:
            offered_before = client.has_extn("starttls")
            client.starttls(context=client_context())
            client.ehlo()
            version = client.sock.version()
            offered_after = client.has_extn("starttls")
            client.sendmail("s@example.org", ["r@example.net"], b"Subject: x\r\n\r\nhi\r\n")
            return offered_before, offered_after, version

    before, after, version = await in_thread(session)
    assert (before, after) == (True, False)
    assert version in ("TLSv1.2", "TLSv1.3")
    [message] = server.accepted
    content = await message_content(server, message.id)
    assert b"with ESMTPS;" in content  # RFC 3848: the Received: line says TLS was used


def test_the_context_refuses_every_version_before_tls_1_2(tls):
    """Twisted's own default would allow TLS 1.0; a handshake test cannot show it here
    (this OpenSSL's security level refuses old versions client-side), so the options
    the server context really carries are checked."""
    options = tls.options.getContext().set_options(0)
    for old in (SSL.OP_NO_SSLv3, SSL.OP_NO_TLSv1, SSL.OP_NO_TLSv1_1):
        assert options & old
    assert not options & SSL.OP_NO_TLSv1_2


@pytest_twisted.ensureDeferred
async def test_commands_pipelined_after_starttls_are_discarded_not_run(server_for, tls):
    """CVE-2011-0411 class: what follows STARTTLS in the same plaintext write must never be
    run, neither before the handshake nor as if it had come over TLS."""
    server = server_for(tls=tls)
    client = await server.connect()
    assert await client.send(b"EHLO me\r\n", 1)
    injected = (b"STARTTLS\r\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<r@example.net>\r\n"
                b"NOOP\r\n")
    [ready] = await client.send(injected, 1)
    assert ready.startswith("220 2.0.0")
    client.transport.startTLS(shared_ca().client_options(NAME))
    replies = await client.send(b"EHLO me\r\nMAIL FROM:<s@example.org>\r\n", 2)
    assert replies[0].startswith("250-relay.test")
    assert replies[1] == "250 2.1.0 Ok"  # not "503 nested MAIL": the injected MAIL never ran
    everything = client.replies()
    assert not any(r.startswith("250 2.0.0") for r in everything)  # no NOOP answered either
    assert [r[:3] for r in everything] == ["220", "250", "220", "250", "250"]


@pytest_twisted.ensureDeferred
async def test_required_tls_refuses_mail_before_starttls(server_for, tls):
    server = server_for(tls=tls, tls_required=True)
    client = await server.connect()
    replies = await client.send(b"EHLO me\r\nMAIL FROM:<s@example.org>\r\n", 2)
    assert replies[1] == "530 5.7.0 Must issue a STARTTLS command first"
    assert "STARTTLS" in replies[0]

    def session():
        with smtp(port_of(server)) as client:
            client.starttls(context=client_context())
            client.ehlo()
            return client.sendmail("s@example.org", ["r@example.net"], b"\r\nhi\r\n")

    assert await in_thread(session) == {}
    assert len(server.accepted) == 1


@pytest_twisted.ensureDeferred
async def test_without_a_certificate_starttls_is_neither_offered_nor_accepted(server_for):
    server = server_for()
    client = await server.connect()
    replies = await client.send(b"EHLO me\r\nSTARTTLS\r\n", 2)
    assert "STARTTLS" not in replies[0]
    assert replies[1].startswith("502 5.5.1")


def test_factory_default_offers_no_tls():
    factory = InboundFactory(spool=None, relay_from=(), max_message_size=1, hostname="h",
                             binding_exists=bool, on_accepted=print, reactor=reactor)
    assert (factory.tls, factory.tls_required, factory.users) == (None, False, None)


# -- SMTPUTF8 ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_smtputf8_is_offered_and_utf8_addresses_are_spooled_with_the_flag(server_for):
    server = server_for()
    body = "Subject: Grüße\r\n\r\nhallo\r\n".encode()

    def session():
        with smtp(port_of(server)) as client:
            offered = client.has_extn("smtputf8")
            refused = client.sendmail("jörg@bücher.example", ["zoë@example.net"], body,
                                      mail_options=["SMTPUTF8"])
            return offered, refused

    assert await in_thread(session) == (True, {})
    [message] = server.accepted
    assert (message.mail_from, message.recipients[0].address) == (
        "jörg@bücher.example", "zoë@example.net")
    assert message.smtputf8 is True
    [recovered] = await server.spool.recover().addTimeout(DEADLINE, reactor)
    assert recovered.smtputf8 is True  # durable: the flag is in the state file
    assert b"with UTF8SMTP;" in await message_content(server, message.id)


@pytest_twisted.ensureDeferred
async def test_a_utf8_address_without_the_smtputf8_parameter_gets_553_5_6_7(server_for):
    server = server_for()
    client = await server.connect()
    replies = await client.send("EHLO me\r\nMAIL FROM:<jörg@example.org>\r\n"
                                "MAIL FROM:<s@example.org>\r\nRCPT TO:<zoë@example.net>\r\n"
                                "NOOP é\r\n".encode(), 5)
    assert replies[1].startswith("553 5.6.7")
    assert replies[2] == "250 2.1.0 Ok"
    assert replies[3].startswith("553 5.6.7")
    assert replies[4].startswith("500 5.5.2")  # 8-bit text only inside addresses
    await defer.succeed(None)


def test_state_files_written_before_the_smtputf8_flag_still_load():
    import json

    from hatwist.spool._values import SpooledMessage, decode, encode, new_recipients

    message = SpooledMessage(id="00000000000001-0000000001", binding="default",
                             mail_from="s@example.org", recipients=new_recipients(["r@x.test"]),
                             received_at=0.0, attempts=0, next_attempt_at=0.0, size=1,
                             smtputf8=True)
    assert decode(encode(message)).smtputf8 is True
    old = json.loads(encode(message))
    del old["smtputf8"]
    assert decode(json.dumps(old).encode()).smtputf8 is False
    old["smtputf8"] = "yes"
    with pytest.raises(Exception, match="wrong type"):
        decode(json.dumps(old).encode())
