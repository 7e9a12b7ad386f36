# ruff: noqa: F811
"""Submitters from other hosts, end to end (issue 14 items 1, 2, 3, 5, 6).

A real ``twistd hatwist`` (tests.service._relay) with STARTTLS, AUTH (bcrypt and
SHA-512-crypt users, the latter hashed by ``openssl passwd -6``) and allowed_submitters
configured; the real clients named by the issue submit to it: swaks
with ``--tls --auth``, a private Postfix instance as the submitting MTA (relayhost = the
relay, ``smtp_tls_security_level = encrypt``, SASL from ``smtp_sasl_password_maps``), and
smtplib. Mail leaves through the real HAProxy to the recording sink on 127.0.0.20, so the
sink sees the binding's source address. "Other hosts" are other loopback addresses
(127.0.0.77): relay_from lists only 127.0.0.1.
"""

from __future__ import annotations

import base64
import os
import shutil
import smtplib
import ssl
import tempfile
from pathlib import Path

import bcrypt
import pytest
import pytest_twisted
from twisted.internet import defer, threads, utils

from tests.rig.certs import shared_ca
from tests.rig.wait import until
from tests.service import _postfix
from tests.service._relay import CLIENT_NAME, SMTP_TIMEOUT, make_message
from tests.service.test_relay import DEFAULT_SOURCE, SENDER, SINK_HOST, rig  # noqa: F401
from tests.test_inbound_auth import openssl_sha512

pytestmark = pytest.mark.integration

DEADLINE = 30.0
OUTSIDER = "127.0.0.77"
BLUE_SOURCE = "127.0.0.10"
PASSWORD = "Tr0ub4dor&3-horse"
NEW_PASSWORD = "correct-horse-battery"


