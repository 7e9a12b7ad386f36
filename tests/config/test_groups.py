"""binding_group as a choice (issue 14 item 4): what the config says of groups: their
bindings in file order, their own settings for their queues, and binding_weight."""

from __future__ import annotations

import pytest

from hatwist.config import ConfigError, group_route, parse_config, route_group

TEXT = """
retry_interval = 60
ha_proxy_server = 127.0.0.1:8085
binding_group pool {
  retry_interval = 300
  domain slow.test {
    retry_interval = 900
  }
  binding green {
    ha_proxy_src_addr = 127.0.0.11
  }
  binding blue {
    ha_proxy_src_addr = 127.0.0.10
    binding_weight = 3
    retry_interval = 30
  }
}
binding_group scope_only {
}
binding lone {
  ha_proxy_src_addr = 127.0.0.12
}
"""


def test_a_group_lists_its_bindings_in_file_order_and_has_its_own_settings():
    config = parse_config(TEXT)
    assert list(config.groups) == ["pool"]  # a group without bindings takes no mail
    pool = config.group("POOL")
    assert pool.members == ("green", "blue")
    route = group_route("Pool")
    assert (route, route_group(route), route_group("blue")) == ("group:pool", "pool", None)
    own = config.route(route)
    assert own.settings_for("x.test").retry_interval == 300  # the group's, not blue's 30
    assert own.settings_for("slow.test").retry_interval == 900
    assert config.route("blue").base_settings.binding_weight == 3
    assert config.binding("green").base_settings.binding_weight == 1


def test_an_unknown_or_empty_group_is_a_key_error_naming_it():
    config = parse_config(TEXT)
    for name in ("nope", "scope_only"):
        with pytest.raises(KeyError, match=name):
            config.route(group_route(name))


def test_a_group_whose_every_binding_has_weight_0_is_an_error_at_its_line():
    text = TEXT.replace("    binding_weight = 3\n", "    binding_weight = 0\n").replace(
        "    ha_proxy_src_addr = 127.0.0.11\n",
        "    ha_proxy_src_addr = 127.0.0.11\n    binding_weight = 0\n")
    with pytest.raises(ConfigError, match=r"<string>:4: binding_group pool: every binding "
                                          r"has binding_weight = 0"):
        parse_config(text)


@pytest.mark.parametrize("where, value, problem", [
    ("top", "2", "only allowed in binding and binding_group scopes"),
    ("binding", "1001", "at most 1000"),
    ("binding", "-1", "whole number"),
])
def test_binding_weight_is_checked_where_it_is_written(where, value, problem):
    line = f"binding_weight = {value}\n"
    text = line + TEXT if where == "top" else TEXT.replace(
        "binding lone {\n", "binding lone {\n  " + line)
    with pytest.raises(ConfigError, match=problem):
        parse_config(text)
