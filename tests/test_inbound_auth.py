"""SMTP AUTH on the inbound listener (hatwist.inbound._auth, _secure) and
allowed_submitters as the session applies it.

The users file parser and the failed-login throttle are pure and tested with values;
the dialogue runs over real sockets with smtplib (PLAIN and LOGIN as it sends them)
after a real STARTTLS, against real bcrypt hashes (cost 4, so the tests stay fast) and
real SHA-512-crypt hashes made by ``openssl passwd -6`` (a fresh random salt each run, one
with ``rounds=``), never by the library that checks them.
"""

from __future__ import annotations

import base64
import ipaddress
import secrets
import shutil
import smtplib
import subprocess
import time

import bcrypt
import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from hatwist.config.values import SubmitterPolicy
from hatwist.inbound._auth import (
    MAX_SHA512_PASSWORD,
    MAX_SHA512_ROUNDS,
    LoginThrottle,
    SASLError,
    ThrottleLimits,
    UsersFileError,
    check_password,
    decode_plain,
    load_users,
    parse_users,
)
from hatwist.inbound._tls import load_server_tls
from tests._inbound import DEADLINE, servers_in
from tests.rig.certs import shared_ca
from tests.test_inbound_tls import client_context, in_thread, port_of, smtp

PASSWORD = "s3cret-Passw0rd"
NO_RELAY = ()  # relay_from that lists nobody: only a login lets a client relay


def bcrypt_hash(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode("ascii")


CRYPT_ALPHABET = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def openssl_sha512(password: str, rounds: int | None = None) -> str:
    """A SHA-512-crypt hash as ``openssl passwd -6`` writes it (glibc's algorithm; the
    password on stdin, so any character may be in it). With ``rounds``, the salt field
    is ``rounds=N$SALT`` (a random 16-character salt), which openssl passes through."""
    openssl = shutil.which("openssl")
    assert openssl is not None, "openssl is needed (Debian package openssl, in .ci/run)"
    argv = [openssl, "passwd", "-6", "-stdin"]
    if rounds is not None:
        salt = "".join(secrets.choice(CRYPT_ALPHABET) for _ in range(16))
        argv += ["-salt", f"rounds={rounds}${salt}"]
    done = subprocess.run(argv, input=password.encode(), capture_output=True, timeout=30,
                          check=True)
    return done.stdout.decode("ascii").strip()


@pytest.fixture(scope="module")
def carol_hash():
    """carol's SHA-512-crypt hash, with rounds= (openssl's default has none: 5000)."""
    hashed = openssl_sha512(PASSWORD, rounds=12345)
    assert hashed.startswith("$6$rounds=12345$")
    return hashed


@pytest.fixture(scope="module")
def users_text(carol_hash):
    return (f"# submitters\nalice:{bcrypt_hash(PASSWORD)}\n\nbob:{bcrypt_hash('other')}\n"
            f"carol:{carol_hash}\n")


@pytest.fixture
def users(tmp_path, users_text):
    (tmp_path / "users").write_text(users_text)
    return load_users(str(tmp_path / "users"))


@pytest.fixture
def tls(tmp_path):
    cert = shared_ca().issue("relay.test", ips=("127.0.0.1",))
    (tmp_path / "cert.pem").write_bytes(cert.cert_pem)
    (tmp_path / "key.pem").write_bytes(cert.key_pem)
    return load_server_tls(str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))


@pytest.fixture
def server_for(tmp_path):
    yield from servers_in(tmp_path)


# -- the users file ----------------------------------------------------------------------


def test_users_file_lines_and_comments(users):
    assert set(users.hashes) == {"alice", "bob", "carol"}
    assert check_password(users, "alice", PASSWORD.encode())
    assert not check_password(users, "alice", b"wrong")
    assert not check_password(users, "zoe", PASSWORD.encode())  # no such user
    assert not check_password(users, "alice", b"x" * 100)  # over bcrypt's 72 octets


