"""Tests for the inbound listener's config keys (hatwist.config.schema rows, wired by
hatwist.tap into hatwist.inbound): their defaults, their checks, and a reload."""

from __future__ import annotations

import pytest
from twisted.internet import task

from hatwist.config import ConfigError, parse_config
from hatwist.tap import RelayService

LIMITS = """
max_inbound_connections_per_ip = 3
max_inbound_connections_unlisted = 2
inbound_idle_timeout = 60
inbound_junk_command_limit = 7
hostname = Relay.Example.NET.
postmaster_address = Hostmaster@Example.NET
"""


def test_the_inbound_keys_default_to_bounds_a_hostile_peer_cannot_raise():
    service = parse_config("").service
    assert (service.max_inbound_connections, service.max_inbound_connections_per_ip,
            service.max_inbound_connections_unlisted, service.inbound_idle_timeout,
            service.inbound_junk_command_limit) == (100, 10, 5, 300, 100)
    assert (service.hostname, service.postmaster_address) == (None, None)


def test_the_inbound_keys_are_read_and_names_lower_cased():
    service = parse_config(LIMITS).service
    assert (service.max_inbound_connections_per_ip, service.max_inbound_connections_unlisted,
            service.inbound_idle_timeout, service.inbound_junk_command_limit) == (3, 2, 60, 7)
    assert service.hostname == "relay.example.net"
    assert service.postmaster_address == "Hostmaster@example.net"


@pytest.mark.parametrize("line, message", [
    ("postmaster_address = postmaster", "is not an address"),
    ("postmaster_address = a b@example.net", "is not an address"),
    ("hostname = not_a/host", "is not a valid host name"),
    ("inbound_junk_command_limit = 0", "must be at least 1"),
    ("max_inbound_connections_unlisted = 0", "must be at least 1"),
])
def test_bad_inbound_values_are_refused_naming_the_key(line, message):
    with pytest.raises(ConfigError, match=message) as raised:
        parse_config(line + "\n")
    assert line.split()[0] in str(raised.value)


def test_the_relay_uses_hostname_and_a_reload_applies_the_new_limits(tmp_path):
    spool = f'spool_dir = "{tmp_path}/spool"\n'
    relay = RelayService(parse_config(spool + LIMITS), reactor=task.Clock())
    inbound = relay.inbound
    assert relay.hostname == inbound.hostname == "relay.example.net"
    assert (inbound.max_sessions_per_ip, inbound.max_sessions_unlisted, inbound.idle_timeout,
            inbound.junk_command_limit, inbound.postmaster_address) == (
        3, 2, 60, 7, "Hostmaster@example.net")
    assert relay._apply(parse_config(spool + "max_inbound_connections_unlisted = 1\n"))
    assert (inbound.max_sessions_per_ip, inbound.max_sessions_unlisted, inbound.idle_timeout,
            inbound.junk_command_limit) == (10, 1, 300, 100)
    assert inbound.postmaster_address == "postmaster@relay.example.net"  # the running name
