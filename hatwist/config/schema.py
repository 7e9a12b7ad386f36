"""The one table of config keys and scopes (tests: tests/config/test_schema.py).

Every key hatwist understands is a row of :data:`KEYS`: its name, the scopes where it means
something, its converter, its default and one line of documentation. The settings resolver,
``hatwist check-config`` and the generated docs/config-reference.rst all read this table,
so adding a key here is the whole job of making it configurable.
"""

from __future__ import annotations

import difflib
import enum
from collections.abc import Mapping
from typing import Any

import attrs

from hatwist.config import converters as c
from hatwist.config.values import HealthCheckMode, ListenTLSMode, TLSMode


class Section(enum.Enum):
    """Which resolved value a key ends up in."""

    SERVICE = "service"  # ServiceSettings: one per process
    HEALTH = "health"  # HealthSettings: the ha_proxy_client block
    DELIVERY = "delivery"  # DeliverySettings: per (binding, domain)


GLOBAL = "global"
MODULE = "ha_proxy_client"
GROUP = "binding_group"
BINDING = "binding"
DOMAIN = "domain"

DEFAULT_BINDING = "default"
"""The binding that always exists; ``binding { ... }`` without a name configures it."""

_DELIVERY_SCOPES = frozenset({GLOBAL, GROUP, BINDING, DOMAIN})
_GLOBAL_ONLY = frozenset({GLOBAL})
_MODULE_ONLY = frozenset({MODULE})
_BINDING_ONLY = frozenset({GROUP, BINDING})


class NameRule(enum.Enum):
    REQUIRED = "required"
    OPTIONAL = "optional"
    FORBIDDEN = "forbidden"


@attrs.frozen
class ScopeRule:
    """Where a scope may appear and whether it takes a name."""

    kind: str
    parents: frozenset[str]
    name: NameRule
    doc: str


SCOPES: Mapping[str, ScopeRule] = {
    rule.kind: rule
    for rule in (
        ScopeRule(MODULE, _GLOBAL_ONLY, NameRule.FORBIDDEN, "health checks of the proxy servers"),
        ScopeRule(GROUP, _GLOBAL_ONLY, NameRule.REQUIRED, "settings shared by its bindings"),
        ScopeRule(
            BINDING,
            frozenset({GLOBAL, GROUP}),
            NameRule.OPTIONAL,
            f"a source of outbound mail; without a name, the {DEFAULT_BINDING} binding",
        ),
        ScopeRule(
            DOMAIN,
            frozenset({GLOBAL, GROUP, BINDING}),
            NameRule.REQUIRED,
            "settings for mail to one destination domain",
        ),
    )
}


@attrs.frozen
class Key:
    """One config key: the row every part of hatwist agrees on."""

    name: str
    section: Section
    field: str  # attribute name on the Section's value class
    scopes: frozenset[str]
    convert: c.Converter
    default: Any
    type_doc: str
    doc: str
    default_doc: str | None = None  # shown instead of ``default`` when that reads badly

    def describe_default(self) -> str:
        if self.default_doc is not None:
            return self.default_doc
        return format_value(self.default)

    def format(self, value: Any) -> str:
        """A resolved value for display; an unset value says what happens instead."""
        if value is None and self.default_doc is not None:
            return f"({self.default_doc})"
        return format_value(value)


def format_value(value: Any) -> str:
    """A converted value written back the way the config file spells it."""
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return " ".join(str(item) for item in value) or "(none)"
    return "(none)" if value is None else str(value)