@pytest.mark.parametrize("line, why", [
    ("alice", "expected user:hash"),
    (":$2b$04$" + "a" * 53, "expected user:hash"),
    ("alice:plaintext", r"neither bcrypt \(\$2b\$NN\$ and 53 characters\) nor SHA-512-crypt"),
    ("alice:$5$salt$" + "x" * 43, "neither bcrypt"),  # SHA-256-crypt: not taken
    ("al ice:$2b$04$" + "a" * 53, "printable ASCII without spaces"),
])
def test_a_bad_line_names_the_file_and_line(line, why):
    with pytest.raises(UsersFileError, match=rf"\A/etc/hatwist/users:3: .*{why}"):
        parse_users(f"# users\n\n{line}\n", "/etc/hatwist/users")


def test_sha512_crypt_hashes_made_by_openssl_are_checked(carol_hash):
    """Both forms openssl writes: without rounds= (5000) and with it; any password
    characters (UTF-8 octets, as SASL carries them)."""
    password = "pässwörd: $6$ ok"
    plain = openssl_sha512(password)
    assert plain.startswith("$6$") and "rounds=" not in plain
    users = parse_users(f"dave:{plain}\ncarol:{carol_hash}\n", "f")
    assert check_password(users, "dave", password.encode())
    assert not check_password(users, "dave", password.encode()[:-1])
    assert not check_password(users, "dave", PASSWORD.encode())
    assert check_password(users, "carol", PASSWORD.encode())
    assert not check_password(users, "carol", PASSWORD.upper().encode())
    assert not check_password(users, "carol", PASSWORD.encode() + b"\0")  # crypt(3) stops at NUL


def test_a_sha512_password_longer_than_the_cap_fails_without_being_hashed(monkeypatch):
    """SHA-512-crypt's cost grows with the password: a client may not pick a long one."""
    long = "x" * (MAX_SHA512_PASSWORD + 1)
    users = parse_users(f"dave:{openssl_sha512(long)}\n", "f")
    from hatwist.inbound import _auth

    calls = []
    real = _auth.sha512_crypt.verify
    monkeypatch.setattr(_auth.sha512_crypt, "verify", lambda *a: calls.append(a) or real(*a))
    assert not check_password(users, "dave", long.encode())  # the right one, but too long
    assert calls == []
    at_cap = "y" * MAX_SHA512_PASSWORD
    assert check_password(parse_users(f"dave:{openssl_sha512(at_cap)}\n", "f"), "dave",
                          at_cap.encode())


def test_sha512_checks_run_one_at_a_time_even_from_many_threads(monkeypatch, users):
    """libpass holds the GIL: parallel $6$ checks would only starve the reactor thread."""
    results, most = checks_at_once(monkeypatch, users, "carol")
    assert results == [True] * 4
    assert most == 1


def test_a_bcrypt_cost_above_the_cap_or_below_the_librarys_least_is_refused_at_load_time(
        tmp_path):
    """A cost-31 line would make every login take days; cost 03 fails every check."""
    at_cap = bcrypt.hashpw(b"x", bcrypt.gensalt(4)).decode().replace("$04$", "$14$")
    assert parse_users(f"dave:{at_cap}\n", "f").hashes["dave"] == at_cap.encode()
    doubles = " (every login would run it: each step doubles the time)"
    for cost, why in (("15", "has cost 15, more than the 14 accepted" + doubles),
                      ("31", "has cost 31, more than the 14 accepted" + doubles),
                      ("03", "has no cost of 04 to 31 after its $2b$ (it has '03')"),
                      ("x4", "has no cost of 04 to 31 after its $2b$ (it has 'x4')")):
        path = tmp_path / "users"
        path.write_text(f"dave:{at_cap}\nerin:{at_cap.replace('$14$', f'${cost}$')}\n")
        with pytest.raises(UsersFileError) as raised:
            load_users(str(path))
        assert str(raised.value) == f"{path}:2: the bcrypt hash of 'erin' {why}"


def test_a_rounds_value_above_the_cap_is_refused_at_load_time(tmp_path):
    """What one login may cost is bounded when the file is read, not when a client asks:
    the scheme allows up to 999,999,999 rounds, minutes of CPU even for openssl's C."""
    checksum = openssl_sha512("x").rsplit("$", 1)[1]
    at_cap = f"$6$rounds={MAX_SHA512_ROUNDS}$saltsalt${checksum}"
    assert parse_users(f"dave:{at_cap}\n", "f").hashes["dave"] == at_cap.encode()
    for rounds in (MAX_SHA512_ROUNDS + 1, 999_999_999, "0" * 30 + "2000000", "9" * 5000):
        path = tmp_path / "users"
        path.write_text(f"# users\ndave:{openssl_sha512('x')}\n"
                        f"erin:$6$rounds={rounds}$saltsalt${checksum}\n")
        with pytest.raises(UsersFileError,
                           match=rf"\A{path}:3: the SHA-512-crypt hash of 'erin' asks for "
                                 rf"rounds=[0-9]+(\.\.\.)?, more than the 1000000 accepted"):
            load_users(str(path))


