"""Check a parsed tree against the schema (tests: tests/config/test_errors.py).

Every key is known, set once, allowed where it stands and converted; every block is of a
known kind, in a place it may be, and named as its kind requires. What comes out is one
:class:`Layer` per scope, the raw material the resolver ranks; nothing here knows how
scopes override each other.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import attrs

from hatwist.config import converters, schema
from hatwist.config.errors import (
    ConfigError,
    ConfigSyntaxError,
    DuplicateError,
    InvalidValueError,
    MisplacedKeyError,
    UnknownKeyError,
)
from hatwist.config.syntax import Scope, Setting
from hatwist.config.values import ServerAddress


@attrs.frozen
class Layer:
    """The keys one scope sets: key name -> (converted value, where it was set)."""

    values: Mapping[str, tuple[Any, Setting]] = attrs.Factory(dict)


EMPTY = Layer()


@attrs.frozen
class BindingScope:
    """A binding or binding_group block: its own keys and its domain blocks."""

    name: str
    line: int
    layer: Layer
    domains: Mapping[str, Layer]
    group: str | None = None


@attrs.frozen
class Tree:
    """A whole file, checked: the layers the resolver ranks, by scope."""

    top: Layer
    top_domains: Mapping[str, Layer]
    module: Layer
    """The ha_proxy_client block (:data:`EMPTY` when there is none)."""
    groups: Mapping[str, BindingScope]
    bindings: Mapping[str, BindingScope]
    """Every binding, ``default`` included even when the file never names it."""


class ScopeChecker:
    """Checks the scopes of one file, raising a ConfigError that names file, line and column.

    ``servers`` collects every ``ha_proxy_server`` entry with its position, so the loader
    can list the servers in file order although scopes are visited out of it.
    """

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.servers: list[tuple[int, int, ServerAddress]] = []

    def error(self, cls: type[ConfigError], message: str, line: int, column: int | None):
        return cls(message, self.filename, line, column)

    def check(self, root: Scope) -> Tree:
        """The whole file: each block checked, each binding and group defined once."""
        top = schema.scope_label(schema.GLOBAL, None)
        top_layer = self.layer(root, schema.GLOBAL, top)
        top_domains = self.domains(root, schema.GLOBAL, top)
        module: Layer | None = None
        module_line = 0
        groups: dict[str, BindingScope] = {}
        bindings: dict[str, BindingScope] = {}
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
                        self._add_binding(bindings, grandchild, bname, name)
            elif child.kind == schema.BINDING:
                assert name is not None
                self._add_binding(bindings, child, name, None)
        if schema.DEFAULT_BINDING not in bindings:
            bindings[schema.DEFAULT_BINDING] = BindingScope(schema.DEFAULT_BINDING, 0, EMPTY, {})
        return Tree(top_layer, top_domains, module or EMPTY, groups, bindings)

    def _add_binding(
        self, bindings: dict[str, BindingScope], scope: Scope, name: str, group: str | None
    ) -> None:
        if name in bindings:
            raise self.error(
                DuplicateError,
                f"binding '{name}' is already defined on line {bindings[name].line}",
                scope.line,
                scope.column,
            )
        bindings[name] = self.binding_scope(scope, schema.BINDING, name, group)

    def layer(self, scope: Scope, kind: str, label: str) -> Layer:
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
        return Layer(values)

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

    def domains(self, scope: Scope, kind: str, label: str) -> dict[str, Layer]:
        result: dict[str, Layer] = {}
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

    def binding_scope(self, scope: Scope, kind: str, name: str, group: str | None) -> BindingScope:
        label = schema.scope_label(kind, name)
        layer = self.layer(scope, kind, label)
        return BindingScope(name, scope.line, layer, self.domains(scope, kind, label), group)
