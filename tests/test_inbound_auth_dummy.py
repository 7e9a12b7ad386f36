"""A name that is not in the users file is checked like a real user
(hatwist.inbound._auth's ``Users.dummy``), so a failed login's timing does not say
which user names exist.

What the tests pin is what runs, never how long it takes: the stand-in hash has the
scheme, cost, rounds and salt length most of the file's hashes have (real bcrypt hashes
at cost 4 and 5, real SHA-512-crypt hashes written by ``openssl passwd -6``), it is made
anew when the relay re-reads the file, and an unknown user's check goes through the same
library function, length caps, one-at-a-time lock and thread hand-off as a known one's.
"""

from __future__ import annotations

import threading

import bcrypt
import pytest
import pytest_twisted
from passlib.hash import sha512_crypt
from twisted.internet import reactor

from hatwist.inbound import _auth
from hatwist.inbound._auth import (
    MAX_SHA512_PASSWORD,
    LoginThrottle,
    ThrottleLimits,
    check_password,
    load_users,
    parse_users,
)
from hatwist.inbound._tls import load_server_tls
from tests._inbound import DEADLINE, servers_in
from tests.rig.certs import shared_ca
from tests.test_inbound_auth import (
    NO_RELAY,
    PASSWORD,
    _login,
    checks_at_once,
    openssl_sha512,
)
from tests.test_inbound_tls import in_thread, port_of
from tests.test_tap import CONFIG, relay_for


def bcrypt_at(cost: int, password: str = PASSWORD) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode("ascii")


def users_file(*hashes: str) -> str:
    return "".join(f"user{i}:{hashed}\n" for i, hashed in enumerate(hashes))


@pytest.fixture(scope="module")
def sha512_users():
    """Three users with openssl's default SHA-512-crypt hash (no rounds=: 5000)."""
    hashes = [openssl_sha512(PASSWORD) for _ in range(3)]
    assert all(h.startswith("$6$") and "rounds=" not in h for h in hashes)
    return parse_users(users_file(*hashes), "users")


def sha512_shape(hashed: bytes) -> tuple[int, int]:
    parsed = sha512_crypt.from_string(hashed)
    return parsed.rounds, len(parsed.salt)


# -- the stand-in follows the file -------------------------------------------------------


def test_a_bcrypt_cost_4_file_gets_a_cost_4_dummy():
    users = parse_users(users_file(bcrypt_at(4), bcrypt_at(5), bcrypt_at(4)), "users")
    assert users.dummy.startswith(b"$2b$04$") and len(users.dummy) == 60
    assert users.dummy not in users.hashes.values()
    assert not bcrypt.checkpw(PASSWORD.encode(), users.dummy)  # a usable hash of nothing known


def test_a_sha512_file_at_5000_rounds_gets_a_sha512_dummy_with_5000_rounds(sha512_users):
    dummy = sha512_users.dummy
    assert dummy.startswith(b"$6$")
    assert sha512_shape(dummy) == (5000, 16)  # openssl's salts have 16 characters
    assert not sha512_crypt.verify(PASSWORD.encode(), dummy)


def test_the_dummy_takes_the_most_common_shape_salt_length_included():
    """SHA-512-crypt hashes the salt in most rounds, so its length is part of the cost."""
    short_salt = ["$6$rounds=3000$saltsalt$" + openssl_sha512("x").rsplit("$", 1)[1]] * 2
    text = users_file(bcrypt_at(4), short_salt[0], short_salt[1],
                      openssl_sha512(PASSWORD, rounds=3000))
    assert sha512_shape(parse_users(text, "users").dummy) == (3000, 8)


def test_an_empty_file_keeps_a_bcrypt_dummy_and_a_tie_takes_the_first_shape():
    assert parse_users("# nobody yet\n", "users").dummy.startswith(b"$2b$12$")
    tie = users_file(openssl_sha512(PASSWORD, rounds=1234), bcrypt_at(4))
    assert sha512_shape(parse_users(tie, "users").dummy) == (1234, 16)


def test_each_load_makes_a_new_dummy(tmp_path):
    path = tmp_path / "users"
    path.write_text(users_file(bcrypt_at(4)))
    first, second = load_users(str(path)), load_users(str(path))
    assert first.dummy[:7] == second.dummy[:7] == b"$2b$04$"
    assert first.dummy != second.dummy  # a random salt and checksum each time