@pytest.mark.parametrize("hashed, why", [
    ("$6$saltsalt", "no checksum after the salt"),
    ("$6$saltsalt$", "no checksum after the salt"),
    ("$6$saltsalt$CHECKSUMx", "checksum must be exactly 86 chars"),
    ("$6$saltsalt$" + "a" * 85, "checksum must be exactly 86 chars"),
    ("$6$saltsalt$" + "!" * 86, "invalid characters"),
])
def test_a_malformed_sha512_line_names_the_file_and_line(hashed, why):
    checksum = openssl_sha512("x").rsplit("$", 1)[1]
    with pytest.raises(UsersFileError, match=rf"\Ausers:2: the SHA-512-crypt hash of 'erin' "
                                             rf"is malformed \(.*\): .*{why}"):
        parse_users(f"dave:{openssl_sha512('x')}\nerin:{hashed.replace('CHECKSUM', checksum)}\n",
                    "users")


@pytest.mark.parametrize("middle, why", [
    ("rounds=999$saltsalt", "too low"),  # glibc and openssl write rounds=1000 for it
    ("rounds=05000$saltsalt", "zero-padded rounds"),
    ("saltsaltsaltsaltsalt", "salt too large"),
    ("salt:salt", "invalid characters"),
    ("sält", "not ASCII"),
])
def test_a_malformed_sha512_salt_or_rounds_field_is_refused(middle, why):
    checksum = openssl_sha512("x").rsplit("$", 1)[1]
    with pytest.raises(UsersFileError, match=rf"\Af:1: the SHA-512-crypt hash of 'erin' is "
                                             rf"malformed \(.*\): .*{why}"):
        parse_users(f"erin:$6${middle}${checksum}\n", "f")


def test_a_user_twice_is_an_error(users_text):
    with pytest.raises(UsersFileError, match=r"f:6: user 'alice' appears twice"):
        parse_users(users_text + "alice:" + bcrypt_hash("x") + "\n", "f")


def test_plain_refuses_acting_for_someone_else():
    as_bob = base64.b64encode(b"bob\0alice\0pw").decode()
    with pytest.raises(SASLError, match="authorization identity"):
        decode_plain(as_bob)
    same = base64.b64encode(b"alice\0alice\0pw").decode()
    assert decode_plain(same).user == "alice"
    with pytest.raises(SASLError):
        decode_plain("not base64!")


# -- the throttle (pure) -------------------------------------------------------------------


def test_failed_logins_get_slower_then_locked_until_the_window_passes():
    throttle = LoginThrottle(ThrottleLimits(max_failures=3, window=60, base_delay=1,
                                            max_delay=3))
    peer = ipaddress.ip_address("192.0.2.1")
    assert [throttle.failed(peer, t) for t in (0, 1, 2)] == [1, 2, 3]
    assert throttle.locked(peer, 30)
    assert not throttle.locked(ipaddress.ip_address("192.0.2.2"), 30)
    assert not throttle.locked(peer, 60)  # the window since the first failure is over
    throttle.failed(peer, 61)
    throttle.succeeded(peer)
    assert not throttle.locked(peer, 62) and len(throttle) == 0


def test_the_throttle_remembers_a_bounded_number_of_addresses():
    throttle = LoginThrottle(ThrottleLimits(max_peers=100))
    for i in range(10_000):
        throttle.failed(ipaddress.ip_address(f"10.0.{i // 256}.{i % 256}"), 0)
    assert len(throttle) == 100


# -- the dialogue over TLS -----------------------------------------------------------------


