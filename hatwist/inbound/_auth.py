# -*- test-case-name: tests.test_inbound_auth -*-
"""
SMTP AUTH for submitters on other hosts: the users file, the SASL PLAIN and LOGIN
encodings, password checks, and the failed-login throttle.

Pure except L{load_users} (reads a file) and L{check_password} (CPU-heavy bcrypt):
the service runs the first at start and in a thread on SIGHUP, the session runs the
second in a thread, a few at a time (L{hatwist.inbound._factory}).

Hashes are bcrypt only (``$2b$``, ``$2a$``, ``$2y$``, as ``htpasswd -B`` and
``python3 -c 'import bcrypt; ...'`` write them), checked with the maintained
``bcrypt`` package.  SHA-512-crypt (``$6$``) is refused with a clear error rather
than half-supported: Python 3.13 removed the ``crypt`` module, and the libraries
that still verify it (passlib) are unmaintained.

The password is never kept past the check and never logged: the session logs the
user name and the peer only.
"""

from __future__ import annotations

import base64
import binascii
from collections import OrderedDict
from collections.abc import Mapping

import attrs
import bcrypt

MAX_USERS_FILE = 1 << 20
"""A users file larger than this is refused (it is read into memory)."""
BCRYPT_PREFIXES = (b"$2a$", b"$2b$", b"$2y$")
MAX_PASSWORD = 72
"""bcrypt looks at 72 octets; the bcrypt package refuses longer passwords."""
# A hash of a random password, checked for unknown users so that a failed login
# costs the same whether or not the user exists.
_DUMMY_HASH = b"$2b$12$E9xje1bHFj2gKu4THinSe.ETqm7z1UFuv3JWV13ib/SG7QSG8kC62"


class UsersFileError(ValueError):
    """The users file is unusable; the text says which file and line, and why."""


@attrs.frozen
class Users:
    """The users file, loaded: user name -> bcrypt hash."""

    path: str
    hashes: Mapping[str, bytes] = attrs.field(repr=lambda h: f"<{len(h)} users>")

    def __contains__(self, user: str) -> bool:
        return user in self.hashes


def parse_users(text: str, path: str) -> Users:
    """The users in ``text`` (one ``user:hash`` a line; ``#`` comments, blank lines).

    @raise UsersFileError: ``path:line: what is wrong`` for the first bad line.
    """
    hashes: dict[str, bytes] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, colon, hashed = line.partition(":")
        where = f"{path}:{number}"
        if not colon or not user:
            raise UsersFileError(f"{where}: expected user:hash")
        if not user.isascii() or not user.isprintable() or " " in user:
            raise UsersFileError(f"{where}: user names are printable ASCII without spaces")
        if user in hashes:
            raise UsersFileError(f"{where}: user {user!r} appears twice")
        encoded = hashed.strip().encode("ascii", "replace")
        if encoded.startswith(b"$6$"):
            raise UsersFileError(f"{where}: SHA-512-crypt ($6$) hashes are not supported; "
                                 "use bcrypt ($2b$)")
        if not encoded.startswith(BCRYPT_PREFIXES) or len(encoded) != 60:
            raise UsersFileError(f"{where}: the hash of {user!r} is not a bcrypt hash "
                                 "($2b$NN$ and 53 characters)")
        hashes[user] = encoded
    return Users(path, hashes)


def load_users(path: str) -> Users:
    """Read and parse the users file (blocking: at start, or in a thread)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_USERS_FILE + 1)
    except OSError as e:
        raise UsersFileError(f"{path}: cannot read: {e.strerror or e}") from e
    if len(data) > MAX_USERS_FILE:
        raise UsersFileError(f"{path}: larger than {MAX_USERS_FILE} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsersFileError(f"{path}: not UTF-8 text: {e.reason}") from e
    return parse_users(text, path)


def check_password(users: Users, user: str, password: bytes) -> bool:
    """Whether ``password`` is ``user``'s (blocking and CPU-heavy: run it in a thread).
    An unknown user costs one bcrypt check too, so timing does not tell who exists."""
    hashed = users.hashes.get(user)
    if len(password) > MAX_PASSWORD:
        return False
    try:
        matched = bcrypt.checkpw(password, hashed or _DUMMY_HASH)
    except ValueError:
        return False
    return matched and hashed is not None


# -- SASL encodings ---------------------------------------------------------------------


class SASLError(ValueError):
    """A client's SASL response cannot be decoded (answered 501 5.5.2)."""


@attrs.frozen
class Credentials:
    """Who the client says it is, and the password it gave (never logged)."""

    user: str
    password: bytes = attrs.field(repr=False)


def decode_base64(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise SASLError("invalid base64 data") from None


def decode_plain(text: str) -> Credentials:
    """RFC 4616: ``authzid NUL authcid NUL password``.  An authorization identity
    other than the user itself is refused (nobody may act for someone else)."""
    parts = decode_base64(text).split(b"\0")
    if len(parts) != 3:
        raise SASLError("malformed PLAIN response")
    authzid, authcid, password = parts
    user = _user(authcid)
    if authzid and authzid != authcid:
        raise SASLError("authorization identity differs from the user")
    return Credentials(user, password)


def _user(raw: bytes) -> str:
    try:
        user = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SASLError("user name is not UTF-8") from None
    if not user or len(user) > 256:
        raise SASLError("empty or over-long user name")
    return user


def decode_login_user(text: str) -> str:
    return _user(decode_base64(text))


USERNAME_PROMPT = base64.b64encode(b"Username:").decode("ascii")
PASSWORD_PROMPT = base64.b64encode(b"Password:").decode("ascii")


# -- failed logins ----------------------------------------------------------------------


@attrs.frozen
class ThrottleLimits:
    """How failed logins are slowed down, per client address.

    The n-th failure within ``window`` seconds is answered after
    ``min(base_delay * 2 ** (n - 1), max_delay)`` seconds; at ``max_failures`` the
    session gets 421 and every AUTH from that address gets 421 until the window
    since its first failure has passed.  At most ``max_peers`` addresses are
    remembered (the oldest is forgotten first), so a flood of addresses costs
    bounded memory.
    """

    max_failures: int = 5
    window: float = 300.0
    base_delay: float = 1.0
    max_delay: float = 8.0
    max_peers: int = 10_000


@attrs.frozen
class _Record:
    first: float
    failures: int


class LoginThrottle:
    """Failed logins by client address (pure: time is passed in)."""

    def __init__(self, limits: ThrottleLimits | None = None) -> None:
        self.limits = limits or ThrottleLimits()
        self._records: OrderedDict[object, _Record] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def _current(self, peer: object, now: float) -> _Record | None:
        record = self._records.get(peer)
        if record is not None and now - record.first >= self.limits.window:
            del self._records[peer]
            return None
        return record

    def locked(self, peer: object, now: float) -> bool:
        """Whether ``peer`` has used up its failures for now."""
        record = self._current(peer, now)
        return record is not None and record.failures >= self.limits.max_failures

    def failed(self, peer: object, now: float) -> float:
        """Count one failure; return the delay before it is answered."""
        record = self._current(peer, now)
        record = _Record(now, 1) if record is None else attrs.evolve(
            record, failures=record.failures + 1)
        self._records[peer] = record
        self._records.move_to_end(peer)
        while len(self._records) > self.limits.max_peers:
            self._records.popitem(last=False)
        return min(self.limits.base_delay * 2 ** (record.failures - 1), self.limits.max_delay)

    def succeeded(self, peer: object) -> None:
        self._records.pop(peer, None)
