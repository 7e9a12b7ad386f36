"""hatwist.config.resolve: the seed example, inheritance order, warnings, the Config API."""

from __future__ import annotations

import ipaddress
import pathlib
import textwrap

import pytest

from hatwist.config import (
    ConfigError,
    HealthCheckMode,
    ServerAddress,
    TLSMode,
    load_config,
    parse_config,
)
from hatwist.config.errors import ConfigSyntaxError, InvalidValueError
from hatwist.config.values import Throttle

DATA = pathlib.Path(__file__).parent / "data"


def load(text: str):
    return parse_config(textwrap.dedent(text), "test.conf")


# -- the seed's example -------------------------------------------------------------------


def test_seed_example_as_printed_fails_naming_the_unclosed_binding():
    path = str(DATA / "seed-as-printed.conf")
    with pytest.raises(ConfigSyntaxError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}:1:1: scope 'binding' opened on line 1 is never closed (missing '}}');"
        " probably the '}' of 'domain example.com' (line 5) is the one missing:"
        " the '}' on line 7 that closes it is indented like an outer scope"
    )


def test_seed_example_with_the_brace_added_means_what_the_seed_says():
    config = load_config(str(DATA / "seed-fixed.conf"))
    proxy = ServerAddress("10.0.0.1", 8085)
    assert config.proxy_servers == (proxy,)
    assert str(config.proxy_servers[0]) == "10.0.0.1:8085"
    binding = config.binding("default")
    assert binding.domain_overrides() == ("example.com",)
    elsewhere = binding.settings_for("other.example")
    assert elsewhere.uses_proxy
    assert elsewhere.proxy_servers == (proxy,)
    assert elsewhere.src_ipv4 == "9.9.9.9"
    assert elsewhere.src_ipv6 == "490c:d8fe:9906:6b57:3f5f:4d00:5b26:aae5"
    bypassed = binding.settings_for("example.com")
    assert bypassed.bypass and not bypassed.uses_proxy
    assert config.sources_for(proxy) == ("9.9.9.9", "490c:d8fe:9906:6b57:3f5f:4d00:5b26:aae5")
    assert (config.health.failure_threshold, config.health.interval) == (3, 5)
    assert (config.health.timeout, config.health.success_threshold) == (1, 3)
    assert config.warnings == ()


# -- defaults -----------------------------------------------------------------------------


def test_empty_config_is_all_defaults_with_a_default_binding():
    config = parse_config("")
    assert list(config.bindings) == ["default"]
    settings = config.binding("default").settings_for("example.com")
    assert settings.proxy_servers == () and not settings.uses_proxy
    assert (settings.remote_smtp_port, settings.tls, settings.retry_interval) == (
        25,
        TLSMode.IFAVAILABLE,
        900,
    )
    assert (settings.message_expiration, settings.max_connections) == (432000, 10)
    assert (settings.max_messages_per_connection, settings.connect_timeout) == (50, 30)
    assert settings.smtp_timeout == 300
    assert settings.ehlo_hostname is settings.bind_address is None
    service = config.service
    assert str(service.listen) == "127.0.0.1:2525"
    assert str(service.status_listen) == "127.0.0.1:8025"
    assert service.spool_dir == "/var/spool/hatwist"
    assert service.resolver is None
    assert service.relay_from == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert (service.max_message_size, service.shutdown_grace) == (26214400, 30)
    assert config.health.mode is HealthCheckMode.CONNECT and config.health.target is None
    assert config.proxy_servers == ()


def test_health_checks_without_an_ha_proxy_client_block_use_the_seeds_values():
    # Issue 4 and README: interval 5, timeout 1, thresholds 3 and 3 when the block is absent.
    config = load(
        """
        ha_proxy_server = 10.0.0.1:8085
        ha_proxy_src_addr = 192.0.2.10
        """
    )
    health = config.health
    assert (health.interval, health.timeout) == (5, 1)
    assert (health.failure_threshold, health.success_threshold) == (3, 3)
    assert health.mode is HealthCheckMode.CONNECT and health.target is None


def test_an_empty_ha_proxy_client_block_also_uses_the_seeds_values():
    health = load("ha_proxy_client {\n}\n").health
    assert (health.interval, health.timeout, health.failure_threshold) == (5, 1, 3)
    assert health.success_threshold == 3


# -- inheritance: one test per layer ------------------------------------------------------

# Every scope sets max_connections to its own number; each test removes the layers above
# the one it pins, so a wrong order shows up as the wrong number.
_LAYERS = {
    "domain_in_binding": 1,
    "binding": 2,
    "domain_in_group": 3,
    "group": 4,
    "top_domain": 5,
    "global": 6,
}


