# -*- test-case-name: tests.test_inbound_auth,tests.test_inbound_auth_dummy -*-
"""
SMTP AUTH for submitters on other hosts: the users file, the SASL PLAIN and LOGIN
encodings, password checks, and the failed-login throttle.

Pure except L{load_users} (reads a file) and L{check_password} (CPU-heavy hashing):
the service runs the first at start and in a thread on SIGHUP, the session runs the
second in a thread, a few at a time (L{hatwist.inbound._factory}).

Two hash schemes, each checked by a maintained library, never by crypto of our own:

  - bcrypt (``$2b$``, ``$2a$``, ``$2y$``, as ``htpasswd -B`` writes them), with the
    ``bcrypt`` package (C: it releases the GIL while it hashes);
  - SHA-512-crypt (``$6$``, optionally ``$6$rounds=N$``, as ``mkpasswd -m sha-512``,
    ``openssl passwd -6`` and glibc's ``crypt(3)`` write them), with ``libpass``, the
    maintained fork of passlib (import name C{passlib}).  The stdlib ``crypt`` module
    is deprecated and gone in Python 3.13; ``crypt-r`` ships no wheel (it needs a
    compiler and libcrypt's headers).  libpass hashes in pure Python (about a microsecond
    a round here), holding the GIL, so the reactor thread shares the CPU with a running
    check instead of being left alone as with bcrypt: hence the bounds below, and one
    SHA-512-crypt check at a time (more would not run faster, only slow the reactor).

What a hostile line or client could make a check cost is bounded: the users file may
ask for at most L{MAX_SHA512_ROUNDS} rounds or a bcrypt cost of L{MAX_BCRYPT_COST}
(refused at load time with file and line, where the schemes allow 999,999,999 rounds,
a quarter of an hour per login, and cost 31, days), and a
password longer than the scheme looks at (bcrypt) or than L{MAX_SHA512_PASSWORD}
(SHA-512-crypt's cost grows with the password's length) fails without being hashed.
Both libraries compare in constant time (bcrypt's C code; passlib's
C{hmac.compare_digest}).

A failed login must not say whether its user name exists.  The answer's delay is the
throttle's, the same for both; what differs is the check itself, whose cost the hash
sets (bcrypt's cost, SHA-512-crypt's rounds and salt length).  So a name that is not in
the file is checked against L{Users.dummy}: a hash of the shape most of the file's users
have, made when the file is read, through the same function, thread, lock and length
caps as a real user's hash.  Users whose hash has a less common shape can still be told
apart by timing (one stand-in cannot look like two costs): give every user the same
scheme and cost to leave nothing to see.

The password is never kept past the check and never logged: the session logs the
user name and the peer only.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping

import attrs
import bcrypt
from passlib.hash import sha512_crypt

MAX_USERS_FILE = 1 << 20
"""A users file larger than this is refused (it is read into memory)."""
BCRYPT_PREFIXES = (b"$2a$", b"$2b$", b"$2y$")
SHA512_PREFIX = b"$6$"
MAX_PASSWORD = 72
"""bcrypt looks at 72 octets; the bcrypt package refuses longer passwords."""
MAX_SHA512_ROUNDS = 1_000_000
"""The most rounds a ``$6$rounds=N$`` hash may ask for: about a second of CPU per
check here (the default, without ``rounds=``, is 5000: a few milliseconds)."""
MAX_SHA512_PASSWORD = 256
"""SHA-512-crypt hashes the whole password in every round, so a longer one costs more
(4096 octets: about 40 times 16 octets'); a client may not choose that cost."""
MIN_BCRYPT_COST = 4
"""The least cost the bcrypt library accepts (it refuses a lower one at every check)."""
MAX_BCRYPT_COST = 14
"""The highest bcrypt cost accepted: about a second per check here, as the SHA-512 cap
(cost 12 is 250 ms, 13 is 494 ms; the format allows 31, some days per login)."""
_ROUNDS = re.compile(r"\$6\$rounds=([0-9]+)\$")
_ONE_SHA512_AT_A_TIME = threading.Lock()
# libpass holds the GIL while it hashes, so two SHA-512-crypt checks at once are no faster
# than one after the other, and the reactor thread waits for the GIL behind both: at
# 100,000 rounds another session's NOOP p99 was 40-68 ms with one check at a time, 100-420
# ms with two and 590-780 ms with four; with this lock 36-74 ms whatever the number, at the
# same logins/s (bench/bench_inbound_auth.py --scheme sha512, shared 2-core box). Checks
# still take one of max_password_checks slots each; this only serialises the $6$ ones.
EMPTY_FILE_DUMMY = ("bcrypt", 12)
"""The shape of the stand-in hash when the file lists nobody: bcrypt at the bcrypt
package's default cost (every login then fails, after a real check's time)."""
_BCRYPT_CHARS = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_CRYPT_CHARS = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
Shape = tuple[str, int] | tuple[str, int, int]
"""What sets a check's cost: ("bcrypt", cost) or ("sha512", rounds, salt length)."""


class UsersFileError(ValueError):
    """The users file is unusable; the text says which file and line, and why."""


@attrs.frozen
class Users:
    """The users file, loaded: user name -> bcrypt or SHA-512-crypt hash.

    ``dummy`` is what a name that is not in the file is checked against: a hash of the
    file's most common L{Shape} (L{dummy_for}), so that its check costs what most real
    users' checks cost.  It is made anew at every load, so it follows the file."""

    path: str
    hashes: Mapping[str, bytes] = attrs.field(repr=lambda h: f"<{len(h)} users>")
    dummy: bytes = attrs.field(repr=False)

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
        hashes[user] = _checked_hash(hashed.strip(), user, where)
    return Users(path, hashes, dummy_for(hashes.values()))


def shape_of(hashed: bytes) -> Shape | None:
    """What checking against ``hashed`` costs, or None for a hash that no check can use
    (a bcrypt cost outside 4..31: the library refuses it without hashing)."""
    if hashed.startswith(SHA512_PREFIX):
        parsed = sha512_crypt.from_string(hashed)
        return ("sha512", parsed.rounds, len(parsed.salt))
    cost = hashed[4:6]
    if not cost.isdigit() or not 4 <= int(cost) <= 31:
        return None
    return ("bcrypt", int(cost))


def dummy_for(hashes: Iterable[bytes]) -> bytes:
    """A stand-in hash of the most common shape among ``hashes`` (the first of those
    equally common, in file order; bcrypt cost 12 when there is none).

    Its salt and checksum are random: no password that anyone could know has it as its
    hash, and making it costs nothing, so a load never waits for it (hashing a random
    password instead would cost one check at every load: a second at the rounds cap,
    days at bcrypt's cost 31).  Checking a password against it costs what checking
    against a real hash of that shape costs: the library reads the cost and salt,
    hashes the password with them, then compares the result with the checksum."""
    shapes = Counter(shape for shape in map(shape_of, hashes) if shape is not None)
    shape = shapes.most_common(1)[0][0] if shapes else EMPTY_FILE_DUMMY
    if shape[0] == "sha512":
        _, rounds, salt_size = shape
        salt = _random(_CRYPT_CHARS, salt_size)
        dummy = f"$6$rounds={rounds}${salt}${_random(_CRYPT_CHARS, 86)}".encode("ascii")
        sha512_crypt.from_string(dummy)  # well-formed, or a bug here: raise now, not later
        return dummy
    return bcrypt.gensalt(shape[1]) + _random(_BCRYPT_CHARS, 31).encode("ascii")


def _random(alphabet: str, size: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(size))


def _checked_hash(hashed: str, user: str, where: str) -> bytes:
    """``hashed`` as stored, once it is known to be a usable bcrypt or SHA-512-crypt hash."""
    if hashed.startswith("$6$"):
        _check_sha512(hashed, user, where)
        return hashed.encode("ascii")
    encoded = hashed.encode("ascii", "replace")
    if not encoded.startswith(BCRYPT_PREFIXES) or len(encoded) != 60:
        raise UsersFileError(f"{where}: the hash of {user!r} is neither bcrypt ($2b$NN$ and "
                             "53 characters) nor SHA-512-crypt ($6$)")
    cost = encoded[4:6]
    if not cost.isdigit() or encoded[6:7] != b"$" or int(cost) < MIN_BCRYPT_COST:
        raise UsersFileError(f"{where}: the bcrypt hash of {user!r} has no cost of "
                             f"{MIN_BCRYPT_COST:02d} to 31 after its $2b$ "
                             f"(it has {cost.decode('ascii', 'replace')!r})")
    if int(cost) > MAX_BCRYPT_COST:
        raise UsersFileError(f"{where}: the bcrypt hash of {user!r} has cost {int(cost)}, "
                             f"more than the {MAX_BCRYPT_COST} accepted "
                             "(every login would run it: each step doubles the time)")
    return encoded


def _check_sha512(hashed: str, user: str, where: str) -> None:
    """Refuse a ``$6$`` hash that is malformed or asks for more than MAX_SHA512_ROUNDS.

    The rounds field is read here before the library parses the rest, so that a huge
    value gets the cap's error rather than the library's own (it allows 999,999,999)."""
    rounds = _ROUNDS.match(hashed)
    digits = rounds[1].lstrip("0") if rounds is not None else ""
    if len(digits) > len(str(MAX_SHA512_ROUNDS)) or int(digits or "0") > MAX_SHA512_ROUNDS:
        shown = rounds[1] if len(rounds[1]) <= 20 else rounds[1][:20] + "..."
        raise UsersFileError(f"{where}: the SHA-512-crypt hash of {user!r} asks for "
                             f"rounds={shown}, more than the {MAX_SHA512_ROUNDS} accepted "
                             "(every login would run them all)")
    try:
        if not hashed.isascii():
            raise ValueError("not ASCII")
        parsed = sha512_crypt.from_string(hashed)
        if not parsed.checksum:
            raise ValueError("no checksum after the salt")
    except ValueError as e:
        reason = str(e).removeprefix("sha512_crypt: ")
        raise UsersFileError(f"{where}: the SHA-512-crypt hash of {user!r} is malformed "
                             f"($6$[rounds=N$]SALT$ and 86 characters): {reason}") from None


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

    A name that is not in the file is checked against L{Users.dummy} by the very same
    L{verify} (same length caps, same one-at-a-time lock for SHA-512-crypt), so that a
    miss costs what a wrong password of a real user costs, and is never answered at
    once; a user's own hash (its scheme, cost or rounds) sets what its check costs."""
    hashed = users.hashes.get(user)
    matched = verify(password, users.dummy if hashed is None else hashed)
    return matched and hashed is not None


def verify(password: bytes, hashed: bytes) -> bool:
    """Whether ``password`` hashes to ``hashed`` (bcrypt or SHA-512-crypt; blocking).

    A password longer than the scheme's cap fails without being hashed."""
    if hashed.startswith(SHA512_PREFIX):
        if len(password) > MAX_SHA512_PASSWORD:
            return False
        try:
            with _ONE_SHA512_AT_A_TIME:
                return sha512_crypt.verify(password, hashed)
        except ValueError:  # a NUL in the password (crypt(3) could never have hashed it)
            return False
    if len(password) > MAX_PASSWORD:
        return False
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:
        return False


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
