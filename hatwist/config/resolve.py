"""Resolve a parsed tree into a Config (tests: tests/config/test_settings.py).

A value for a (binding, domain) pair comes from the first of these scopes that sets it::

    domain-in-binding > binding > domain-in-binding_group > binding_group
        > top-level domain > top level > built-in default

Everything is resolved once, at load time, so every problem is found before hatwist
starts and lookups afterwards are dictionary reads. Checking each scope against the schema
is :mod:`hatwist.config._scopes`'s job; this module ranks the layers it returns and checks
the settings that depend on one another (across keys, scopes and bindings).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hatwist.config import schema
from hatwist.config._families import family_warning
from hatwist.config._scopes import EMPTY, BindingScope, Layer, ScopeChecker
from hatwist.config.errors import (
    ConfigFileError,
    ConfigWarning,
    InconsistentSettingsError,
    collected,
)
from hatwist.config.settings import Binding, BindingMap, Config, Group, group_route
from hatwist.config.syntax import Scope, Setting, parse
from hatwist.config.values import (
    DeliverySettings,
    HealthCheckMode,
    HealthSettings,
    ServerAddress,
    ServiceSettings,
    ip_version,
)

#: The key whose target proves sources of each family (with both set).
_TARGET_KEYS = {4: "health_check_target", 6: "health_check_ipv6_target"}


def parse_config(text: str, filename: str = "<string>") -> Config:
    """Parse and validate config text; raises ConfigError.

    The error is the subclass naming the problem, or, when the file has several,
    :class:`~hatwist.config.errors.ConfigErrors` listing every one: a syntax error
    stops the parse, but past it every key and block of every scope is checked.
    """
    return _Loader(filename).load(parse(text, filename))


def load_config(path: str) -> Config:
    """Read and validate the config file at ``path``; raises ConfigError."""
    try:
        with open(path, encoding="utf-8-sig") as f:  # -sig: a leading BOM is not text
            text = f.read()
    except OSError as e:
        raise ConfigFileError(f"cannot read the config file: {e.strerror or e}", path) from e
    except UnicodeDecodeError as e:
        raise ConfigFileError(f"the config file is not UTF-8 text: {e.reason}", path) from e
    return parse_config(text, path)


def _first_set(
    layers: list[Layer], section: schema.Section
) -> tuple[dict[str, Any], dict[str, Setting | None]]:
    """
    Each key of ``section`` from the first layer that sets it, else its default: the
    values by field name, and by key name where each was set (None for a default), so a
    later check can point at the line to change.
    """
    values: dict[str, Any] = {}
    origins: dict[str, Setting | None] = {}
    for key in schema.KEYS:
        if key.section is not section:
            continue
        value, origin = key.default, None
        for layer in layers:
            if key.name in layer.values:
                value, origin = layer.values[key.name]
                break
        values[key.field] = value
        origins[key.name] = origin
    return values, origins


def _resolve(layers: list[Layer]) -> tuple[DeliverySettings, dict[str, Setting | None]]:
    values, origins = _first_set(layers, schema.Section.DELIVERY)
    return DeliverySettings(**values), origins


class _Loader:
    """One load: resolves every binding from the checked tree, then cross-checks."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.warnings: list[ConfigWarning] = []
        self.scopes = ScopeChecker(filename)
        self.report = self.scopes.report
        self._sources: dict[ServerAddress, list[str]] = {}

    def load(self, root: Scope) -> Config:
        tree = self.scopes.check(root)
        service = self.service(tree.top)
        health = self.health(tree.module)
        resolved = BindingMap(
            {
                name: self.resolve_binding(binding, tree.groups, tree.top, tree.top_domains)
                for name, binding in tree.bindings.items()
            }
        )
        groups = self.groups(tree, resolved)
        self.check_probe_sources(health, tree.module)
        if self.scopes.errors:
            raise collected(self.scopes.errors)
        return Config(
            filename=self.filename,
            service=service,
            health=health,
            bindings=resolved,
            warnings=tuple(self.scopes.warnings + self.warnings),
            sources=self.sources,
            proxy_servers=self.proxy_servers(),
            groups=groups,
        )

    def groups(self, tree: Any, resolved: BindingMap) -> dict[str, Group]:
        """Each binding_group that has bindings: its members in file order, and its own
        settings (the group's scope over the top level's) for its queues.  A group
        whose bindings all have ``binding_weight = 0`` could never send: an error."""
        found: dict[str, Group] = {}
        for name, scope in tree.groups.items():
            members = sorted((b for b in tree.bindings.values() if b.group == name),
                             key=lambda b: b.line)
            if not members:
                continue  # a scope only: nothing can be sent to it
            own = self.resolve_binding(
                BindingScope(group_route(name), scope.line, EMPTY, {}, group=name),
                tree.groups, tree.top, tree.top_domains, check=False)
            found[name] = Group(name, tuple(b.name for b in members), own)
            weights = {b.name: resolved[b.name].base_settings.binding_weight for b in members}
            if not any(weights.values()) and "binding_weight" not in self.scopes.failed:
                self.report(InconsistentSettingsError,
                            f"binding_group {name}: every binding has binding_weight = 0, so "
                            "mail sent to it (X-Binding-Group) could never leave",
                            scope.line, None)
        return found

    def proxy_servers(self) -> tuple[ServerAddress, ...]:
        """Every distinct server in file order (scopes are visited out of file order)."""
        in_order = sorted(self.scopes.servers, key=lambda entry: (entry[0], entry[1]))
        return tuple(dict.fromkeys(server for _, _, server in in_order))

    def service(self, layer: Layer) -> ServiceSettings:
        values, origins = _first_set([layer], schema.Section.SERVICE)
        settings = ServiceSettings(**values)
        if settings.workers > 1:
            where = origins.get("workers")
            divided = ("max_deliveries_in_flight and the max_inbound_connections limits are "
                       "divided" if settings.redis_url is not None else
                       "no shared limits: max_connections, outbound_throttle_messages, "
                       "max_deliveries_in_flight and the max_inbound_connections limits are "
                       "divided")
            shared = (" (max_connections and outbound_throttle_messages are shared through "
                      "redis_url)" if settings.redis_url is not None else "")
            self.warnings.append(ConfigWarning(
                self.filename, where.line if where is not None else None,
                f"workers = {settings.workers} and {divided} among the {settings.workers} "
                f"workers (each gets 1/{settings.workers}, at least 1){shared}"))
        self.check_listener_tls(settings, origins)
        if self._refused("listen", "status_listen"):
            return settings
        if settings.listen == settings.status_listen and settings.listen.port != 0:
            where = origins.get("status_listen") or origins.get("listen")
            assert where is not None
            self.report(
                InconsistentSettingsError,
                f"listen and status_listen are both {settings.listen}",
                where.line,
                where.value_column,
            )
        return settings

    def check_listener_tls(
        self, settings: ServiceSettings, origins: Mapping[str, Setting | None]
    ) -> None:
        """STARTTLS needs both halves of the key pair; AUTH and ``required`` need TLS."""
        if self._refused("listen_tls_cert", "listen_tls_key"):
            return
        has_cert = settings.listen_tls_cert is not None
        needs = [
            ("listen_tls_key", settings.listen_tls_key is not None and not has_cert,
             "listen_tls_key is set without listen_tls_cert"),
            ("listen_tls_cert", has_cert and settings.listen_tls_key is None,
             "listen_tls_cert needs listen_tls_key (the certificate's private key)"),
            ("listen_tls", settings.listen_tls is not None and not has_cert,
             "listen_tls needs listen_tls_cert and listen_tls_key"),
            ("auth_users_file", settings.auth_users_file is not None and not has_cert,
             "auth_users_file needs listen_tls_cert and listen_tls_key: AUTH is offered "
             "only over TLS"),
        ]
        for key, wrong, message in needs:
            where = origins.get(key) or origins.get("listen_tls_cert")
            if wrong and where is not None:
                self.report(InconsistentSettingsError, message, where.line, where.value_column)

    def health(self, layer: Layer) -> HealthSettings:
        values, origins = _first_set([layer], schema.Section.HEALTH)
        health = HealthSettings(**values)
        timing_refused = self._refused("health_check_timeout", "health_check_interval")
        if health.timeout >= health.interval and not timing_refused:
            where = origins.get("health_check_timeout") or origins["health_check_interval"]
            assert where is not None  # a default never trips this check
            self.report(
                InconsistentSettingsError,
                f"health_check_timeout ({health.timeout}) must be below"
                f" health_check_interval ({health.interval})",
                where.line,
                where.value_column,
            )
        targets_refused = self._refused("health_check_target", "health_check_ipv6_target")
        no_target = health.target is None and health.ipv6_target is None
        if health.mode is HealthCheckMode.SMTP and no_target and not targets_refused:
            where = origins["health_check_mode"]
            assert where is not None  # a default never trips this check
            self.report(
                InconsistentSettingsError,
                "health_check_mode = smtp needs health_check_target (an SMTP server host:port"
                " to reach through the proxy) or health_check_ipv6_target",
                where.line,
                where.value_column,
            )
        both = health.target is not None and health.ipv6_target is not None
        if both and health.target is not None and health.target.ip_version == 6:
            where = origins["health_check_target"]
            assert where is not None
            self.report(
                InconsistentSettingsError,
                f"health_check_target {health.target} is IPv6, but health_check_ipv6_target"
                " is set: with both, health_check_target is the IPv4 sources' target",
                where.line,
                where.value_column,
            )
        if health.mode is HealthCheckMode.CONNECT:
            for key in ("health_check_target", "health_check_ipv6_target"):
                where = origins[key]
                if where is not None:
                    self.warnings.append(
                        ConfigWarning(
                            self.filename,
                            where.line,
                            f"{key} is ignored unless health_check_mode = smtp",
                        )
                    )
        return health

    def _refused(self, *keys: str) -> bool:
        """True when a value of one of ``keys`` was refused: a cross-check would only
        compare the default standing in for it, and report a problem nobody wrote."""
        return any(key in self.scopes.failed for key in keys)

    def check_probe_sources(self, health: HealthSettings, module: Layer) -> None:
        """Warn about a server the smtp check can prove no source of: no target of any
        of its sources' families, so only a TCP connect judges it."""
        if health.mode is not HealthCheckMode.SMTP:
            return
        set_at = [module.values[k][1] for k in ("health_check_target",
                  "health_check_ipv6_target") if k in module.values]  # fmt: skip
        if not set_at:
            return  # no target at all: already an error
        for server in self.proxy_servers():
            sources = self._sources.get(server, [])
            if not sources:
                continue  # the one-family warning already says no source is set
            families = sorted({ip_version(src) or 4 for src in sources})
            if not any(health.target_for(family) is not None for family in families):
                which = " and ".join(f"IPv{f}" for f in families)
                self.warnings.append(
                    ConfigWarning(
                        self.filename,
                        set_at[0].line,
                        f"health_check_mode = smtp has no target for the {which} sources"
                        f" used with {server}: a TCP connect is all that judges it"
                        f" (set {_TARGET_KEYS[families[-1]]} to prove them)",
                    )
                )

    # -- per binding ---------------------------------------------------------------------

    @property
    def sources(self) -> dict[ServerAddress, tuple[str, ...]]:
        return {server: tuple(srcs) for server, srcs in self._sources.items()}

    def resolve_binding(
        self,
        binding: BindingScope,
        groups: Mapping[str, BindingScope],
        global_layer: Layer,
        top_domains: Mapping[str, Layer],
        *,
        check: bool = True,
    ) -> Binding:
        group = groups.get(binding.group) if binding.group else None
        group_layer = group.layer if group else EMPTY
        group_domains = group.domains if group else {}
        base, origins = _resolve([binding.layer, group_layer, global_layer])
        if check:
            self.check_families(binding.name, None, base, origins, None)
        per_domain: dict[str, DeliverySettings] = {}
        for domain in dict.fromkeys([*binding.domains, *group_domains, *top_domains]):
            settings, domain_origins = _resolve(
                [
                    binding.domains.get(domain, EMPTY),
                    binding.layer,
                    group_domains.get(domain, EMPTY),
                    group_layer,
                    top_domains.get(domain, EMPTY),
                    global_layer,
                ]
            )
            per_domain[domain] = settings
            if check:
                self.check_families(binding.name, domain, settings, domain_origins, base)
        return Binding(binding.name, binding.group, base=base, domains=per_domain)

    def check_families(
        self,
        binding: str,
        domain: str | None,
        settings: DeliverySettings,
        origins: Mapping[str, Setting | None],
        base: DeliverySettings | None,
    ) -> None:
        """Record the sources used with each server; warn when a family is unreachable."""
        if not settings.uses_proxy:
            return
        for server in settings.proxy_servers:
            known = self._sources.setdefault(server, [])
            for src in (settings.src_ipv4, settings.src_ipv6):
                if src is not None and src not in known:
                    known.append(src)
        warning = family_warning(binding, domain, settings, origins, base)
        if warning is not None:
            line = warning.origin.line if warning.origin is not None else None
            self.warnings.append(ConfigWarning(self.filename, line, warning.message))