def json_value(value: Any) -> Any:
    """A converted value as plain JSON data (addresses and networks as strings)."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return [json_value(item) for item in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


def _service(name: str, field: str, convert: c.Converter, default: Any, type_doc: str,
             doc: str, default_doc: str | None = None) -> Key:  # fmt: skip
    return Key(name, Section.SERVICE, field, _GLOBAL_ONLY, convert, default, type_doc, doc,
               default_doc)  # fmt: skip


def _health(name: str, field: str, convert: c.Converter, default: Any, type_doc: str,
            doc: str) -> Key:  # fmt: skip
    return Key(name, Section.HEALTH, field, _MODULE_ONLY, convert, default, type_doc, doc)


def _delivery(name: str, field: str, convert: c.Converter, default: Any, type_doc: str,
              doc: str, default_doc: str | None = None) -> Key:  # fmt: skip
    return Key(name, Section.DELIVERY, field, _DELIVERY_SCOPES, convert, default, type_doc,
               doc, default_doc)  # fmt: skip


_SECONDS = "seconds"
_COUNT = "whole number >= 1"

KEYS: tuple[Key, ...] = (
    # -- delivery: global, binding_group, binding, domain ------------------------------------
    _delivery("ha_proxy_server", "proxy_servers", c.server_list, (), "host:port list",
              "proxy servers to send through; IPv6 as [addr]:port; host names are "
              "re-resolved at every health check; empty turns off an inherited proxy"),
    _delivery("ha_proxy_src_addr", "src_ipv4", c.ipv4_address, None, "IPv4 address",
              "PROXY header source address for IPv4 destinations"),
    _delivery("ha_proxy_ipv6_src_addr", "src_ipv6", c.ipv6_address, None, "IPv6 address",
              "PROXY header source address for IPv6 destinations"),
    _delivery("ha_proxy_bypass", "bypass", c.to_bool, False, "true/false/yes/no/1/0",
              "deliver directly to the MX instead of through the proxy"),
    _delivery("remote_smtp_port", "remote_smtp_port", c.integer(1, 65535), 25, "port",
              "destination MX port"),
    _delivery("ehlo_hostname", "ehlo_hostname", c.hostname, None, "host name",
              "name sent in EHLO", default_doc="this host's FQDN"),
    _delivery("bind_address", "bind_address", c.ip_address, None, "IP address",
              "local source address for direct (bypassed) delivery",
              default_doc="chosen by the OS"),
    _delivery("tls", "tls", c.choice(TLSMode), TLSMode.IFAVAILABLE, "ifavailable, required or no",
              "STARTTLS towards the MX: when offered (if the MX's handshake fails, once more "
              "without STARTTLS), always (never plaintext), or never"),
    _delivery("retry_interval", "retry_interval", c.integer(1), 900, _SECONDS,
              "wait between delivery attempts of a deferred message"),
    _delivery("message_expiration", "message_expiration", c.integer(1), 432000, _SECONDS,
              "give up and bounce after this long in the queue (5 days, RFC 5321)"),
    _delivery("max_connections", "max_connections", c.integer(1), 10, _COUNT,
              "concurrent outbound connections per destination domain"),
    _delivery("max_messages_per_connection", "max_messages_per_connection", c.integer(1), 50,
              _COUNT, "messages sent over one SMTP session before it is closed"),
    _delivery("connect_timeout", "connect_timeout", c.integer(1), 30, _SECONDS,
              "deadline for connecting (to the proxy, or to the MX when bypassed)"),
    _delivery("smtp_timeout", "smtp_timeout", c.integer(1), 300, _SECONDS,
              "deadline for each SMTP command of an outbound session"),
    _delivery("outbound_throttle_messages", "outbound_throttle_messages", c.throttle, None,
              "messages/seconds", "at most this many messages start in any window of that "
              "many seconds, per (binding, destination domain): warms up a new source IP; "
              "empty turns off an inherited throttle", default_doc="no throttle"),
    # -- health: the ha_proxy_client block --------------------------------------------------
    _health("health_check_interval", "interval", c.integer(1), 5, _SECONDS,
            "time between health checks of each proxy server"),
    _health("health_check_timeout", "timeout", c.integer(1), 1, _SECONDS,
            "a check not finished by then fails; must be below the interval"),
    _health("health_check_failure_threshold", "failure_threshold", c.integer(1), 3, _COUNT,
            "consecutive failures that unplumb a server"),
    _health("health_check_success_threshold", "success_threshold", c.integer(1), 3, _COUNT,
            "consecutive successes that plumb a server again"),
    _health("health_check_mode", "mode", c.choice(HealthCheckMode), HealthCheckMode.CONNECT,
            "connect or smtp", "connect: a TCP connect; smtp: a PROXY header to "
            "health_check_target from each source address, then its 220 banner"),
    _health("health_check_target", "target", c.server, None, "host:port",
            "SMTP server the smtp-mode check reaches through the proxy; with "
            "health_check_ipv6_target set, for IPv4 sources only (smtp needs one of the two)"),
    _health("health_check_ipv6_target", "ipv6_target", c.ipv6_server, None,
            "[IPv6]:port or host:port", "SMTP server that proves IPv6 sources in smtp mode "
            "(a source of a family without a target is judged by a TCP connect)"),
    # -- service: top level only ------------------------------------------------------------
    _service("listen", "listen", c.listen_address, c.listen_address("127.0.0.1:2525"),
             "ip:port", "inbound SMTP listener"),
    _service("spool_dir", "spool_dir", c.path, "/var/spool/hatwist", "path",
             "directory of the durable message spool"),
    _service("status_listen", "status_listen", c.listen_address,
             c.listen_address("127.0.0.1:8025"), "ip:port",
             "HTTP listener for /status and /metrics"),
    _service("resolver", "resolver", c.resolver_address, None, "ip[:port]",
             "DNS server to use instead of the system's", default_doc="the system's resolver"),
    _service("relay_from", "relay_from", c.networks, c.networks("127.0.0.0/8 ::1/128"),
             "CIDR list", "client networks allowed to submit mail"),
    _service("max_message_size", "max_message_size", c.integer(1), 26214400, "bytes",
             "largest message accepted (advertised as SIZE)"),
    _service("shutdown_grace", "shutdown_grace", c.integer(0), 30, _SECONDS,
             "on stop, time given to sessions in flight before they are cut"),
    _service("max_inbound_connections", "max_inbound_connections", c.integer(1), 100,
             "whole number >= 1", "submitter sessions at once from peers inside relay_from; more "
             "get 421 4.3.2 (each may hold a message in memory)"),
    _service("max_deliveries_in_flight", "max_deliveries_in_flight", c.integer(1), 100,
             "whole number >= 1", "delivery attempts at once over all bindings and domains "
             "(max_connections limits each domain)"),
    _service("max_inbound_connections_per_ip", "max_inbound_connections_per_ip",
             c.integer(1), 10, _COUNT, "submitter sessions at once from one address; more get "
             "421 4.7.0"),
    _service("max_inbound_connections_unlisted", "max_inbound_connections_unlisted",
             c.integer(1), 5, _COUNT, "sessions at once from all peers outside relay_from, a "
             "pool of their own apart from max_inbound_connections; more get 421 4.3.2"),
    _service("inbound_idle_timeout", "inbound_idle_timeout", c.integer(1), 300, _SECONDS,
             "a session with no command that moves a transaction on (NOOP, RSET, VRFY do not) "
             "for this long gets 421 4.4.2 and is closed"),
    _service("inbound_junk_command_limit", "inbound_junk_command_limit", c.integer(1), 100,
             _COUNT, "NOOP, RSET, VRFY, unknown verbs and repeated EHLO per session (counted "
             "again after each accepted message); one more gets 421 4.7.0 and is closed"),
    _service("hostname", "hostname", c.hostname, None, "host name",
             "this relay's name in the 220 greeting, the EHLO reply, Received: lines, the "
             "default EHLO name and bounces", default_doc="this host's FQDN"),
    _service("postmaster_address", "postmaster_address", c.mailbox, None, "address",
             "where mail to the bare postmaster (RFC 5321 4.5.1) is relayed",
             default_doc="postmaster@ the hostname"),
    # -- bounds on hostile MXes and HTTP peers (issue 11) -----------------------------------
    _delivery("mx_address_limit", "mx_address_limit", c.integer(1), 5, _COUNT,
              "MX addresses one attempt tries, over all MX hosts, best first (Postfix's "
              "smtp_mx_address_limit); addresses without a route do not count"),
    _delivery("attempt_timeout", "attempt_timeout", c.integer(1), 600, _SECONDS,
              "deadline for one whole delivery attempt: MX lookup, every connect and the "
              "session; then whatever is in flight is aborted and the message deferred"),
    _service("status_max_connections", "status_max_connections", c.integer(1), 64,
             "whole number >= 1", "open connections to status_listen at once; past it a "
             "new one replaces the longest-idle one, or gets 503 when none is idle"),
    _service("status_idle_timeout", "status_idle_timeout", c.integer(1), 15, _SECONDS,
             "a status connection must send a whole request within this long of opening "
             "or of its last response, or it is closed"),
    _service("redis_url", "redis_url", c.redis_url, None, "redis://host:port/db",
             "share max_connections and outbound_throttle_messages with every hatwist "
             "process using this Redis (rediss:// for TLS); while it is unreachable, each "
             "runs under its share of them", default_doc="limits are per process"),
    # -- submitters from other hosts: STARTTLS and AUTH on the listener ----------------------
    _service("listen_tls_cert", "listen_tls_cert", c.file_path, None, "path",
             "PEM certificate (leaf first, then its chain) offered with STARTTLS on the "
             "listener; re-read on SIGHUP", default_doc="no STARTTLS"),
    _service("listen_tls_key", "listen_tls_key", c.file_path, None, "path",
             "PEM private key of listen_tls_cert; re-read on SIGHUP",
             default_doc="none (needed with listen_tls_cert)"),
    _service("listen_tls", "listen_tls", c.choice(ListenTLSMode), None, "optional or required",
             "optional: STARTTLS offered (TLS 1.2 or later); required: MAIL and AUTH get "
             "530 5.7.0 before STARTTLS", default_doc="optional when listen_tls_cert is set"),
    _service("auth_users_file", "auth_users_file", c.file_path, None, "path",
             "user:hash lines (bcrypt or SHA-512-crypt); SMTP AUTH PLAIN and LOGIN over TLS "
             "against them lets a client relay from anywhere; re-read on SIGHUP (a bad "
             "file keeps the old one)",
             default_doc="no AUTH"),
    Key("allowed_submitters", Section.DELIVERY, "allowed_submitters", _BINDING_ONLY,
        c.submitters, None, "CIDR and user:NAME list",
        "who may name this binding (X-Binding): clients from these networks or logged in as "
        "these users; others get 550 5.7.1", default_doc="any client allowed to relay"),
    Key("binding_weight", Section.DELIVERY, "binding_weight", _BINDING_ONLY,
        c.integer(0, 1000), 1, "whole number 0-1000",
        "this binding's share of the attempts of mail sent to its binding_group "
        "(X-Binding-Group), among the group's bindings with a plumbed path for the MX's "
        "address family; 0 takes none"),
    # -- queue management (issue 15) ----------------------------------------------------------
    _service("control_socket", "control_socket", c.socket_path, None, "path",
             "UNIX socket (mode 0600) where the relay answers hatwist queue",
             default_doc="spool_dir/control.sock"),
    # -- what senders are told (issue 12) ---------------------------------------------------
    _delivery("delay_warning_time", "delay_warning_time", c.integer(0), 0, _SECONDS,
              "after this long in the queue the sender gets one \"delayed\" DSN listing the "
              "recipients still pending (Postfix's name); 0 sends none",
              default_doc="0 (off)"),
    # -- scale-out: workers and a balancer in front (issue 13) ----------------------------
    _service("workers", "workers", c.workers, 1, "auto or whole number >= 1",
             "relay processes sharing the listener, each with its own spool partition "
             "(spool_dir/worker-N) and scheduler; auto: one per core; limits are divided "
             "among them"),
    _service("listen_proxy_protocol", "listen_proxy_protocol", c.to_bool, False,
             "true/false/yes/no/1/0", "connections to listen from listen_proxy_from must "
             "start with a PROXY v1 or v2 header (a balancer in front); its source is the "
             "client"),
    _service("listen_proxy_from", "listen_proxy_from", c.networks,
             c.networks("127.0.0.0/8 ::1/128"), "CIDR list",
             "the balancers allowed to connect when listen_proxy_protocol is on; other "
             "peers are refused"),
)  # fmt: skip

KEYS_BY_NAME: Mapping[str, Key] = {key.name: key for key in KEYS}


def suggest(word: str, candidates: list[str] | tuple[str, ...]) -> str:
    """`` (did you mean 'x'?)`` for a near miss, else ``""``."""
    close = difflib.get_close_matches(word.lower(), list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def scope_label(kind: str, name: str | None) -> str:
    """How a scope is named in messages: ``the top level``, ``binding 'b1'``."""
    if kind == GLOBAL:
        return "the top level"
    return f"the {kind} block" if name is None else f"{kind} '{name}'"


def where_allowed(key: Key) -> str:
    """Where ``key`` does belong, for "not allowed here" messages."""
    if key.scopes == _GLOBAL_ONLY:
        return "it is only allowed at the top level"
    if key.scopes == _MODULE_ONLY:
        return f"it belongs in the {MODULE} {{ ... }} block"
    if key.scopes == _BINDING_ONLY:
        return "it is only allowed in binding and binding_group scopes"
    return "it is allowed at the top level and in binding_group, binding and domain scopes"
