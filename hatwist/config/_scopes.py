"""Check a parsed tree against the schema (tests: tests/config/test_errors.py).

Every key is known, set once, allowed where it stands and converted; every block is of a
known kind, in a place it may be, and named as its kind requires -- at every depth, so
nothing inside a block (a ``domain`` nested in a ``domain`` after a missing ``}``, a
``binding`` inside a domain) is silently dropped. What comes out is one :class:`Layer` per
scope, the raw material the resolver ranks; nothing here knows how scopes override each
other.

Problems are collected, not raised: the checker goes on past each one, so a file with
three mistakes gets three messages in one run. A bad key is left out of its layer; a
misplaced or badly named block still has its content checked, then is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from hatwist.config import converters, schema
from hatwist.config.errors import (
    ConfigError,
    ConfigSyntaxError,
    ConfigWarning,
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


@attrs.define
class _Domains:
    """The domain blocks of one scope, with the line each was first defined on."""

    owner: str = "a dropped block"  # the scope's label, for messages
    layers: dict[str, Layer] = attrs.Factory(dict)
    lines: dict[str, int] = attrs.Factory(dict)


@attrs.define
class _Found:
    """What the blocks checked so far define; a dropped block writes into a spare one."""

    module: tuple[Layer, int] | None = None
    groups: dict[str, BindingScope] = attrs.Factory(dict)
    bindings: dict[str, BindingScope] = attrs.Factory(dict)


class ScopeChecker:
    """Checks the scopes of one file, collecting ConfigErrors that name file, line, column.

    ``errors`` and ``warnings`` fill up as :meth:`check` runs. ``failed`` holds the keys
    whose value was refused anywhere, so later cross-checks can stay quiet rather than
    report a contradiction with a default that stands in for the refused value.
    ``servers`` collects every ``ha_proxy_server`` entry with its position, so the loader
    can list the servers in file order although scopes are visited out of it.
    """

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.errors: list[ConfigError] = []
        self.warnings: list[ConfigWarning] = []
        self.failed: set[str] = set()
        self.servers: list[tuple[int, int, ServerAddress]] = []

    def error(self, cls: type[ConfigError], message: str, line: int, column: int | None):
        return cls(message, self.filename, line, column)

    def report(self, cls: type[ConfigError], message: str, line: int, column: int | None):
        self.errors.append(self.error(cls, message, line, column))

    def check(self, root: Scope) -> Tree:
        """The whole file: each block checked, each binding and group defined once."""
        top = schema.scope_label(schema.GLOBAL, None)
        top_layer = self.layer(root, schema.GLOBAL, top)
        found = _Found()
        top_domains = _Domains(top)
        self.children(root, schema.GLOBAL, top, found, group=None, domains=top_domains)
        bindings = dict(found.bindings)
        if schema.DEFAULT_BINDING not in bindings:
            bindings[schema.DEFAULT_BINDING] = BindingScope(schema.DEFAULT_BINDING, 0, EMPTY, {})
        module = found.module[0] if found.module else EMPTY
        return Tree(top_layer, top_domains.layers, module, found.groups, bindings)

    # -- keys ------------------------------------------------------------------------------

    def layer(self, scope: Scope, kind: str, label: str) -> Layer:
        values: dict[str, tuple[Any, Setting]] = {}
        for setting in scope.settings:
            key = schema.KEYS_BY_NAME.get(setting.key)
            if key is None:
                if setting.key in schema.SCOPES:
                    self.report(
                        MisplacedKeyError,
                        f"'{setting.key}' is a scope, not a key:"
                        f" write {setting.key} NAME {{ ... }}",
                        setting.line,
                        setting.column,
                    )
                else:
                    self.report(
                        UnknownKeyError,
                        f"unknown key '{setting.key}'"
                        + schema.suggest(setting.key, list(schema.KEYS_BY_NAME)),
                        setting.line,
                        setting.column,
                    )
                continue
            if kind not in key.scopes:
                self.report(
                    MisplacedKeyError,
                    f"'{key.name}' is not allowed in {label}; {schema.where_allowed(key)}",
                    setting.line,
                    setting.column,
                )
                continue
            if key.name in values:
                first = values[key.name][1]
                self.report(
                    DuplicateError,
                    f"'{key.name}' is set twice in {label} (first on line {first.line})",
                    setting.line,
                    setting.column,
                )
                continue
            try:
                value = key.convert(setting.value)
            except ValueError as e:
                self.failed.add(key.name)
                self.report(
                    InvalidValueError, f"{key.name}: {e}", setting.line, setting.value_column
                )
                continue
            values[key.name] = (value, setting)
            if key.name == "ha_proxy_server":
                self.servers.extend((setting.line, setting.column, s) for s in value)
        return Layer(values)

    # -- blocks ----------------------------------------------------------------------------

    def children(
        self,
        scope: Scope,
        kind: str,
        label: str,
        found: _Found,
        *,
        group: str | None,
        domains: _Domains,
    ) -> None:
        """Check every block inside ``scope`` (of ``kind``) and file it in ``found``.

        ``group`` is the binding_group a binding found here belongs to; ``domains`` takes
        the domain blocks found here. A block that may not stand here, or whose name is
        bad, still has its content checked, into a spare :class:`_Found` that is dropped.
        """
        for child in scope.scopes:
            rule = self.rule(child)
            if rule is None:
                continue
            name, named = self.scope_name(child, rule)
            placed = kind in rule.parents
            if not placed:
                self.report(
                    MisplacedKeyError,
                    f"a {child.kind} block is not allowed in {label}"
                    + _brace_hint(scope, label, child),
                    child.line,
                    child.column,
                )
            if placed and named:
                self.block(child, rule.kind, name, found, group=group, domains=domains)
            else:
                self.block(child, rule.kind, name, _Found(), group=None, domains=_Domains())

    def rule(self, child: Scope) -> schema.ScopeRule | None:
        """The schema's rule for ``child``'s kind; None (reported) for an unknown kind."""
        rule = schema.SCOPES.get(child.kind)
        if rule is not None:
            return rule
        if child.kind in schema.KEYS_BY_NAME:
            self.report(
                MisplacedKeyError,
                f"'{child.kind}' is a key, not a scope: write {child.kind} = value",
                child.line,
                child.column,
            )
        else:
            self.report(
                UnknownKeyError,
                f"unknown scope '{child.kind}'" + schema.suggest(child.kind, list(schema.SCOPES)),
                child.line,
                child.column,
            )
        return None

    def block(
        self,
        scope: Scope,
        kind: str,
        name: str | None,
        found: _Found,
        *,
        group: str | None,
        domains: _Domains,
    ) -> None:
        """Check one block of a known ``kind`` with its content; file it in ``found``."""
        label = schema.scope_label(kind, name)
        layer = self.layer(scope, kind, label)
        if scope.misaligned_close:
            self.warnings.append(
                ConfigWarning(
                    self.filename,
                    scope.end_line,
                    f"the '}}' on line {scope.end_line} closes {label} (opened on line"
                    f" {scope.line}) but lines up with an outer scope: check that the keys"
                    f" above it belong to that {kind} (a '}}' may be missing)",
                )
            )
        own = _Domains(label)
        inner_group = name if kind == schema.GROUP else None
        self.children(scope, kind, label, found, group=inner_group, domains=own)
        if name is None and kind != schema.MODULE:
            return  # a block without its required name: checked, reported, not filed
        if kind == schema.MODULE:
            if found.module is not None:
                self.report(
                    DuplicateError,
                    f"a second {schema.MODULE} block (the first is on line {found.module[1]})",
                    scope.line,
                    scope.column,
                )
            else:
                found.module = (layer, scope.line)
        elif kind == schema.DOMAIN:
            if name in domains.layers:
                self.report(
                    DuplicateError,
                    f"domain '{name}' appears twice in {domains.owner}"
                    f" (first on line {domains.lines[name]})",
                    scope.line,
                    scope.column,
                )
            else:
                domains.layers[name] = layer
                domains.lines[name] = scope.line
        else:
            table = found.groups if kind == schema.GROUP else found.bindings
            if name in table:
                self.report(
                    DuplicateError,
                    f"{kind} '{name}' is already defined on line {table[name].line}",
                    scope.line,
                    scope.column,
                )
            else:
                table[name] = BindingScope(
                    name, scope.line, layer, own.layers, group if kind == schema.BINDING else None
                )

    def scope_name(self, scope: Scope, rule: schema.ScopeRule) -> tuple[str | None, bool]:
        """The block's normalized name, and False (reported) when the name is wrong."""
        if scope.name is None:
            if rule.name is schema.NameRule.REQUIRED:
                self.report(
                    ConfigSyntaxError,
                    f"a {scope.kind} block needs a name: {scope.kind} NAME {{ ... }}",
                    scope.line,
                    scope.column,
                )
                return None, False
            return (schema.DEFAULT_BINDING if rule.kind == schema.BINDING else None), True
        if rule.name is schema.NameRule.FORBIDDEN:
            self.report(
                ConfigSyntaxError,
                f"the {scope.kind} block takes no name: {scope.kind} {{ ... }}",
                scope.line,
                scope.column,
            )
            return None, False
        convert = converters.domain if rule.kind == schema.DOMAIN else converters.binding_name
        try:
            return convert(scope.name), True
        except ValueError as e:
            self.report(InvalidValueError, f"{scope.kind} name: {e}", scope.line, scope.column)
            return scope.name, False


def _brace_hint(parent: Scope, label: str, child: Scope) -> str:
    """Why a block may stand in the wrong place: the '}' of its parent is missing."""
    if parent.end_line is None:  # the top level: no brace of a parent to miss
        return ""
    hint = (
        f" (if {label}, opened on line {parent.line}, was meant to end before line"
        f" {child.line}, its '}}' is missing"
    )
    if parent.misaligned_close:
        hint += f": the '}}' on line {parent.end_line} that closes it lines up with an outer scope"
    return hint + ")"
