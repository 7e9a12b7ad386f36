"""Every kind of config error names the file, the line and what is wrong."""

from __future__ import annotations

import textwrap

import pytest

from hatwist.config import ConfigError, ConfigWarning, load_config, parse_config
from hatwist.config.errors import (
    ConfigFileError,
    ConfigSyntaxError,
    DuplicateError,
    InconsistentSettingsError,
    InvalidValueError,
    MisplacedKeyError,
    UnknownKeyError,
)


def fails(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text).lstrip("\n"), "test.conf")
    return info.value


def test_str_is_file_line_column_message():
    assert str(ConfigError("bad", "f.conf", 3, 7)) == "f.conf:3:7: bad"
    assert str(ConfigError("bad", "f.conf", 3)) == "f.conf:3: bad"
    assert str(ConfigError("bad", "f.conf")) == "f.conf: bad"
    assert str(ConfigWarning("f.conf", 4, "hm")) == "f.conf:4: hm"


def test_unknown_key_suggests_the_near_miss():
    error = fails("""
        binding b {
          ha_proxy_sever = 10.0.0.1:8085
        }
        """)
    assert type(error) is UnknownKeyError
    assert str(error) == (
        "test.conf:2:3: unknown key 'ha_proxy_sever' (did you mean 'ha_proxy_server'?)"
    )


def test_unknown_key_without_a_near_miss_has_no_suggestion():
    error = fails("colour = blue\n")
    assert str(error) == "test.conf:1:1: unknown key 'colour'"


def test_unknown_scope_suggests_the_near_miss():
    error = fails("bindng b {\n}\n")
    assert type(error) is UnknownKeyError
    assert error.message == "unknown scope 'bindng' (did you mean 'binding'?)"
    assert error.line == 1


def test_key_in_a_scope_where_it_means_nothing():
    error = fails("""
        binding b {
          health_check_interval = 5
        }
        """)
    assert type(error) is MisplacedKeyError
    assert error.line == 2
    assert "'health_check_interval' is not allowed in binding 'b'" in error.message
    assert "ha_proxy_client" in error.message


def test_global_only_key_inside_a_domain():
    error = fails("domain example.com {\n  listen = 127.0.0.1:25\n}\n")
    assert type(error) is MisplacedKeyError
    assert error.message == (
        "'listen' is not allowed in domain 'example.com'; it is only allowed at the top level"
    )


def test_delivery_key_in_the_module_block():
    error = fails("ha_proxy_client {\n  tls = no\n}\n")
    assert type(error) is MisplacedKeyError and error.line == 2


def test_scope_in_a_scope_where_it_means_nothing():
    error = fails("binding a {\n  binding b {\n  }\n}\n")
    assert type(error) is MisplacedKeyError
    assert (error.line, error.message) == (
        2,
        "a binding block is not allowed in binding 'a' (if binding 'a', opened on line 1,"
        " was meant to end before line 2, its '}' is missing)",
    )


def test_scope_name_used_as_a_key_and_key_name_used_as_a_scope():
    assert "is a scope, not a key" in fails("binding = b1\n").message
    assert "is a key, not a scope" in fails("tls {\n}\n").message


def test_wrong_type_names_the_key_and_value_column():
    error = fails("tls = no\nretry_interval = 15m\n")
    assert type(error) is InvalidValueError
    assert str(error) == "test.conf:2:18: retry_interval: expected a whole number, not '15m'"


def test_address_of_the_wrong_family():
    error = fails('binding b {\n  ha_proxy_src_addr = "2001:db8::1"\n}\n')
    assert type(error) is InvalidValueError
    assert error.line == 2
    assert error.message == ("ha_proxy_src_addr: must be an IPv4 address; '2001:db8::1' is IPv6")
    error = fails("ha_proxy_ipv6_src_addr = 9.9.9.9\n")
    assert error.message == "ha_proxy_ipv6_src_addr: must be an IPv6 address; '9.9.9.9' is IPv4"


def test_unbalanced_braces():
    unclosed = fails("binding b {\n  domain x {\n  }\n")
    assert type(unclosed) is ConfigSyntaxError and unclosed.line == 1
    stray = fails("binding b {\n}\n}\n")
    assert type(stray) is ConfigSyntaxError and stray.line == 3


