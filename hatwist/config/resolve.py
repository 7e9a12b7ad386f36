"""Resolve a parsed tree into a Config (tests: tests/config/test_settings.py).

A value for a (binding, domain) pair comes from the first of these scopes that sets it::

    domain-in-binding > binding > domain-in-binding_group > binding_group
        > top-level domain > top level > built-in default

Everything is resolved once, at load time, so every problem is found before hatwist
starts and lookups afterwards are dictionary reads.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import attrs

from hatwist.config import converters, schema
from hatwist.config._families import family_warning
from hatwist.config.errors import (
    ConfigError,
    ConfigFileError,
    ConfigSyntaxError,
    ConfigWarning,
    DuplicateError,
    InconsistentSettingsError,
    InvalidValueError,
    MisplacedKeyError,
    UnknownKeyError,
)
from hatwist.config.settings import Binding, BindingMap, Config
from hatwist.config.syntax import Scope, Setting, parse
from hatwist.config.values import (
    DeliverySettings,
    HealthCheckMode,
    HealthSettings,
    ServerAddress,
    ServiceSettings,
    ip_version,
)


def parse_config(text: str, filename: str = "<string>") -> Config:
    """Parse and validate config text; raises ConfigError (a subclass naming the problem)."""
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


@attrs.frozen
class _Layer:
    """The keys one scope sets: key name -> (converted value, where it was set)."""

    values: Mapping[str, tuple[Any, Setting]] = attrs.Factory(dict)


_EMPTY = _Layer()


@attrs.frozen
class _BindingScope:
    """A binding or binding_group block: its own keys and its domain blocks."""

    name: str
    line: int
    layer: _Layer
    domains: Mapping[str, _Layer]
    group: str | None = None


def _first_set(
    layers: list[_Layer], section: schema.Section
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


def _resolve(layers: list[_Layer]) -> tuple[DeliverySettings, dict[str, Setting | None]]:
    values, origins = _first_set(layers, schema.Section.DELIVERY)
    return DeliverySettings(**values), origins


class _Loader:
    """One load: checks the tree against the schema and resolves every binding."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.warnings: list[ConfigWarning] = []
        self.servers: list[tuple[int, int, ServerAddress]] = []
        self._sources: dict[ServerAddress, list[str]] = {}

    def error(self, cls: type[ConfigError], message: str, line: int, column: int | None):
        return cls(message, self.filename, line, column)

    # -- checking the tree against the schema --------------------------------------------

    def layer(self, scope: Scope, kind: str, label: str) -> _Layer:
        values: dict[str, tuple[Any, Setting]] = {}
        for setting in scope.settings:
            key = schema.KEYS_BY_NAME.get(setting.key)
            if key is None:
                if setting.key in schema.SCOPES:
                    raise self.error(
                        MisplacedKeyError,
                        f"'{setting.key}' is a scope, not a key:"
                        f" write {setting.key} NAME {{ ... }}",
                        setting.line,
                        setting.column,
                    )
                raise self.error(
                    UnknownKeyError,
                    f"unknown key '{setting.key}'"
                    + schema.suggest(setting.key, list(schema.KEYS_BY_NAME)),
                    setting.line,
                    setting.column,
                )
            if kind not in key.scopes:
                raise self.error(
                    MisplacedKeyError,
                    f"'{key.name}' is not allowed in {label}; {schema.where_allowed(key)}",
                    setting.line,
                    setting.column,
                )
            if key.name in values:
                first = values[key.name][1]
                raise self.error(
                    DuplicateError,
                    f"'{key.name}' is set twice in {label} (first on line {first.line})",
                    setting.line,
                    setting.column,
                )
            try:
                value = key.convert(setting.value)
            except ValueError as e:
                raise self.error(
                    InvalidValueError, f"{key.name}: {e}", setting.line, setting.value_column
                ) from None
            values[key.name] = (value, setting)
            if key.name == "ha_proxy_server":
                self.servers.extend((setting.line, setting.column, s) for s in value)
        return _Layer(values)

    def children(self, scope: Scope, kind: str, label: str) -> Iterator[tuple[Scope, str | None]]:
        """Check each child scope's kind, place and name; yield (scope, normalized name)."""
        for child in scope.scopes:
            rule = schema.SCOPES.get(child.kind)
            if rule is None:
                if child.kind in schema.KEYS_BY_NAME:
                    raise self.error(
                        MisplacedKeyError,
                        f"'{child.kind}' is a key, not a scope: write {child.kind} = value",
                        child.line,
                        child.column,
                    )
                raise self.error(
                    UnknownKeyError,
                    f"unknown scope '{child.kind}'"
                    + schema.suggest(child.kind, list(schema.SCOPES)),
                    child.line,
                    child.column,
                )
            if kind not in rule.parents:
                raise self.error(
                    MisplacedKeyError,
                    f"a {child.kind} block is not allowed in {label}",
                    child.line,
                    child.column,
                )
            yield child, self.scope_name(child, rule)

    def scope_name(self, scope: Scope, rule: schema.ScopeRule) -> str | None:
        if scope.name is None:
            if rule.name is schema.NameRule.REQUIRED:
                raise self.error(
                    ConfigSyntaxError,
                    f"a {scope.kind} block needs a name: {scope.kind} NAME {{ ... }}",
                    scope.line,
                    scope.column,
                )
            return schema.DEFAULT_BINDING if rule.kind == schema.BINDING else None
        if rule.name is schema.NameRule.FORBIDDEN:
            raise self.error(
                ConfigSyntaxError,
                f"the {scope.kind} block takes no name: {scope.kind} {{ ... }}",
                scope.line,
                scope.column,
            )
        convert = converters.domain if rule.kind == schema.DOMAIN else converters.binding_name
        try:
            return convert(scope.name)
        except ValueError as e:
            raise self.error(
                InvalidValueError, f"{scope.kind} name: {e}", scope.line, scope.column
            ) from None

    def domains(self, scope: Scope, kind: str, label: str) -> dict[str, _Layer]:
        result: dict[str, _Layer] = {}
        lines: dict[str, int] = {}
        for child, name in self.children(scope, kind, label):
            if child.kind != schema.DOMAIN:
                continue
            assert name is not None
            if name in result:
                raise self.error(
                    DuplicateError,
                    f"domain '{name}' appears twice in {label} (first on line {lines[name]})",
                    child.line,
                    child.column,
                )
            lines[name] = child.line
            result[name] = self.layer(child, schema.DOMAIN, schema.scope_label(schema.DOMAIN, name))
        return result

    def binding_scope(self, scope: Scope, kind: str, name: str, group: str | None) -> _BindingScope:
        label = schema.scope_label(kind, name)
        layer = self.layer(scope, kind, label)
        return _BindingScope(name, scope.line, layer, self.domains(scope, kind, label), group)

    # -- the whole file --------------------------------------------------------------------

    def load(self, root: Scope) -> Config:
        top = schema.scope_label(schema.GLOBAL, None)
        global_layer = self.layer(root, schema.GLOBAL, top)
        top_domains = self.domains(root, schema.GLOBAL, top)
        module: _Layer | None = None
        module_line = 0
        groups: dict[str, _BindingScope] = {}
        bindings: dict[str, _BindingScope] = {}
        for child, name in self.children(root, schema.GLOBAL, top):
            if child.kind == schema.MODULE:
                if module is not None:
                    raise self.error(
                        DuplicateError,
                        f"a second {schema.MODULE} block (the first is on line {module_line})",
                        child.line,
                        child.column,
                    )
                module_line = child.line
                module = self.layer(child, schema.MODULE, schema.scope_label(schema.MODULE, None))
                for _ in self.children(child, schema.MODULE, f"the {schema.MODULE} block"):
                    pass  # nothing nests in the module block; children() says so
            elif child.kind == schema.GROUP:
                assert name is not None
                if name in groups:
                    raise self.error(
                        DuplicateError,
                        f"binding_group '{name}' is already defined on line {groups[name].line}",
                        child.line,
                        child.column,
                    )
                groups[name] = self.binding_scope(child, schema.GROUP, name, None)
                group_label = schema.scope_label(schema.GROUP, name)
                for grandchild, bname in self.children(child, schema.GROUP, group_label):
                    if grandchild.kind == schema.BINDING:
                        assert bname is not None
                        self.add_binding(bindings, grandchild, bname, name)
            elif child.kind == schema.BINDING:
                assert name is not None
                self.add_binding(bindings, child, name, None)
        if schema.DEFAULT_BINDING not in bindings:
            bindings[schema.DEFAULT_BINDING] = _BindingScope(schema.DEFAULT_BINDING, 0, _EMPTY, {})
        service = self.service(global_layer)
        health = self.health(module or _EMPTY)
        resolved = BindingMap(
            {
                name: self.resolve_binding(binding, groups, global_layer, top_domains)
                for name, binding in bindings.items()
            }
        )
        self.check_probe_sources(health, (module or _EMPTY).values.get("health_check_target"))
        return Config(
            filename=self.filename,
            service=service,
            health=health,
            bindings=resolved,
            warnings=tuple(self.warnings),
            sources=self.sources,
            proxy_servers=self.proxy_servers(),
        )

    def proxy_servers(self) -> tuple[ServerAddress, ...]:
        """Every distinct server in file order (scopes are visited out of file order)."""
        in_order = sorted(self.servers, key=lambda entry: (entry[0], entry[1]))
        return tuple(dict.fromkeys(server for _, _, server in in_order))

    def add_binding(
        self, bindings: dict[str, _BindingScope], scope: Scope, name: str, group: str | None
    ) -> None:
        if name in bindings:
            raise self.error(
                DuplicateError,
                f"binding '{name}' is already defined on line {bindings[name].line}",
                scope.line,
                scope.column,
            )
        bindings[name] = self.binding_scope(scope, schema.BINDING, name, group)

    def service(self, layer: _Layer) -> ServiceSettings:
        values, origins = _first_set([layer], schema.Section.SERVICE)
        settings = ServiceSettings(**values)
        if settings.listen == settings.status_listen and settings.listen.port != 0:
            where = origins.get("status_listen") or origins.get("listen")
            assert where is not None
            raise self.error(
                InconsistentSettingsError,
                f"listen and status_listen are both {settings.listen}",
                where.line,
                where.value_column,
            )
        return settings

    def health(self, layer: _Layer) -> HealthSettings:
        values, origins = _first_set([layer], schema.Section.HEALTH)
        health = HealthSettings(**values)
        if health.timeout >= health.interval:
            where = origins.get("health_check_timeout") or origins["health_check_interval"]
            assert where is not None  # a default never trips this check
            raise self.error(
                InconsistentSettingsError,
                f"health_check_timeout ({health.timeout}) must be below"
                f" health_check_interval ({health.interval})",
                where.line,
                where.value_column,
            )
        if health.mode is HealthCheckMode.SMTP and health.target is None:
            where = origins["health_check_mode"]
            assert where is not None  # a default never trips this check
            raise self.error(
                InconsistentSettingsError,
                "health_check_mode = smtp needs health_check_target (an SMTP server host:port"
                " to reach through the proxy)",
                where.line,
                where.value_column,
            )
        if health.mode is HealthCheckMode.CONNECT and health.target is not None:
            where = origins["health_check_target"]
            assert where is not None  # a default never trips this check
            self.warnings.append(
                ConfigWarning(
                    self.filename,
                    where.line,
                    "health_check_target is ignored unless health_check_mode = smtp",
                )
            )
        return health

    def check_probe_sources(
        self, health: HealthSettings, target: tuple[Any, Setting] | None
    ) -> None:
        """Warn about a server the smtp check can never prove (no source of its family)."""
        family = health.target.ip_version if health.target is not None else None
        if health.mode is not HealthCheckMode.SMTP or family is None or target is None:
            return  # a host-name target is resolved per source: every source is proved
        for server in self.proxy_servers():
            sources = self._sources.get(server, [])
            if not sources:
                continue  # the one-family warning already says no source is set
            if not any(ip_version(src) == family for src in sources):
                self.warnings.append(
                    ConfigWarning(
                        self.filename,
                        target[1].line,
                        f"health_check_mode = smtp proves only IPv{family} sources with"
                        f" health_check_target {health.target}, and no binding sends through"
                        f" {server} from one: its every check will fail and leave it"
                        " unplumbed",
                    )
                )

    # -- per binding ---------------------------------------------------------------------

    @property
    def sources(self) -> dict[ServerAddress, tuple[str, ...]]:
        return {server: tuple(srcs) for server, srcs in self._sources.items()}

    def resolve_binding(
        self,
        binding: _BindingScope,
        groups: Mapping[str, _BindingScope],
        global_layer: _Layer,
        top_domains: Mapping[str, _Layer],
    ) -> Binding:
        group = groups.get(binding.group) if binding.group else None
        group_layer = group.layer if group else _EMPTY
        group_domains = group.domains if group else {}
        base, origins = _resolve([binding.layer, group_layer, global_layer])
        self.check_families(binding.name, None, base, origins, None)
        per_domain: dict[str, DeliverySettings] = {}
        for domain in dict.fromkeys([*binding.domains, *group_domains, *top_domains]):
            settings, domain_origins = _resolve(
                [
                    binding.domains.get(domain, _EMPTY),
                    binding.layer,
                    group_domains.get(domain, _EMPTY),
                    group_layer,
                    top_domains.get(domain, _EMPTY),
                    global_layer,
                ]
            )
            per_domain[domain] = settings
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
