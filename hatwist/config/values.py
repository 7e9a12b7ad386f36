"""The resolved settings other modules read (tests: tests/config/test_values.py).

These are plain frozen values: the parser and the schema produce them, and the rest of
hatwist (health checks, routing, delivery, the service) consumes them without ever seeing
the config file's text.
"""

from __future__ import annotations

import enum
import ipaddress
import os
from typing import Union
from urllib.parse import urlsplit, urlunsplit

import attrs

#: attrs metadata of a settings field that no config key sets (the process sets it).
NOT_A_KEY = "hatwist.not_a_key"

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]  # noqa: UP007


class TLSMode(enum.Enum):
    """STARTTLS policy towards the destination MX."""

    IFAVAILABLE = "ifavailable"
    REQUIRED = "required"
    NO = "no"


class ListenTLSMode(enum.Enum):
    """STARTTLS policy on the inbound listener (``listen_tls``)."""

    OPTIONAL = "optional"  # offered; plaintext submission still works
    REQUIRED = "required"  # MAIL and AUTH are refused (530 5.7.0) before STARTTLS


class HealthCheckMode(enum.Enum):
    """How a proxy server is probed: a TCP connect, or a PROXY header plus the 220 banner."""

    CONNECT = "connect"
    SMTP = "smtp"


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def ip_version(text: str) -> int | None:
    """4 or 6 for an IP literal, None for anything else (a host name)."""
    try:
        return ipaddress.ip_address(text.strip()).version
    except ValueError:
        return None


@attrs.frozen
class ServerAddress:
    """A ``host:port`` as configured; equal (and hashed) by host and port.

    ``host`` is an IP literal (IPv6 without brackets) or a host name, which the health
    checker re-resolves at every check. ``text`` keeps the configured spelling, so logs and
    status pages show what the operator wrote: ``str(server) == server.text``.
    """

    host: str
    port: int
    text: str = attrs.field(
        eq=False,
        default=attrs.Factory(lambda self: _format_address(self.host, self.port), takes_self=True),
    )

    @property
    def ip_version(self) -> int | None:
        """4 or 6 for an IP literal, None for a host name."""
        return ip_version(self.host)

    def __str__(self) -> str:
        return self.text


@attrs.frozen
class Throttle:
    """At most ``messages`` delivery attempts may start in any ``seconds``-long window.

    Momentum's ``outbound_throttle_messages = "N/SECONDS"``: how operators warm up a new
    source IP, a few messages per period to each destination, raised over weeks.
    """

    messages: int = attrs.field(validator=attrs.validators.ge(1))
    seconds: int = attrs.field(validator=attrs.validators.ge(1))

    def __str__(self) -> str:
        return f"{self.messages}/{self.seconds}"


@attrs.frozen
class HealthSettings:
    """The ``ha_proxy_client { ... }`` block: how proxy servers are probed."""

    interval: int
    timeout: int
    failure_threshold: int
    success_threshold: int
    mode: HealthCheckMode
    target: ServerAddress | None
    ipv6_target: ServerAddress | None = None
    """Proves IPv6 sources; when set, ``target`` proves IPv4 ones only."""

    def target_for(self, family: int) -> ServerAddress | None:
        """The smtp-mode target for sources of IPv``family`` (see :func:`probe_target`)."""
        return probe_target(self.target, self.ipv6_target, family)


def probe_target(
    target: ServerAddress | None, ipv6_target: ServerAddress | None, family: int
) -> ServerAddress | None:
    """
    Which target proves sources of IPv``family`` in smtp mode; None when none does.

    ``ipv6_target``, when set, proves IPv6 and leaves ``target`` to IPv4 (an IPv6 literal
    there then proves nothing). Without it, ``target`` proves its own family when it is
    an IP literal, and both when it is a host name (resolved for each source, which may
    still find no address of one family: the probe then falls back to a connect).
    """
    if ipv6_target is not None:
        if family == 6:
            return ipv6_target
        return target if target is not None and target.ip_version != 6 else None
    if target is None:
        return None
    return target if target.ip_version in (None, family) else None


#: The control socket's file name in spool_dir when ``control_socket`` is not set.
CONTROL_SOCKET_NAME = "control.sock"


@attrs.frozen
class SubmitterPolicy:
    """Who may name a binding (``allowed_submitters``): client networks and user names.

    A submitter matches when its address is inside one of ``networks`` or it logged in
    (SMTP AUTH) as one of ``users``; either is enough.
    """

    networks: tuple[IPNetwork, ...] = ()
    users: tuple[str, ...] = ()

    def permits(
        self, peer: ipaddress.IPv4Address | ipaddress.IPv6Address | None, user: str | None
    ) -> bool:
        if user is not None and user in self.users:
            return True
        return peer is not None and any(
            peer.version == net.version and peer in net for net in self.networks
        )

    def __str__(self) -> str:
        return " ".join([*(str(n) for n in self.networks), *(f"user:{u}" for u in self.users)])


