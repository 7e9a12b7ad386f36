"""The "other family cannot be reached" warning (tests: tests/config/test_settings.py).

The seed allows a binding to send through the proxy with only one of its two source
addresses; mail to an MX of the other family then has no route. The config loads, but
``hatwist check-config`` says so, once per binding and once per domain override that
changes the picture.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from hatwist.config.syntax import Setting
from hatwist.config.values import DeliverySettings


@attrs.frozen
class FamilyWarning:
    """What to warn about, and the setting whose line the warning points at."""

    message: str
    origin: Setting | None


def _shape(settings: DeliverySettings) -> tuple[bool, bool, bool]:
    return (settings.uses_proxy, settings.src_ipv4 is None, settings.src_ipv6 is None)


def family_warning(
    binding: str,
    domain: str | None,
    settings: DeliverySettings,
    origins: Mapping[str, Setting | None],
    base: DeliverySettings | None,
) -> FamilyWarning | None:
    """
    The warning for ``settings`` (of ``binding``, or of its ``domain`` override), if any.

    ``base`` is the binding's own settings when ``settings`` is a domain override: an
    override with the same shape as its binding adds nothing to the binding's warning.
    ``origins`` maps each key to the setting it came from (None for a default).
    """
    if not settings.uses_proxy:
        return None
    if base is not None and _shape(base) == _shape(settings):
        return None
    who = f"binding '{binding}'" + (f", domain '{domain}'," if domain else "")
    if settings.src_ipv4 is None and settings.src_ipv6 is None:
        return FamilyWarning(
            f"{who} sends through the proxy but sets neither ha_proxy_src_addr nor"
            " ha_proxy_ipv6_src_addr: no destination can be reached through the proxy",
            origins["ha_proxy_server"],
        )
    if settings.src_ipv6 is None:
        return FamilyWarning(
            f"{who} sends through the proxy with ha_proxy_src_addr but no"
            " ha_proxy_ipv6_src_addr: destinations of the other family (IPv6)"
            " cannot be reached through the proxy",
            origins["ha_proxy_src_addr"],
        )
    if settings.src_ipv4 is None:
        return FamilyWarning(
            f"{who} sends through the proxy with ha_proxy_ipv6_src_addr but no"
            " ha_proxy_src_addr: destinations of the other family (IPv4)"
            " cannot be reached through the proxy",
            origins["ha_proxy_ipv6_src_addr"],
        )
    return None