def _login(port: int, user: str, password: str, *, mechanism: str = "PLAIN", tls=True):
    """Log in (or try to); then try to relay one message. Returns both outcomes."""
    with smtp(port) as client:
        if tls:
            client.starttls(context=client_context())
            client.ehlo()
        advertised = client.esmtp_features.get("auth", "")
        try:
            client.user, client.password = user, password
            method = {"PLAIN": client.auth_plain, "LOGIN": client.auth_login}[mechanism]
            code, _ = client.auth(mechanism, method, initial_response_ok=mechanism == "PLAIN")
        except smtplib.SMTPResponseException as e:
            code = e.smtp_code
        try:
            refused = client.sendmail("s@example.org", ["r@example.net"], b"\r\nhi\r\n")
            sent = not refused
        except smtplib.SMTPRecipientsRefused as e:
            sent = next(iter(e.recipients.values()))[0]
        except smtplib.SMTPServerDisconnected:
            sent = "disconnected"
        return advertised, code, sent


@pytest.mark.parametrize("user", ["alice", "carol"])  # bcrypt, SHA-512-crypt
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest_twisted.ensureDeferred
async def test_a_logged_in_client_relays_from_outside_relay_from(server_for, tls, users,
                                                                   mechanism, user):
    server = server_for(tls=tls, users=users, relay_from=NO_RELAY)
    advertised, code, sent = await in_thread(_login, port_of(server), user, PASSWORD,
                                             mechanism=mechanism)
    assert advertised.split() == ["PLAIN", "LOGIN"]
    assert (code, sent) == (235, True)
    [message] = server.accepted
    assert message.mail_from == "s@example.org"


@pytest.mark.parametrize("user", ["alice", "carol"])
@pytest_twisted.ensureDeferred
async def test_without_a_login_a_client_outside_relay_from_may_not_relay(server_for, tls,
                                                                         users, user):
    server = server_for(tls=tls, users=users, relay_from=NO_RELAY)
    _advertised, code, sent = await in_thread(_login, port_of(server), user, "wrong")
    assert (code, sent) == (535, 550)
    assert server.accepted == []


@pytest_twisted.ensureDeferred
async def test_auth_is_neither_offered_nor_accepted_before_tls(server_for, tls, users):
    server = server_for(tls=tls, users=users, relay_from=NO_RELAY)
    advertised, code, sent = await in_thread(_login, port_of(server), "alice", PASSWORD,
                                             tls=False)
    assert (advertised, code, sent) == ("", 538, 550)


@pytest_twisted.ensureDeferred
async def test_repeated_failures_are_delayed_then_cut_off_per_address(server_for, tls, users):
    clock = task.Clock()
    throttle = LoginThrottle(ThrottleLimits(max_failures=2, window=300, base_delay=5,
                                            max_delay=5))
    server = server_for(tls=tls, users=users, relay_from=NO_RELAY, login_throttle=throttle)
    server.factory.reactor = clock  # delays run on a clock the test advances
    client = await server.connect()
    await client.send(b"EHLO me\r\nSTARTTLS\r\n", 2)
    client.transport.startTLS(shared_ca().client_options("relay.test"))
    await client.send(b"EHLO me\r\n", 1)
    wrong = base64.b64encode(b"\0alice\0wrong")
    answered = len(client.replies())
    reply = defer.ensureDeferred(client.send(b"AUTH PLAIN " + wrong + b"\r\n", 1))
    await _until(lambda: _delay_pending(clock, 5))  # the check ran; the answer waits
    assert len(client.replies()) == answered  # nothing answered during the delay
    clock.advance(5)
    assert (await reply)[0] == "535 5.7.8 Error: authentication failed"
    replies = defer.ensureDeferred(client.send(b"AUTH PLAIN " + wrong + b"\r\n", 2))
    await _until(lambda: _delay_pending(clock, 5))
    clock.advance(5)
    second, closing = await replies
    assert second.startswith("535 5.7.8")
    assert closing.startswith("421 4.7.0") and "too many failed" in closing
    await client.lost.addTimeout(DEADLINE, reactor)

    # The address stays locked: a new session is cut off at AUTH without a check.
    again = await server.connect()
    await again.send(b"EHLO me\r\nSTARTTLS\r\n", 2)
    again.transport.startTLS(shared_ca().client_options("relay.test"))
    right = base64.b64encode(b"\0alice\0" + PASSWORD.encode())
    replies = await again.send(b"EHLO me\r\nAUTH PLAIN " + right + b"\r\n", 2)
    assert replies[1].startswith("421 4.7.0")