def _hash(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode("ascii")


def _secure(rig, *, users: str, tls: str = "required") -> str:
    """Certificate, key and users file next to the config; TLS and AUTH keys set."""
    directory = Path(rig.directory)
    cert = shared_ca().issue("relay.test", ips=("127.0.0.1",))
    (directory / "cert.pem").write_bytes(cert.cert_pem)
    (directory / "key.pem").write_bytes(cert.key_pem)
    (directory / "ca.pem").write_bytes(shared_ca().cert_pem)
    (directory / "users").write_text(users)
    return (
        f'listen_tls_cert = "{directory / "cert.pem"}"\n'
        f'listen_tls_key = "{directory / "key.pem"}"\n'
        f"listen_tls = {tls}\n"
        f'auth_users_file = "{directory / "users"}"\n'
        "binding blue {\n  ha_proxy_src_addr = 127.0.0.10\n"
        "  allowed_submitters = user:alice 127.0.0.10/32\n}\n"
    )


async def _start(rig, security: str, **options):
    rig.write_config(relay_from="127.0.0.1/32", extra=security,
                     bindings={"default": DEFAULT_SOURCE}, **options)
    return await rig.relay().start()


def _swaks(rig, message_id: str, password: str, *extra: str):
    """swaks --tls --auth from OUTSIDER; fires with (exit status, output)."""
    argv = [
        "--server", "127.0.0.1", "--port", str(rig.listen), "--local-interface", OUTSIDER,
        "--ehlo", CLIENT_NAME, "--tls", "--tls-verify", "--tls-ca-path",
        os.path.join(rig.directory, "ca.pem"), "--tls-sni", "relay.test",
        "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", password,
        "--from", SENDER, "--to", "a@dest.test",
        "--header", f"Message-Id: <{message_id}>", "--timeout", "10", *extra,
    ]
    d = utils.getProcessOutputAndValue(shutil.which("swaks"), argv, env=dict(os.environ))
    return d.addTimeout(DEADLINE, rig.reactor)


def _require(tool: str, usable: bool = True) -> None:
    """Skip without ``tool``, except in CI (``CI`` set), where it fails (tests.rig.needs)."""
    if shutil.which(tool) is not None and usable:
        return
    message = f"{tool} is not installed (or not usable here: it needs root)"
    if os.environ.get("CI"):
        pytest.fail(message + " and CI is set: the real client must run here")
    pytest.skip(message)


# -- swaks: STARTTLS + AUTH from another host; the password never in the log --------------


@pytest_twisted.ensureDeferred
async def test_swaks_tls_auth_from_another_host_relays_and_the_password_is_never_logged(rig):
    _require("swaks")
    security = _secure(rig, users=f"alice:{_hash(PASSWORD)}\n")
    relay = await _start(rig, security)

    out, err, status = await _swaks(rig, "swaks-1@t", PASSWORD,
                                    "--header", "X-Binding: blue")
    assert status == 0, (out + err).decode("utf-8", "replace") + relay.tail()
    assert b"235 2.7.0 Authentication successful" in out
    await rig.sink.wait_for(1, timeout=DEADLINE)
    [copy] = rig.delivered()["swaks-1@t"]
    assert copy.peer[0] == BLUE_SOURCE  # user:alice may use blue; it left from blue's IP
    assert b"with ESMTPSA;" in copy.data

    # A wrong password: 535, logged with user and address, never with the password.
    out, err, status = await _swaks(rig, "swaks-2@t", "wrong-" + PASSWORD)
    assert status != 0 and b"535 5.7.8" in out
    await relay.wait_for_log(f"authentication failed for alice from {OUTSIDER}",
                             since=0, timeout=DEADLINE)
    await relay.stop()
    logs = "\n".join(relay.logs)
    assert "authenticated alice from 127.0.0.77" in logs
    secrets = [PASSWORD, "wrong-" + PASSWORD]
    secrets += [base64.b64encode(f"\0alice\0{p}".encode()).decode() for p in secrets]
    for secret in secrets:
        assert secret not in logs


@pytest_twisted.ensureDeferred
async def test_without_auth_another_host_may_not_relay_and_binding_policy_names_itself(rig):
    security = _secure(rig, users=f"alice:{_hash(PASSWORD)}\n", tls="optional")
    relay = await _start(rig, security)

    def outsider_without_login():
        with smtplib.SMTP("127.0.0.1", rig.listen, local_hostname=CLIENT_NAME,
                          timeout=SMTP_TIMEOUT, source_address=(OUTSIDER, 0)) as client:
            client.ehlo()
            client.mail(SENDER)
            return client.rcpt("a@dest.test")

    code, text = await threads.deferToThread(outsider_without_login)
    assert (code, text[:5]) == (550, b"5.7.1")

    # Inside relay_from but not listed by blue's allowed_submitters: 550 naming blue.
    sent = await rig.submit(["a@dest.test"], make_message("blue-no@t", binding="blue"))
    assert sent.data[0] == 550
    assert 'binding "blue" may not be used by 127.0.0.1' in sent.data[1]
    await rig.send("default-ok@t")  # the default binding has no policy: open to relayers
    await rig.sink.wait_for(1, timeout=DEADLINE)
    assert set(rig.delivered()) == {"default-ok@t"}
    await relay.stop()


# -- SIGHUP: the users file is re-read; a bad one keeps the old --------------------------------


def _tls_session(port: int) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, local_hostname=CLIENT_NAME, timeout=SMTP_TIMEOUT,
                          source_address=(OUTSIDER, 0))
    client.ehlo()
    client.starttls(context=ssl.create_default_context(
        cadata=shared_ca().cert_pem.decode("ascii")))
    client.ehlo()
    return client


def _served_certificate(port: int) -> bytes:
    with _tls_session(port) as client:
        return client.sock.getpeercert(binary_form=True)


def _login(port: int, password: str, user: str = "alice") -> int:
    with _tls_session(port) as client:
        try:
            return client.login(user, password)[0]
        except smtplib.SMTPAuthenticationError as e:
            return e.smtp_code