def _layered(*present: str) -> str:
    def line(layer: str) -> str:
        return f"max_connections = {_LAYERS[layer]}" if layer in present else ""

    return f"""
        {line("global")}
        domain example.com {{
          {line("top_domain")}
        }}
        binding_group g {{
          {line("group")}
          domain example.com {{
            {line("domain_in_group")}
          }}
          binding b {{
            {line("binding")}
            domain example.com {{
              {line("domain_in_binding")}
            }}
          }}
        }}
        """


@pytest.mark.parametrize("winner", list(_LAYERS))
def test_inheritance_order(winner):
    below = list(_LAYERS)[list(_LAYERS).index(winner) :]
    settings = load(_layered(*below)).binding("b").settings_for("example.com")
    assert settings.max_connections == _LAYERS[winner]


def test_inheritance_falls_back_to_the_default():
    settings = load(_layered()).binding("b").settings_for("example.com")
    assert settings.max_connections == 10


def test_binding_value_beats_a_top_level_domain_value():
    config = load("""
        domain example.com {
          tls = no
        }
        binding b {
          tls = required
        }
        """)
    assert config.binding("b").settings_for("example.com").tls is TLSMode.REQUIRED
    assert config.binding("default").settings_for("example.com").tls is TLSMode.NO


def test_domain_override_only_changes_its_own_keys():
    config = load("""
        ha_proxy_server = 10.0.0.1:8085
        ha_proxy_src_addr = 192.0.2.1
        ha_proxy_ipv6_src_addr = 2001:db8::1
        binding b {
          remote_smtp_port = 2525
          domain example.com {
            ha_proxy_bypass = yes
          }
        }
        """)
    binding = config.binding("b")
    special = binding.settings_for("example.com")
    assert special.bypass and special.remote_smtp_port == 2525
    assert special.src_ipv4 == "192.0.2.1"
    assert binding.settings_for("example.org") == binding.base_settings
    assert not binding.base_settings.bypass


def test_group_is_recorded_and_domain_overrides_collect_every_layer():
    config = load("""
        domain top.example {
        }
        binding_group g {
          domain group.example {
          }
          binding b {
            domain own.example {
            }
          }
        }
        binding solo {
        }
        """)
    b = config.binding("b")
    assert b.group == "g" and config.binding("solo").group is None
    assert set(b.domain_overrides()) == {"own.example", "group.example", "top.example"}
    assert config.binding("solo").domain_overrides() == ("top.example",)


def test_empty_server_list_turns_off_an_inherited_proxy():
    config = load("""
        ha_proxy_server = 10.0.0.1:8085
        ha_proxy_src_addr = 192.0.2.1
        ha_proxy_ipv6_src_addr = 2001:db8::1
        binding direct {
          ha_proxy_server = ""
        }
        """)
    assert not config.binding("direct").base_settings.uses_proxy
    assert config.binding("default").base_settings.uses_proxy


# -- case-insensitivity -------------------------------------------------------------------


def test_keys_scopes_bindings_and_domains_are_case_insensitive():
    config = load("""
        BINDING_Group G1 {
          Binding Pool-A {
            Domain Example.COM {
              HA_Proxy_Bypass = TRUE
              TLS = Required
            }
          }
        }
        """)
    binding = config.binding("POOL-a")
    assert binding is config.bindings["pool-A"]
    assert binding.name == "pool-a" and binding.group == "g1"
    assert binding.domain_overrides() == ("example.com",)
    for spelling in ("example.com", "EXAMPLE.COM", "Example.Com."):
        assert binding.settings_for(spelling).bypass
    assert binding.settings_for("example.com").tls is TLSMode.REQUIRED


def test_unknown_binding_is_a_key_error_naming_it():
    with pytest.raises(KeyError, match="nope"):
        parse_config("").binding("nope")


# -- proxy servers and sources ------------------------------------------------------------


def test_proxy_servers_are_distinct_and_in_config_order():
    config = load("""
        ha_proxy_server = "10.0.0.2:5000, [2001:db8::5]:5000"
        binding a {
          ha_proxy_server = 10.0.0.1:5000 10.0.0.2:5000
          ha_proxy_src_addr = 192.0.2.1
          ha_proxy_ipv6_src_addr = 2001:db8::1
        }
        binding b {
          ha_proxy_server = proxy.example:5000
          ha_proxy_src_addr = 192.0.2.2
          ha_proxy_ipv6_src_addr = 2001:db8::2
        }
        """)
    assert [str(s) for s in config.proxy_servers] == [
        "10.0.0.2:5000",
        "[2001:db8::5]:5000",
        "10.0.0.1:5000",
        "proxy.example:5000",
    ]
    assert config.sources_for(ServerAddress("10.0.0.2", 5000)) == ("192.0.2.1", "2001:db8::1")
    assert config.sources_for(ServerAddress("proxy.example", 5000)) == (
        "192.0.2.2",
        "2001:db8::2",
    )
    # Only the default binding uses the top-level servers, and it has no sources.
    assert config.sources_for(ServerAddress("2001:db8::5", 5000)) == ()


