"""``hatwist check-config``: exit status, error text, warnings, tables and JSON."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from hatwist.cli import main

DATA = pathlib.Path(__file__).parent / "config" / "data"
ROOT = pathlib.Path(__file__).parents[1]

CONFIG = """\
ha_proxy_server = 10.0.0.1:8085
binding_group pool {
  ha_proxy_src_addr = 192.0.2.10
  binding b1 {
    Domain example.com {
      ha_proxy_bypass = true
    }
  }
}
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "hatwist.conf"
    path.write_text(CONFIG)
    return str(path)


def test_valid_config_exits_0_and_prints_tables(config_file, capsys):
    assert main(["check-config", config_file]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{config_file}: valid\n")
    lines = out.splitlines()
    b1 = lines.index("binding b1 (binding_group pool)")
    header = lines[b1 + 1].split()
    assert header == ["key", "(other", "domains)", "example.com"]
    bypass = next(line for line in lines[b1:] if line.split()[0] == "ha_proxy_bypass")
    assert bypass.split() == ["ha_proxy_bypass", "false", "true"]
    # Aligned: every row of the binding's table starts its value columns at one offset.
    column = lines[b1 + 1].index("(other")
    assert lines[b1 + 2][column - 2 : column] == "  " and lines[b1 + 2][column] != " "
    assert "binding default" in lines
    assert "  10.0.0.1:8085  192.0.2.10" in lines
    # b1 has an IPv4 source only; the default binding has no source at all.
    assert err.count("warning: ") == 2
    assert f"warning: {config_file}:3: binding 'b1' sends through the proxy" in err
    assert "destinations of the other family (IPv6) cannot be reached" in err
    assert f"warning: {config_file}:1: binding 'default'" in err


def test_an_unset_key_reads_as_what_happens_instead_in_every_table(config_file, capsys):
    assert main(["check-config", config_file]) == 0
    lines = capsys.readouterr().out.splitlines()
    resolver = next(line for line in lines if line.split()[:1] == ["resolver"])
    assert resolver.split(maxsplit=1) == ["resolver", "(the system's resolver)"]
    ehlo = next(line for line in lines if line.split()[:1] == ["ehlo_hostname"])
    assert "(this host's FQDN)" in ehlo


def test_invalid_config_exits_2_with_exactly_the_error_text(capsys):
    path = str(DATA / "seed-as-printed.conf")
    assert main(["check-config", path]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"{path}:1:1: scope 'binding' opened on line 1 is never closed (missing '}}');"
        " probably the '}' of 'domain example.com' (line 5) is the one missing:"
        " the '}' on line 7 that closes it is indented like an outer scope\n"
    )


def test_missing_file_exits_2(tmp_path, capsys):
    assert main(["check-config", str(tmp_path / "absent.conf")]) == 2
    assert "cannot read the config file" in capsys.readouterr().err


def test_json_output(config_file, capsys):
    assert main(["check-config", "--json", config_file]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["valid"] is True
    assert document["file"] == config_file
    assert document["service"]["listen"] == "127.0.0.1:2525"
    assert document["service"]["relay_from"] == ["127.0.0.0/8", "::1/128"]
    assert document["health"]["health_check_interval"] == 5
    assert document["proxy_servers"] == [{"server": "10.0.0.1:8085", "sources": ["192.0.2.10"]}]
    b1 = document["bindings"]["b1"]
    assert b1["group"] == "pool"
    assert b1["settings"]["ha_proxy_bypass"] is False
    assert b1["settings"]["tls"] == "ifavailable"
    assert b1["domains"]["example.com"]["ha_proxy_bypass"] is True
    assert b1["settings"]["ehlo_hostname"] is None
    assert [w["line"] for w in document["warnings"]] == [3, 1]


def test_seed_example_through_the_real_command():
    """Once through a separate Python process, as an operator would run it."""
    result = subprocess.run(
        [sys.executable, "-m", "hatwist.cli", "check-config", str(DATA / "seed-fixed.conf")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "binding default" in result.stdout
    assert "490c:d8fe:9906:6b57:3f5f:4d00:5b26:aae5" in result.stdout


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "check-config" in capsys.readouterr().out


THREE_MISTAKES = """\
retry_interval = soon
binding b1 {
  tls = maybe
  Domain example.com {
    binding b2 {
    }
  }
}
"""


def test_every_problem_is_listed_in_one_run(tmp_path, capsys):
    path = tmp_path / "three.conf"
    path.write_text(THREE_MISTAKES)
    assert main(["check-config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines[0] == f"{path}:1:18: retry_interval: expected a whole number, not 'soon'"
    assert lines[1].startswith(f"{path}:3:9: tls: expected one of")
    assert lines[2].startswith(
        f"{path}:5:5: a binding block is not allowed in domain 'example.com'"
    )
    assert lines[3:] == [f"{path}: 3 problems"]


def test_json_lists_every_problem_and_exits_2(tmp_path, capsys):
    path = tmp_path / "three.conf"
    path.write_text(THREE_MISTAKES)
    assert main(["check-config", "--json", str(path)]) == 2
    out, _err = capsys.readouterr()
    document = json.loads(out)
    assert document["valid"] is False and document["file"] == str(path)
    assert [(e["line"], e["column"], e["kind"]) for e in document["errors"]] == [
        (1, 18, "invalid"),
        (3, 9, "invalid"),
        (5, 5, "misplaced"),
    ]
    assert all(e["file"] == str(path) and e["message"] for e in document["errors"])


def test_json_for_a_syntax_error_lists_that_one(capsys):
    path = str(DATA / "seed-as-printed.conf")
    assert main(["check-config", "--json", path]) == 2
    [error] = json.loads(capsys.readouterr().out)["errors"]
    assert (error["line"], error["column"], error["kind"]) == (1, 1, "syntax")


def test_binding_groups_are_shown_with_each_bindings_weight(tmp_path, capsys):
    path = tmp_path / "groups.conf"
    path.write_text('ha_proxy_server = "10.0.0.1:8085"\nbinding_group pool {\n'
                    '  binding blue {\n    ha_proxy_src_addr = "192.0.2.10"\n'
                    '    binding_weight = 3\n  }\n'
                    '  binding green {\n    ha_proxy_src_addr = "192.0.2.11"\n  }\n}\n')
    assert main(["check-config", str(path)]) == 0
    text = capsys.readouterr().out
    assert "  pool   blue (3), green (1)\n" in text
    assert "binding_group pool  any client allowed to relay" in text
    assert main(["check-config", "--json", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["groups"] == {"pool": {"blue": 3, "green": 1}}