@attrs.frozen
class ServiceSettings:
    """Process-wide settings: where hatwist listens, spools and whom it relays for."""

    listen: ServerAddress
    spool_dir: str
    status_listen: ServerAddress
    resolver: ServerAddress | None
    relay_from: tuple[IPNetwork, ...]
    max_message_size: int
    shutdown_grace: int
    max_inbound_connections: int
    max_deliveries_in_flight: int
    max_inbound_connections_per_ip: int = 10
    max_inbound_connections_unlisted: int = 5
    inbound_idle_timeout: int = 300
    inbound_junk_command_limit: int = 100
    hostname: str | None = None  # None: this host's FQDN
    postmaster_address: str | None = None  # None: postmaster@ the hostname
    status_max_connections: int = 64
    status_idle_timeout: int = 15
    redis_url: RedisURL | None = None
    """Where limits are shared fleet-wide (see hatwist.shared); None: per process."""
    listen_tls_cert: str | None = None  # PEM certificate (chain) for inbound STARTTLS
    listen_tls_key: str | None = None  # PEM private key of listen_tls_cert
    listen_tls: ListenTLSMode | None = None  # None: optional when a certificate is set
    auth_users_file: str | None = None  # user:hash lines (bcrypt or SHA-512-crypt) for SMTP AUTH
    control_socket: str | None = None  # None: control.sock in spool_dir

    workers: int = 1
    listen_proxy_protocol: bool = False
    listen_proxy_from: tuple[IPNetwork, ...] = ()
    # Not config keys: set for a worker process by hatwist.workers (1 and 0 otherwise).
    limit_share: int = attrs.field(default=1, metadata={NOT_A_KEY: True})
    """How many workers share the configured limits: a worker divides
    max_connections and outbound_throttle_messages by it (hatwist.workers.share)."""
    worker: int = attrs.field(default=0, metadata={NOT_A_KEY: True})
    """This process's worker number (1..workers); 0 when it is the only process."""

    @property
    def inbound_tls(self) -> ListenTLSMode | None:
        """The effective STARTTLS policy of the listener; None when it offers no TLS."""
        if self.listen_tls_cert is None:
            return None
        return self.listen_tls or ListenTLSMode.OPTIONAL

    @property
    def control_socket_path(self) -> str:
        """Where the control socket lives (``hatwist queue`` finds it the same way)."""
        if self.control_socket is not None:
            return self.control_socket
        return os.path.join(self.spool_dir, CONTROL_SOCKET_NAME)


@attrs.frozen
class DeliverySettings:
    """Everything resolved for one (binding, destination domain) pair.

    Durations and timeouts are whole seconds.
    """

    proxy_servers: tuple[ServerAddress, ...]
    src_ipv4: str | None
    src_ipv6: str | None
    bypass: bool
    remote_smtp_port: int
    ehlo_hostname: str | None
    bind_address: str | None
    tls: TLSMode
    retry_interval: int
    message_expiration: int
    max_connections: int
    max_messages_per_connection: int
    connect_timeout: int
    smtp_timeout: int
    outbound_throttle_messages: Throttle | None = None  # None: no throttle
    mx_address_limit: int = 5
    attempt_timeout: int = 600
    allowed_submitters: SubmitterPolicy | None = None  # None: whoever may relay
    delay_warning_time: int = 0  # 0: no "delayed" DSN
    binding_weight: int = 1  # its share of its binding_group's attempts (0: none)

    @property
    def uses_proxy(self) -> bool:
        """True when mail goes through a proxy server rather than straight to the MX."""
        return bool(self.proxy_servers) and not self.bypass

    def source_for(self, ip_version: int) -> str | None:
        """The PROXY header source address for a destination of this IP version."""
        return self.src_ipv4 if ip_version == 4 else self.src_ipv6


def redacted_url(url: str) -> str:
    """``url`` without its password, for log lines, check-config and status pages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username or ''}:***@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@attrs.frozen(repr=False)
class RedisURL:
    """The ``redis_url`` as configured: ``url`` connects, ``str()`` hides the password."""

    url: str

    def __str__(self) -> str:
        return redacted_url(self.url)

    def __repr__(self) -> str:
        return f"RedisURL({str(self)!r})"