def test_duplicate_key_in_one_scope():
    error = fails("""
        binding b {
          tls = no
          TLS = required
        }
        """)
    assert type(error) is DuplicateError
    assert (error.line, error.message) == (3, "'tls' is set twice in binding 'b' (first on line 2)")


def test_same_key_in_different_scopes_is_fine():
    parse_config("tls = no\nbinding b {\n  tls = required\n}\n")


def test_duplicate_binding_names_also_across_groups():
    error = fails("""
        binding_group g1 {
          binding b {
          }
        }
        binding_group g2 {
          binding B {
          }
        }
        """)
    assert type(error) is DuplicateError
    assert (error.line, error.message) == (6, "binding 'b' is already defined on line 2")


def test_unnamed_binding_and_binding_default_are_the_same_binding():
    error = fails("binding {\n}\nbinding default {\n}\n")
    assert type(error) is DuplicateError and error.line == 3


def test_duplicate_binding_group_and_module_block():
    assert type(fails("binding_group g {\n}\nbinding_group G {\n}\n")) is DuplicateError
    error = fails("ha_proxy_client {\n}\nha_proxy_client {\n}\n")
    assert type(error) is DuplicateError and error.line == 3


def test_duplicate_domain_in_one_scope():
    error = fails("""
        binding b {
          domain example.com {
          }
          domain EXAMPLE.com. {
          }
        }
        """)
    assert type(error) is DuplicateError
    assert error.line == 4
    assert "domain 'example.com' appears twice in binding 'b'" in error.message


def test_health_timeout_must_be_below_interval():
    error = fails("ha_proxy_client {\n  health_check_interval = 2\n  health_check_timeout = 2\n}\n")
    assert type(error) is InconsistentSettingsError
    assert (error.line, error.message) == (
        3,
        "health_check_timeout (2) must be below health_check_interval (2)",
    )
    # Only the interval set, below the default timeout: the interval's line is named.
    error = fails("ha_proxy_client {\n  health_check_interval = 1\n}\n")
    assert error.line == 2


def test_smtp_health_mode_needs_a_target():
    error = fails("ha_proxy_client {\n  health_check_mode = smtp\n}\n")
    assert type(error) is InconsistentSettingsError
    assert error.line == 2 and "health_check_target" in error.message


def test_listen_and_status_listen_must_differ():
    error = fails("listen = 127.0.0.1:2600\nstatus_listen = 127.0.0.1:2600\n")
    assert type(error) is InconsistentSettingsError and error.line == 2


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("binding_group {\n}\n", "needs a name"),
        ("domain {\n}\n", "needs a name"),
        ("ha_proxy_client x {\n}\n", "takes no name"),
        ('binding "a b" {\n}\n', "binding name"),
        ("domain -x- {\n}\n", "domain name"),
    ],
)
def test_scope_names(text, words):
    assert words in fails(text).message