@pytest_twisted.ensureDeferred
async def test_sighup_rereads_the_users_file_and_keeps_the_old_one_when_it_is_bad(rig):
    security = _secure(rig, users=f"alice:{_hash(PASSWORD)}\n")
    relay = await _start(rig, security)
    users = Path(rig.directory) / "users"
    assert await threads.deferToThread(_login, rig.listen, PASSWORD) == 235

    since = relay.mark()
    users.write_text(f"alice:{_hash(NEW_PASSWORD)}\nbob:plaintext-oops\n")
    relay.signal("HUP")
    refused = await relay.wait_for_log("config reload refused", since=since, timeout=DEADLINE)
    assert f"{users}:2: the hash of 'bob' is neither bcrypt" in refused
    assert await threads.deferToThread(_login, rig.listen, PASSWORD) == 235  # old file kept

    # A good users file and a renewed certificate: both taken on the next SIGHUP.
    since = relay.mark()
    users.write_text(f"alice:{_hash(NEW_PASSWORD)}\n")
    renewed = shared_ca().issue("relay.test", ips=("127.0.0.1",))
    (Path(rig.directory) / "cert.pem").write_bytes(renewed.cert_pem)
    (Path(rig.directory) / "key.pem").write_bytes(renewed.key_pem)
    relay.signal("HUP")
    await relay.wait_for_log("config reloaded", since=since, timeout=DEADLINE)
    assert await threads.deferToThread(_login, rig.listen, NEW_PASSWORD) == 235
    assert await threads.deferToThread(_login, rig.listen, PASSWORD) == 535
    served = await threads.deferToThread(_served_certificate, rig.listen)
    assert served == ssl.PEM_cert_to_DER_cert(renewed.cert_pem.decode("ascii"))
    await relay.stop()


@pytest_twisted.ensureDeferred
async def test_sha512_crypt_users_log_in_with_swaks_and_smtplib_and_huge_rounds_are_refused(rig):
    """SHA-512-crypt hashes as openssl writes them (without rounds=, so 5000, and with
    rounds=20000); a users file asking for 999,999,999 rounds is refused on SIGHUP with
    file and line, at once (the relay never starts hashing it), and the old one kept."""
    _require("swaks")
    alice, dave = openssl_sha512(PASSWORD), openssl_sha512(NEW_PASSWORD, rounds=20000)
    assert "rounds=" not in alice and dave.startswith("$6$rounds=20000$")
    relay = await _start(rig, _secure(rig, users=f"alice:{alice}\ndave:{dave}\n"))

    out, err, status = await _swaks(rig, "sha512-1@t", PASSWORD, "--header", "X-Binding: blue")
    assert status == 0, (out + err).decode("utf-8", "replace") + relay.tail()
    assert b"235 2.7.0 Authentication successful" in out
    await rig.sink.wait_for(1, timeout=DEADLINE)
    [copy] = rig.delivered()["sha512-1@t"]
    assert copy.peer[0] == BLUE_SOURCE  # logged in as alice, who may use blue
    assert await threads.deferToThread(_login, rig.listen, NEW_PASSWORD, "dave") == 235
    assert await threads.deferToThread(_login, rig.listen, PASSWORD, "dave") == 535

    users = Path(rig.directory) / "users"
    checksum = dave.rsplit("$", 1)[1]
    since = relay.mark()
    users.write_text(f"alice:{alice}\nerin:$6$rounds=999999999$saltsalt${checksum}\n")
    relay.signal("HUP")
    refused = await relay.wait_for_log("config reload refused", since=since, timeout=DEADLINE)
    assert (f"{users}:2: the SHA-512-crypt hash of 'erin' asks for rounds=999999999, more "
            "than the 1000000 accepted") in refused
    assert await threads.deferToThread(_login, rig.listen, NEW_PASSWORD, "dave") == 235
    await relay.stop()


# -- SMTPUTF8: delivered with SMTPUTF8 where offered, bounced 5.6.7 where not ---------------


def _send_utf8(port: int, message_id: str) -> dict:
    body = (f"From: {SENDER}\r\nTo: zoë@dest.test\r\nSubject: Grüße\r\n"
            f"Message-ID: <{message_id}>\r\n\r\nhallo\r\n").encode()
    with smtplib.SMTP("127.0.0.1", port, local_hostname=CLIENT_NAME,
                      timeout=SMTP_TIMEOUT) as client:
        return client.sendmail(SENDER, ["zoë@dest.test"], body, mail_options=["SMTPUTF8"])


