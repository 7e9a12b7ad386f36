"""A loaded configuration: bindings and their settings per domain (tests: tests/config/).

Frozen values only: :mod:`hatwist.config.resolve` builds them from a parsed file, and the
rest of hatwist reads them. Every (binding, domain) pair is resolved at load time, so a
lookup here is a dictionary read.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import attrs

from hatwist.config.errors import ConfigWarning
from hatwist.config.values import DeliverySettings, HealthSettings, ServerAddress, ServiceSettings


def normalize_domain(domain: str) -> str:
    """Domains compare case-insensitively and without a trailing dot."""
    return domain.rstrip(".").lower()


@attrs.frozen
class Binding:
    """A named source of outbound mail, with its settings for every destination domain."""

    name: str
    group: str | None
    _base: DeliverySettings = attrs.field(alias="base")
    _domains: Mapping[str, DeliverySettings] = attrs.field(alias="domains", factory=dict)

    @property
    def base_settings(self) -> DeliverySettings:
        """The settings for every domain without an override of its own."""
        return self._base

    def settings_for(self, domain: str) -> DeliverySettings:
        """The effective settings for mail from this binding to ``domain``."""
        return self._domains.get(normalize_domain(domain), self._base)

    def domain_overrides(self) -> tuple[str, ...]:
        """Domains that have settings of their own in this binding (lower case)."""
        return tuple(self._domains)


#: What a queue of mail sent to a binding_group is named by, in place of a binding:
#: ``group:NAME``.  A colon is in no binding name, so the two never collide.
GROUP_ROUTE_PREFIX = "group:"


def group_route(group: str) -> str:
    """The route name of mail sent to ``group`` (``X-Binding-Group``)."""
    return GROUP_ROUTE_PREFIX + group.lower()


def route_group(route: str) -> str | None:
    """The binding_group a route name stands for, or None for a binding's name."""
    return route[len(GROUP_ROUTE_PREFIX):] if route.startswith(GROUP_ROUTE_PREFIX) else None


@attrs.frozen
class Group:
    """
    A binding_group that mail can be sent to (``X-Binding-Group``): its bindings, and
    the group's own settings (its scope over the top level's), which rule the group's
    queues -- retries, expiry, warnings -- while each attempt runs on the binding chosen
    for it, under that binding's settings and limits.
    """

    name: str
    members: tuple[str, ...]
    """Its bindings, in file order."""
    own: Binding
    """The group's settings per domain (a Binding named by its route name)."""


class BindingMap(Mapping[str, Binding]):
    """Bindings by name, looked up case-insensitively; read-only."""

    def __init__(self, bindings: Mapping[str, Binding]) -> None:
        self._bindings = {name.lower(): b for name, b in bindings.items()}

    def __getitem__(self, name: str) -> Binding:
        return self._bindings[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._bindings)

    def __len__(self) -> int:
        return len(self._bindings)

    def __repr__(self) -> str:
        return f"BindingMap({self._bindings!r})"


@attrs.frozen
class Config:
    """A loaded, validated configuration."""

    filename: str
    service: ServiceSettings
    health: HealthSettings
    bindings: Mapping[str, Binding]
    warnings: tuple[ConfigWarning, ...] = ()
    _sources: Mapping[ServerAddress, tuple[str, ...]] = attrs.field(alias="sources", factory=dict)
    _proxy_servers: tuple[ServerAddress, ...] = attrs.field(alias="proxy_servers", default=())
    groups: Mapping[str, Group] = attrs.field(factory=dict)
    """The binding_groups that have bindings, by (lower-case) name."""

    def binding(self, name: str) -> Binding:
        """The binding called ``name`` (case-insensitive); KeyError naming it if unknown."""
        try:
            return self.bindings[name]
        except KeyError:
            raise KeyError(f"no binding named {name!r} in {self.filename}") from None

    def group(self, name: str) -> Group:
        """The binding_group called ``name``; KeyError naming it if unknown or empty."""
        try:
            return self.groups[name.lower()]
        except KeyError:
            raise KeyError(f"no binding_group named {name!r} with bindings in "
                           f"{self.filename}") from None

    def route(self, name: str) -> Binding:
        """The settings a queue named ``name`` runs by: the binding's, or for
        ``group:NAME`` (:func:`group_route`) the group's own; KeyError if unknown."""
        group = route_group(name)
        return self.binding(name) if group is None else self.group(group).own

    @property
    def proxy_servers(self) -> tuple[ServerAddress, ...]:
        """Every distinct configured proxy server, in config order."""
        return self._proxy_servers

    def sources_for(self, server: ServerAddress) -> tuple[str, ...]:
        """The PROXY source addresses some binding uses with ``server``."""
        return self._sources.get(server, ())