def test_missing_file_is_a_config_error(tmp_path):
    path = str(tmp_path / "nope.conf")
    with pytest.raises(ConfigFileError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: cannot read the config file")


def test_non_utf8_file_is_a_config_error(tmp_path):
    path = tmp_path / "latin1.conf"
    path.write_bytes(b"ehlo_hostname = caf\xe9\n")
    with pytest.raises(ConfigFileError, match="not UTF-8"):
        load_config(str(path))


# -- every scope's content is checked (issue 12) ------------------------------------------

SEED_BALANCED_LATER = """\
binding {
  ha_proxy_server = "10.0.0.1:8085"
  ha_proxy_src_addr = "9.9.9.9"
  Domain example.com {
    ha_proxy_bypass = "true"
  Domain example.net {
    tls = "required"
  }
}
}
"""


def test_a_domain_swallowed_by_the_seeds_missing_brace_is_an_error_naming_the_brace():
    """The seed's Domain without its '}', balanced by a later extra one: the next
    override nested inside example.com, where it used to be silently ignored."""
    error = fails(SEED_BALANCED_LATER)
    assert type(error) is MisplacedKeyError
    assert str(error) == (
        "test.conf:6:3: a domain block is not allowed in domain 'example.com'"
        " (if domain 'example.com', opened on line 4, was meant to end before line 6,"
        " its '}' is missing: the '}' on line 9 that closes it lines up with an outer scope)"
    )


def test_a_binding_nested_in_a_domain_is_an_error_not_a_binding_that_does_not_exist():
    error = fails("""
        domain example.com {
          binding b1 {
            ha_proxy_src_addr = 192.0.2.10
          }
        }
        """)
    assert type(error) is MisplacedKeyError
    assert str(error).startswith(
        "test.conf:2:3: a binding block is not allowed in domain 'example.com'"
    )


def test_an_unknown_scope_inside_a_domain_names_its_position():
    error = fails("binding b {\n  domain example.com {\n    bogus {\n    }\n  }\n}\n")
    assert type(error) is UnknownKeyError
    assert str(error) == "test.conf:3:5: unknown scope 'bogus'"


def test_invalid_values_inside_a_nested_domain_are_reported_too():
    error = fails("""
        binding b {
          domain a.example {
            domain b.example {
              tls = sometimes
              remote_smtp_port = 0
            }
          }
        }
        """)
    assert [(e.line, type(e)) for e in error.errors] == [
        (3, MisplacedKeyError),
        (4, InvalidValueError),
        (5, InvalidValueError),
    ]
    assert error.errors[1].message.startswith("tls: expected one of")
    assert error.errors[2].message == "remote_smtp_port: must be at least 1, not 0"


def test_every_mistake_of_a_file_is_listed_in_file_order():
    from hatwist.config.errors import ConfigErrors

    error = fails("""
        retry_interval = soon
        ha_proxy_client {
          health_check_intervall = 5
        }
        binding b1 {
          tls = maybe
          domain example.com {
            bind_address = not-an-ip
            listen = 127.0.0.1:25
          }
        }
        binding B1 {
        }
        """)
    assert type(error) is ConfigErrors
    assert [(e.line, e.kind) for e in error.errors] == [
        (1, "invalid"),
        (3, "unknown"),
        (6, "invalid"),
        (8, "invalid"),
        (9, "misplaced"),
        (12, "duplicate"),
    ]
    lines = str(error).splitlines()
    assert len(lines) == 6 and all(line.startswith("test.conf:") for line in lines)
    assert lines[0] == "test.conf:1:18: retry_interval: expected a whole number, not 'soon'"
    assert (error.line, error.column) == (1, 18)  # the first problem's position


def test_a_refused_value_does_not_also_report_a_contradiction_with_its_default():
    # The refused timeout would have been compared as the default 1 with interval 1.
    error = fails("ha_proxy_client {\n  health_check_interval = 1\n  health_check_timeout = x\n}\n")
    assert type(error) is InvalidValueError and error.line == 3


def test_cross_checks_are_listed_with_the_other_errors():
    error = fails("tls = maybe\nha_proxy_client {\n  health_check_mode = smtp\n}\n")
    assert [(e.line, e.kind) for e in error.errors] == [(1, "invalid"), (3, "inconsistent")]


def test_a_brace_that_lines_up_with_an_outer_scope_is_a_warning_when_the_file_balances():
    """Only keys swallowed: the file is valid, but the keys may be in the wrong scope."""
    config = parse_config(
        "binding b {\n  domain example.com {\n    tls = no\n  ehlo_hostname = r.test\n}\n}\n",
        "test.conf",
    )
    [warning] = [w for w in config.warnings if "lines up" in w.message]
    assert str(warning) == (
        "test.conf:5: the '}' on line 5 closes domain 'example.com' (opened on line 2) but"
        " lines up with an outer scope: check that the keys above it belong to that domain"
        " (a '}' may be missing)"
    )


def test_dotted_numeric_names_are_refused_where_the_file_names_a_host():
    """getaddrinfo reads 010.0.0.1 as 8.0.0.1 and 127.1 as 127.0.0.1 (issue 12)."""
    error = fails("""
        ha_proxy_server = 010.0.0.1:8085
        ha_proxy_client {
          health_check_mode = smtp
          health_check_target = 127.1:25
        }
        """)
    assert [(e.line, e.column, e.kind) for e in error.errors] == [
        (1, 19, "invalid"),
        (4, 25, "invalid"),
    ]
    assert error.errors[0].message.startswith(
        "ha_proxy_server: '010.0.0.1:8085': '010.0.0.1' is not a host name"
    )
    assert "last label is a number" in error.errors[1].message
