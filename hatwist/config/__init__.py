"""hatwist's configuration: one Momentum-style file, resolved into frozen values.

(tests: tests/config/)

``load_config(path)`` / ``parse_config(text)`` return a :class:`Config`; everything else
in this package is how it gets there.
"""

from hatwist.config.errors import ConfigError, ConfigErrors, ConfigWarning
from hatwist.config.resolve import load_config, parse_config
from hatwist.config.settings import Binding, Config, Group, group_route, route_group
from hatwist.config.values import (
    DeliverySettings,
    HealthCheckMode,
    HealthSettings,
    ServerAddress,
    ServiceSettings,
    Throttle,
    TLSMode,
)

__all__ = [
    "Binding",
    "Config",
    "ConfigError",
    "ConfigErrors",
    "ConfigWarning",
    "DeliverySettings",
    "Group",
    "HealthCheckMode",
    "HealthSettings",
    "ServerAddress",
    "ServiceSettings",
    "TLSMode",
    "Throttle",
    "group_route",
    "load_config",
    "parse_config",
    "route_group",
]