def _delay_pending(clock: task.Clock, delay: float) -> bool:
    """Whether a call ``delay`` seconds from the clock's now is scheduled (the answer to a
    failed login; the idle timer is far longer)."""
    return any(abs(call.getTime() - clock.seconds() - delay) < 1e-6
               for call in clock.getDelayedCalls())


async def _until(condition) -> None:
    for _ in range(int(DEADLINE / 0.01)):
        if condition():
            return
        await task.deferLater(reactor, 0.01)
    raise AssertionError("condition never became true")


@pytest.mark.parametrize("user", ["alice", "carol"])
@pytest_twisted.ensureDeferred
async def test_password_checks_run_a_bounded_number_at_a_time(server_for, tls, users, user):
    """Many clients at once: never more than max_password_checks checks run, whichever
    the scheme (SHA-512-crypt is checked in the same threads, under the same bound)."""
    running, most = [0], [0]
    from hatwist.inbound import _factory

    real = _factory.check_password

    def counting(*args):
        running[0] += 1
        most[0] = max(most[0], running[0])
        try:
            time.sleep(0.05)  # as slow as a real cost-12 check, so unbounded checks overlap
            return real(*args)
        finally:
            running[0] -= 1

    _factory.check_password = counting
    try:
        server = server_for(tls=tls, users=users, relay_from=NO_RELAY, max_password_checks=1,
                            max_sessions_unlisted=10)
        outcomes = await in_thread(_parallel_logins, port_of(server), 6, user)
    finally:
        _factory.check_password = real
    assert outcomes == [235] * 6
    assert most[0] == 1


def _parallel_logins(port: int, count: int, user: str) -> list[int]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(count) as pool:
        results = list(pool.map(lambda _: _login(port, user, PASSWORD)[1], range(count)))
    return results


# -- allowed_submitters --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_binding_refuses_a_submitter_it_does_not_list_and_names_itself(server_for):
    policies = {"b2": SubmitterPolicy((ipaddress.ip_network("10.0.0.0/8"),), ("alice",))}

    def permits(binding, peer, user):
        policy = policies.get(binding)
        return policy is None or policy.permits(peer, user)

    server = server_for(binding_permits=permits)
    client = await server.connect()
    await client.send(b"EHLO me\r\n", 1)
    body = b"X-Binding: b2\r\nSubject: x\r\n\r\nhi\r\n.\r\n"
    replies = await client.send(b"MAIL FROM:<s@example.org>\r\nRCPT TO:<r@example.net>\r\n"
                                b"DATA\r\n" + body, 4)
    assert replies[3] == '550 5.7.1 Error: binding "b2" may not be used by 127.0.0.1'
    replies = await client.send(b"MAIL FROM:<s@example.org>\r\nRCPT TO:<r@example.net>\r\n"
                                b"DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n", 4)
    assert replies[3].startswith("250 2.0.0")  # the default binding lists nobody: open
    assert [m.binding for m in server.accepted] == ["default"]


def test_submitter_policy_matches_networks_or_users():
    policy = SubmitterPolicy((ipaddress.ip_network("10.0.0.0/8"),
                              ipaddress.ip_network("2001:db8::/32")), ("alice",))
    assert policy.permits(ipaddress.ip_address("10.1.2.3"), None)
    assert policy.permits(ipaddress.ip_address("2001:db8::1"), None)
    assert policy.permits(ipaddress.ip_address("192.0.2.1"), "alice")
    assert not policy.permits(ipaddress.ip_address("192.0.2.1"), "bob")
    assert not policy.permits(None, None)
    assert str(policy) == "10.0.0.0/8 2001:db8::/32 user:alice"


def checks_at_once(monkeypatch, users, user: str) -> tuple[list[bool], int]:
    """Four threads check ``user``'s password at once; (their results, the most $6$
    verifications that ran at the same time).  Each verification sleeps 20 ms, which
    releases the GIL: checks that were not serialised would overlap."""
    import threading

    from hatwist.inbound import _auth

    running, most = [0], [0]
    real = _auth.sha512_crypt.verify

    def counting(*args):
        running[0] += 1
        most[0] = max(most[0], running[0])
        try:
            time.sleep(0.02)
            return real(*args)
        finally:
            running[0] -= 1

    monkeypatch.setattr(_auth.sha512_crypt, "verify", counting)
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(
        check_password(users, user, PASSWORD.encode()))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    return results, most[0]