def test_bypassed_domains_do_not_contribute_sources():
    config = load("""
        binding b {
          ha_proxy_server = 10.0.0.1:5000
          ha_proxy_bypass = true
          ha_proxy_src_addr = 192.0.2.1
          ha_proxy_ipv6_src_addr = 2001:db8::1
        }
        """)
    assert config.sources_for(ServerAddress("10.0.0.1", 5000)) == ()


# -- warnings -----------------------------------------------------------------------------


def test_one_source_family_warns_about_the_other():
    config = load("""
        binding b {
          ha_proxy_server = 10.0.0.1:8085
          ha_proxy_src_addr = 9.9.9.9
        }
        """)
    (warning,) = config.warnings
    assert warning.line == 4
    assert "binding 'b'" in warning.message
    assert "destinations of the other family (IPv6) cannot be reached through the proxy" in (
        warning.message
    )


def test_only_ipv6_source_warns_about_ipv4():
    config = load("""
        binding b {
          ha_proxy_server = 10.0.0.1:8085
          ha_proxy_ipv6_src_addr = 2001:db8::1
        }
        """)
    (warning,) = config.warnings
    assert "(IPv4) cannot be reached" in warning.message


def test_domain_override_warns_only_when_it_changes_the_families():
    config = load("""
        binding b {
          ha_proxy_server = 10.0.0.1:8085
          ha_proxy_src_addr = 9.9.9.9
          ha_proxy_ipv6_src_addr = 2001:db8::1
          domain bypassed.example {
            ha_proxy_bypass = true
          }
          domain v4only.example {
            ha_proxy_src_addr = 9.9.9.10
          }
        }
        domain v6gone.example {
          ha_proxy_ipv6_src_addr = 2001:db8::2
        }
        """)
    assert config.warnings == ()


def test_proxy_without_any_source_warns():
    config = load("ha_proxy_server = 10.0.0.1:8085\n")
    (warning,) = config.warnings
    assert warning.line == 1 and "no destination can be reached" in warning.message


def test_health_target_without_smtp_mode_warns():
    config = load("""
        ha_proxy_client {
          health_check_target = 127.0.0.1:25
        }
        """)
    (warning,) = config.warnings
    assert warning.line == 3 and "ignored" in warning.message


def test_smtp_check_with_no_source_of_the_targets_family_for_a_server_warns():
    # The smtp check proves only sources of the target's family; a server used only from
    # IPv6 sources has nothing to prove with an IPv4 target: a TCP connect judges it.
    config = load("""
        ha_proxy_client {
          health_check_mode = smtp
          health_check_target = 127.0.0.1:25
        }
        binding v4 {
          ha_proxy_server = 10.0.0.1:8085
          ha_proxy_src_addr = 192.0.2.1
          ha_proxy_ipv6_src_addr = 2001:db8::1
        }
        binding v6 {
          ha_proxy_server = 10.0.0.2:8085
          ha_proxy_ipv6_src_addr = 2001:db8::2
        }
        """)
    (warning,) = [w for w in config.warnings if "health_check_mode" in w.message]
    assert warning.line == 4
    assert warning.message == (
        "health_check_mode = smtp has no target for the IPv6 sources used with"
        " 10.0.0.2:8085: a TCP connect is all that judges it"
        " (set health_check_ipv6_target to prove them)"
    )


def test_smtp_check_with_a_host_name_target_proves_every_source_and_does_not_warn():
    config = load("""
        ha_proxy_client {
          health_check_mode = smtp
          health_check_target = sink.example:25
        }
        ha_proxy_server = 10.0.0.2:8085
        ha_proxy_ipv6_src_addr = 2001:db8::2
        ha_proxy_src_addr = 192.0.2.2
        """)
    assert config.warnings == ()


def test_smtp_health_mode_with_target():
    config = load("""
        ha_proxy_client {
          health_check_mode = SMTP
          health_check_target = "[::1]:2525"
        }
        """)
    assert config.health.mode is HealthCheckMode.SMTP
    assert config.health.target == ServerAddress("::1", 2525)


def test_load_config_reads_a_file(tmp_path):
    path = tmp_path / "hatwist.conf"
    path.write_text('spool_dir = "/tmp/spool dir"\nresolver = 127.0.0.1:5353\n')
    config = load_config(str(path))
    assert config.filename == str(path)
    assert config.service.spool_dir == "/tmp/spool dir"
    assert config.service.resolver == ServerAddress("127.0.0.1", 5353)


