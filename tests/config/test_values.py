"""hatwist.config.values: the frozen values other modules consume."""

from __future__ import annotations

import attrs
import pytest

from hatwist.config import ServerAddress, parse_config


def test_server_address_text_and_identity():
    configured = ServerAddress("2001:db8::1", 8085, "[2001:DB8::1]:8085")
    assert str(configured) == "[2001:DB8::1]:8085"
    assert str(ServerAddress("2001:db8::1", 8085)) == "[2001:db8::1]:8085"
    assert str(ServerAddress("10.0.0.1", 8085)) == "10.0.0.1:8085"
    assert configured == ServerAddress("2001:db8::1", 8085)
    assert {configured: 1}[ServerAddress("2001:db8::1", 8085)] == 1
    assert configured.ip_version == 6
    assert ServerAddress("10.0.0.1", 1).ip_version == 4
    assert ServerAddress("proxy.example", 1).ip_version is None


def test_values_are_frozen():
    settings = parse_config("").binding("default").base_settings
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        settings.bypass = True  # type: ignore[misc]


def test_uses_proxy_and_source_for():
    base = parse_config("").binding("default").base_settings
    proxied = attrs.evolve(base, proxy_servers=(ServerAddress("10.0.0.1", 1),), src_ipv4="9.9.9.9")
    assert not base.uses_proxy
    assert proxied.uses_proxy
    assert not attrs.evolve(proxied, bypass=True).uses_proxy
    assert proxied.source_for(4) == "9.9.9.9" and proxied.source_for(6) is None
