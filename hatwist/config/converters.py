"""Turn one config value's text into a typed value (tests: tests/config/test_converters.py).

Each converter takes the value exactly as written and returns the typed value or raises
``ValueError`` with a message that completes the sentence "KEY: ..." -- the schema adds
the key name, file and line. Converters are pure and know nothing about scopes.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from hatwist.config.values import IPNetwork, RedisURL, ServerAddress, SubmitterPolicy, Throttle

_E = TypeVar("_E", bound=enum.Enum)

Converter = Callable[[str], Any]

_TRUE = frozenset({"true", "yes", "1"})
_FALSE = frozenset({"false", "no", "0"})
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")
_NAME = re.compile(r"[a-z0-9_.-]+\Z")
_LIST_SEPARATOR = re.compile(r"[\s,]+")
_MAX_HOSTNAME = 253
# A last label that is a number (decimal, or 0x hex): the same rule as
# hatwist.endpoint.is_numeric_name, which this pure package does not import.
_NUMERIC_LABEL = re.compile(r"(?:[0-9]+|0x[0-9a-f]*)\Z")
_THROTTLE = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*\Z", re.ASCII)


def split_list(text: str) -> list[str]:
    """Lists are written as space- and/or comma-separated items."""
    return [item for item in _LIST_SEPARATOR.split(text) if item]


def to_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"expected true/false/yes/no/1/0, not {text!r}")


def integer(minimum: int, maximum: int | None = None) -> Converter:
    """A converter for whole numbers in ``[minimum, maximum]`` (durations are seconds)."""

    def to_int(text: str) -> int:
        word = text.strip()
        if not word.isascii() or not word.isdigit():
            raise ValueError(f"expected a whole number, not {text!r}")
        value = int(word)
        if value < minimum:
            raise ValueError(f"must be at least {minimum}, not {value}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be at most {maximum}, not {value}")
        return value

    return to_int


def choice(enum_type: type[_E]) -> Callable[[str], _E]:
    """A converter for one of an enum's values, case-insensitively."""

    def to_choice(text: str) -> _E:
        word = text.strip().lower()
        for member in enum_type:
            if member.value == word:
                return member
        allowed = " | ".join(m.value for m in enum_type)
        raise ValueError(f"expected one of {allowed}, not {text!r}")

    return to_choice


class _NumericName(ValueError):
    """A "host name" that getaddrinfo would read as an IP address nobody wrote."""


def hostname(text: str) -> str:
    """A DNS host name, lower-cased, without a trailing dot."""
    name = text.strip().rstrip(".").lower()
    if not name or len(name) > _MAX_HOSTNAME or not name.isascii():
        raise ValueError(f"{text!r} is not a valid host name")
    if not all(_LABEL.match(label) for label in name.split(".")):
        raise ValueError(f"{text!r} is not a valid host name")
    if _NUMERIC_LABEL.match(name.rpartition(".")[2]):
        # getaddrinfo would read 010.0.0.1 as 8.0.0.1 and 127.1 as 127.0.0.1.
        raise _NumericName(
            f"{text.strip()!r} is not a host name (its last label is a number) and not an IP"
            " address in dotted-quad form either; write an IP as four decimal numbers"
            " (e.g. 10.0.0.1)"
        )
    return name