def test_config_error_is_the_only_error_type():
    with pytest.raises(ConfigError):
        parse_config("max_connections = 0\n")


def test_a_file_saved_with_a_byte_order_mark_loads(tmp_path):
    # Windows editors write UTF-8 with a BOM; it must not become part of the first key.
    path = tmp_path / "hatwist.conf"
    text = "\ufeffha_proxy_server = 10.0.0.1:8085\r\nha_proxy_src_addr = 192.0.2.1\r\n"
    path.write_bytes(text.encode())
    config = load_config(str(path))
    assert [str(s) for s in config.proxy_servers] == ["10.0.0.1:8085"]
    assert config.binding("default").base_settings.src_ipv4 == "192.0.2.1"


# -- outbound throttles -------------------------------------------------------------------


def test_outbound_throttle_is_unset_by_default_and_resolved_per_binding_and_domain():
    config = load("""
        outbound_throttle_messages = 1000/3600
        binding warmup {
          outbound_throttle_messages = "50/3600"
          domain gmail.com {
            outbound_throttle_messages = 20/3600
          }
          domain example.com {
            outbound_throttle_messages = ""
          }
        }
        binding fresh {
        }
        """)
    warmup = config.binding("warmup")
    assert warmup.settings_for("gmail.com").outbound_throttle_messages == Throttle(20, 3600)
    assert warmup.settings_for("other.example").outbound_throttle_messages == Throttle(50, 3600)
    assert warmup.settings_for("example.com").outbound_throttle_messages is None
    assert config.binding("fresh").base_settings.outbound_throttle_messages == Throttle(1000, 3600)
    assert load("").binding("default").base_settings.outbound_throttle_messages is None


def test_bad_outbound_throttle_names_the_key_and_the_expected_form():
    with pytest.raises(InvalidValueError) as info:
        load("binding b {\n  outbound_throttle_messages = 50 per hour\n}\n")
    assert info.value.line == 2
    assert info.value.message.startswith(
        "outbound_throttle_messages: expected messages/seconds (e.g. 50/3600"
    )


# -- one smtp-check target per family (issue 12) ------------------------------------------


def test_an_ipv6_target_of_its_own_and_an_ipv4_one():
    config = load("""
        ha_proxy_client {
          health_check_mode = smtp
          health_check_target = sink.example:25
          health_check_ipv6_target = "[fd00::20]:2525"
        }
        """)
    health = config.health
    assert health.target_for(4) == ServerAddress("sink.example", 25)
    assert health.target_for(6) == ServerAddress("fd00::20", 2525)
    assert config.warnings == ()


def test_an_ipv6_target_alone_is_enough_for_smtp_mode():
    health = load("""
        ha_proxy_client {
          health_check_mode = smtp
          health_check_ipv6_target = v6.sink.example:25
        }
        """).health
    assert (health.target_for(4), health.target_for(6)) == (
        None,
        ServerAddress("v6.sink.example", 25),
    )


def test_one_target_proves_its_own_family_or_both_when_it_is_a_name():
    def targets(text):
        health = load(f"ha_proxy_client {{\n  health_check_mode = smtp\n{text}}}\n").health
        return health.target_for(4), health.target_for(6)

    v4 = ServerAddress("127.0.0.20", 25)
    assert targets("  health_check_target = 127.0.0.20:25\n") == (v4, None)
    v6 = ServerAddress("::1", 25)
    assert targets('  health_check_target = "[::1]:25"\n') == (None, v6)
    name = ServerAddress("sink.example", 25)
    assert targets("  health_check_target = sink.example:25\n") == (name, name)


def test_an_ipv4_literal_is_no_ipv6_target():
    with pytest.raises(InvalidValueError, match="is an IPv4 address; expected"):
        load("ha_proxy_client {\n  health_check_ipv6_target = 127.0.0.1:25\n}\n")


def test_an_ipv6_health_check_target_next_to_an_ipv6_one_is_an_error():
    from hatwist.config.errors import InconsistentSettingsError

    with pytest.raises(InconsistentSettingsError, match="is IPv6, but health_check_ipv6_target"):
        load("""
            ha_proxy_client {
              health_check_mode = smtp
              health_check_target = "[::1]:25"
              health_check_ipv6_target = "[::2]:25"
            }
            """)


def test_the_ipv6_target_is_ignored_in_connect_mode_and_says_so():
    config = load("ha_proxy_client {\n  health_check_ipv6_target = \"[::1]:25\"\n}\n")
    (warning,) = config.warnings
    assert warning.line == 2
    assert warning.message == "health_check_ipv6_target is ignored unless health_check_mode = smtp"