@pytest_twisted.ensureDeferred
async def test_smtputf8_goes_to_an_mx_that_offers_it_and_bounces_5_6_7_where_none_does(rig):
    rig.sink.extensions.append("SMTPUTF8")
    # One message per session: each delivery sees the sink's EHLO of the moment.
    rig.write_config(extra="max_messages_per_connection = 1\n")
    relay = await rig.relay().start()
    assert await threads.deferToThread(_send_utf8, rig.listen, "utf8-1@t") == {}
    await rig.sink.wait_for(1, timeout=DEADLINE)
    [copy] = rig.delivered()["utf8-1@t"]
    assert copy.rcpt_tos == ("zoë@dest.test",)
    [mail] = [c for s in rig.sink.sessions for c in s.commands if c.startswith("MAIL")]
    assert "SMTPUTF8" in mail.split()[2:]

    rig.sink.extensions.remove("SMTPUTF8")
    assert await threads.deferToThread(_send_utf8, rig.listen, "utf8-2@t") == {}
    await rig.sink.wait_for(2, timeout=DEADLINE)
    bounces = [m for m in rig.sink.messages if m.mail_from == ""]
    assert len(bounces) == 1 and bounces[0].rcpt_tos == (SENDER,)
    assert b"5.6.7" in bounces[0].data and b"utf8-2@t" in bounces[0].data
    assert "utf8-2@t" not in rig.delivered() or all(
        m.mail_from == "" for m in rig.delivered()["utf8-2@t"])
    await relay.stop()


# -- Postfix as the submitting MTA ---------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_private_postfix_relays_through_hatwist_with_tls_and_sasl(rig):
    _require("postfix", _postfix.available())
    rig.sink.extensions.append("SMTPUTF8")  # the MX behind hatwist offers it (issue 14)
    security = _secure(rig, users=f"alice:{_hash(PASSWORD)}\n")
    relay = await _start(rig, security)
    base = tempfile.mkdtemp(prefix="hatwist-postfix-")  # not under tmp_path (mode 0700):
    os.chmod(base, 0o755)  # Postfix's daemons, running as postfix, must reach their queue
    postfix = _postfix.PrivatePostfix(Path(base) / "instance", relay_port=rig.listen,
                                      ca_pem=shared_ca().cert_pem, user="alice",
                                      password=PASSWORD)
    try:
        await threads.deferToThread(postfix.start)
        plain = make_message("postfix-1@t").replace("\n", "\r\n").encode()
        utf8 = (f"From: {SENDER}\nTo: zoë@dest.test\nSubject: Grüße\n"
                "Message-ID: <postfix-utf8@t>\n\nhallo\n").encode()
        await threads.deferToThread(postfix.send, SENDER, "a@dest.test", plain)
        await threads.deferToThread(postfix.send, SENDER, "zoë@dest.test", utf8)
        try:
            await rig.sink.wait_for(2, timeout=DEADLINE)
        except defer.TimeoutError:
            raise AssertionError(postfix.log() + relay.tail()) from None
        delivered = rig.delivered()
        [copy] = delivered["postfix-1@t"]
        [utf8_copy] = delivered["postfix-utf8@t"]
        assert utf8_copy.rcpt_tos == ("zoë@dest.test",)
        for message in (copy, utf8_copy):
            assert message.peer[0] == DEFAULT_SOURCE and rig.sink.host == SINK_HOST
            assert b"with ESMTPSA;" in message.data or b"with UTF8SMTPSA;" in message.data
        # Postfix logs its second status=sent after hatwist's 250, not before the sink
        # has the mail: poll for it
        await until(rig.reactor,
                    lambda: postfix.log().count("status=sent") >= 2,
                    "Postfix logged both deliveries", deadline=DEADLINE)
        log = postfix.log()
        assert "Trusted TLS connection established to 127.0.0.1" in log or \
            "TLS connection established to 127.0.0.1" in log
        assert log.count("status=sent") == 2
        assert "authenticated alice from 127.0.0.1" in "\n".join(relay.logs)
    finally:
        await threads.deferToThread(postfix.stop)
        postfix.remove()
        shutil.rmtree(base, ignore_errors=True)
    await relay.stop()