def domain(text: str) -> str:
    """A mail domain, as in ``Domain example.com { ... }``; compared case-insensitively."""
    try:
        return hostname(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a valid domain name") from None


def binding_name(text: str) -> str:
    """Binding and group names appear in logs and metrics labels: keep them plain."""
    name = text.strip().lower()
    if not name.isascii() or not _NAME.match(name):
        raise ValueError(f"{text!r} is not a valid name (use letters, digits, '_', '-' and '.')")
    return name


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None


def ip_address(text: str) -> str:
    """Any IP address, in canonical (compressed, lower-case) form."""
    return str(_ip(text))


def ipv4_address(text: str) -> str:
    address = _ip(text)
    if address.version != 4:
        raise ValueError(f"must be an IPv4 address; {text.strip()!r} is IPv6")
    return str(address)


def ipv6_address(text: str) -> str:
    address = _ip(text)
    if address.version != 6:
        raise ValueError(f"must be an IPv6 address; {text.strip()!r} is IPv4")
    return str(address)


def networks(text: str) -> tuple[IPNetwork, ...]:
    """A non-empty list of networks in CIDR form; a bare address is a one-host network."""
    items = split_list(text)
    if not items:
        raise ValueError("expected at least one network, e.g. 127.0.0.0/8")
    result = []
    for item in items:
        try:
            result.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not a network in CIDR form (e.g. 10.0.0.0/8)") from None
    return tuple(result)


def _port(text: str, whole: str, minimum: int) -> int:
    if not text.isascii() or not text.isdigit() or not minimum <= int(text) <= 65535:
        raise ValueError(f"{whole!r} has an invalid port {text!r} (expected {minimum}-65535)")
    return int(text)


def server_address(
    text: str, *, default_port: int | None = None, ip_only: bool = False, min_port: int = 1
) -> ServerAddress:
    """``host:port``, ``[ipv6]:port`` or (with ``ip_only``) an IP literal.

    With ``default_port`` the port may be left out. A host name is kept lower-cased (the
    health checker re-resolves it); an IP literal is kept in canonical form.
    """
    whole = text.strip()
    if whole.startswith("["):
        host, sep, rest = whole[1:].partition("]")
        if not sep:
            raise ValueError(f"{whole!r} has '[' without ']'")
        try:
            host = ipv6_address(host)
        except ValueError:
            raise ValueError(f"{whole!r}: only an IPv6 address goes inside [...]") from None
        if not rest and default_port is not None:
            return ServerAddress(host, default_port, whole)
        if not rest.startswith(":"):
            raise ValueError(f"{whole!r} needs a port, as [address]:port")
        return ServerAddress(host, _port(rest[1:], whole, min_port), whole)
    if whole.count(":") > 1:
        if default_port is not None:
            try:
                return ServerAddress(ipv6_address(whole), default_port, whole)
            except ValueError:
                pass
        raise ValueError(f"{whole!r}: write an IPv6 address with a port as [address]:port")
    host, sep, port_text = whole.partition(":")
    if sep:
        port = _port(port_text, whole, min_port)
    elif default_port is not None:
        port = default_port
    else:
        raise ValueError(f"{whole!r} needs a port, as host:port")
    try:
        host = ip_address(host)
    except ValueError:
        if ip_only:
            raise ValueError(f"{whole!r}: expected an IP address, not a host name") from None
        try:
            host = hostname(host)
        except _NumericName as e:
            raise ValueError(f"{whole!r}: {e}") from None
        except ValueError:
            raise ValueError(f"{whole!r} is neither an IP address nor a host name") from None
    return ServerAddress(host, port, whole)


def server(text: str) -> ServerAddress:
    """A remote ``host:port`` (host name or IP), port required."""
    return server_address(text)


def ipv6_server(text: str) -> ServerAddress:
    """A remote ``[ipv6]:port`` or ``host:port`` (resolved to IPv6); never an IPv4 literal."""
    address = server_address(text)
    if address.ip_version == 4:
        raise ValueError(f"{text.strip()!r} is an IPv4 address; expected [IPv6]:port or host:port")
    return address


def listen_address(text: str) -> ServerAddress:
    """A local ``ip:port`` to listen on; port 0 picks a free port."""
    return server_address(text, ip_only=True, min_port=0)


def resolver_address(text: str) -> ServerAddress:
    """A DNS server ``ip[:port]``; the port defaults to 53."""
    return server_address(text, default_port=53, ip_only=True)


def server_list(text: str) -> tuple[ServerAddress, ...]:
    """Zero or more servers; an empty list turns off an inherited proxy."""
    result: list[ServerAddress] = []
    for item in split_list(text):
        address = server(item)
        if address in result:
            raise ValueError(f"lists {item!r} twice")
        result.append(address)
    return tuple(result)


def throttle(text: str) -> Throttle | None:
    """``N/SECONDS``: at most N messages start in any SECONDS-long window.

    An empty value is no throttle, so a scope can turn off one it inherits.
    """
    if not text.strip():
        return None
    match = _THROTTLE.match(text)
    if match is None:
        raise ValueError(
            f"expected messages/seconds (e.g. 50/3600: at most 50 messages an hour), not {text!r}"
        )
    messages, seconds = int(match.group(1)), int(match.group(2))
    if messages < 1 or seconds < 1:
        raise ValueError(f"messages and seconds must both be at least 1, not {text.strip()!r}")
    return Throttle(messages, seconds)


def path(text: str) -> str:
    if not text.strip():
        raise ValueError("expected a directory path, not an empty value")
    return text.strip()


#: The longest path a UNIX socket can bind to on Linux (sun_path holds 108 bytes).
MAX_SOCKET_PATH = 107


def socket_path(text: str) -> str:
    """A path for a UNIX socket: not empty, and short enough for ``sun_path``."""
    value = text.strip()
    if not value:
        raise ValueError("expected a socket path, not an empty value")
    if len(value.encode("utf-8")) > MAX_SOCKET_PATH:
        raise ValueError(f"a UNIX socket path is at most {MAX_SOCKET_PATH} bytes long")
    return value


def mailbox(text: str) -> str:
    """An address ``local@domain`` (the domain a host name, lower-cased)."""
    local, at, domain = text.strip().rpartition("@")
    if not at or not local or not local.isascii() or not local.isprintable() or " " in local:
        raise ValueError(f"{text!r} is not an address (local@domain)")
    try:
        return f"{local}@{hostname(domain)}"
    except ValueError:
        raise ValueError(f"{text!r} is not an address (local@domain)") from None


_REDIS_SCHEMES = ("redis", "rediss", "unix")


def redis_url(text: str) -> RedisURL | None:
    """``redis://host[:port][/db]``, ``rediss://`` (TLS) or ``unix:///path``; empty is none.

    Checked here so a typo fails ``check-config`` at its line, not the first delivery.
    """
    word = text.strip()
    if not word:
        return None
    shown = re.sub(r"(//[^/@]*?:)[^/@]*@", r"\1***@", word)  # never echo a password
    try:
        parts = urlsplit(word)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"not a Redis URL ({e}): {shown!r}") from None
    if parts.scheme not in _REDIS_SCHEMES:
        raise ValueError(
            f"expected redis://host:port/db, rediss://... (TLS) or unix:///path, not {shown!r}"
        )
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError(f"a unix:// Redis URL needs a socket path: {shown!r}")
        return RedisURL(word)
    if not parts.hostname:
        raise ValueError(f"a {parts.scheme}:// URL needs a host: {shown!r}")
    if port == 0:
        raise ValueError(f"port must be 1-65535, not 0: {shown!r}")
    database = parts.path.lstrip("/")
    if database and not (database.isascii() and database.isdigit()):
        raise ValueError(f"the database after the host must be a number, not {database!r}")
    return RedisURL(word)


_USER = re.compile(r"[!-~]{1,64}\Z")


def submitters(text: str) -> SubmitterPolicy:
    """``allowed_submitters``: CIDRs and ``user:NAME`` entries (at least one)."""
    items = split_list(text)
    if not items:
        raise ValueError("expected CIDRs and/or user:NAME entries, e.g. 10.0.0.0/8 user:alice")
    nets: list[IPNetwork] = []
    users: list[str] = []
    for item in items:
        if item[:5].lower() == "user:":
            name = item[5:]
            if not _USER.match(name) or ":" in name:
                raise ValueError(f"{item!r} does not name a user (user:NAME)")
            users.append(name)
            continue
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(
                f"{item!r} is neither a network in CIDR form nor user:NAME") from None
    return SubmitterPolicy(tuple(nets), tuple(dict.fromkeys(users)))


def file_path(text: str) -> str:
    if not text.strip():
        raise ValueError("expected a file path, not an empty value")
    return text.strip()