@pytest_twisted.ensureDeferred
async def test_a_reload_makes_the_dummy_follow_the_new_file(tmp_path):
    cert = shared_ca().issue("relay.test", ips=("127.0.0.1",))
    (tmp_path / "cert.pem").write_bytes(cert.cert_pem)
    (tmp_path / "key.pem").write_bytes(cert.key_pem)
    users = tmp_path / "users"
    users.write_text(users_file(bcrypt_at(4), bcrypt_at(4)))
    text = CONFIG + (f'listen_tls_cert = "{tmp_path}/cert.pem"\n'
                     f'listen_tls_key = "{tmp_path}/key.pem"\n'
                     f'auth_users_file = "{users}"\n')
    relay = relay_for(tmp_path, reactor, text)
    assert relay.inbound.users.dummy.startswith(b"$2b$04$")
    users.write_text(users_file(openssl_sha512(PASSWORD), openssl_sha512(PASSWORD)))
    assert await relay.reload().addTimeout(DEADLINE, reactor) is True
    assert sha512_shape(relay.inbound.users.dummy) == (5000, 16)


# -- the unknown user's check is a real user's check --------------------------------------


@pytest.fixture
def verified(monkeypatch):
    """Every (library, password, hash) checked, and in which thread, in call order."""
    calls = []
    real_sha512, real_bcrypt = sha512_crypt.verify, bcrypt.checkpw

    def sha512(password, hashed):
        calls.append(("sha512", password, hashed, threading.current_thread()))
        return real_sha512(password, hashed)

    def checkpw(password, hashed):
        calls.append(("bcrypt", password, hashed, threading.current_thread()))
        return real_bcrypt(password, hashed)

    monkeypatch.setattr(_auth.sha512_crypt, "verify", sha512)
    monkeypatch.setattr(_auth.bcrypt, "checkpw", checkpw)
    return calls


def test_an_unknown_user_is_checked_by_the_same_function_against_the_dummy(
        verified, sha512_users):
    bcrypt_users = parse_users(users_file(bcrypt_at(4)), "users")
    wrong = b"wrong"
    assert not check_password(sha512_users, "user1", wrong)
    assert not check_password(sha512_users, "zoe", wrong)
    assert not check_password(bcrypt_users, "user0", wrong)
    assert not check_password(bcrypt_users, "zoe", wrong)
    assert [call[:3] for call in verified] == [
        ("sha512", wrong, sha512_users.hashes["user1"]),
        ("sha512", wrong, sha512_users.dummy),
        ("bcrypt", wrong, bcrypt_users.hashes["user0"]),
        ("bcrypt", wrong, bcrypt_users.dummy),
    ]


def test_an_unknown_user_has_the_length_caps_of_the_files_scheme(verified, sha512_users):
    """Over bcrypt's 72 octets a real $6$ user's password is still hashed; over 256 it
    is not: the same for a name that is not in the file."""
    hashed = [b"x" * 100, b"x" * 100]
    refused = b"y" * (MAX_SHA512_PASSWORD + 1)
    for user in ("user0", "zoe"):
        assert not check_password(sha512_users, user, hashed.pop())
        assert not check_password(sha512_users, user, refused)
    assert [call[:3] for call in verified] == [
        ("sha512", b"x" * 100, sha512_users.hashes["user0"]),
        ("sha512", b"x" * 100, sha512_users.dummy),
    ]


def test_unknown_users_sha512_checks_run_one_at_a_time_too(monkeypatch, sha512_users):
    results, most = checks_at_once(monkeypatch, sha512_users, "zoe")
    assert results == [False] * 4
    assert most == 1


@pytest.fixture
def server_for(tmp_path):
    yield from servers_in(tmp_path)


@pytest_twisted.ensureDeferred
async def test_over_smtp_an_unknown_user_is_checked_in_a_check_thread_like_a_known_one(
        server_for, tmp_path, verified, sha512_users):
    cert = shared_ca().issue("relay.test", ips=("127.0.0.1",))
    (tmp_path / "cert.pem").write_bytes(cert.cert_pem)
    (tmp_path / "key.pem").write_bytes(cert.key_pem)
    tls = load_server_tls(str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))
    no_delay = LoginThrottle(ThrottleLimits(base_delay=0, max_delay=0))
    server = server_for(tls=tls, users=sha512_users, relay_from=NO_RELAY,
                        login_throttle=no_delay)
    for user in ("user2", "zoe"):
        _advertised, code, _sent = await in_thread(_login, port_of(server), user, "wrong")
        assert code == 535
    [(_, _, known, known_thread), (_, _, unknown, unknown_thread)] = verified
    assert (known, unknown) == (sha512_users.hashes["user2"], sha512_users.dummy)
    assert known_thread is not threading.main_thread()
    assert {known_thread.name.rsplit("-", 1)[0], unknown_thread.name.rsplit("-", 1)[0]} == {
        "PoolThread-twisted.internet.reactor"}  # deferToThread's pool, for both
