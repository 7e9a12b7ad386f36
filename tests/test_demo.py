"""Tests for ``hatwist demo`` (hatwist._cli_demo, hatwist.lab.demo).

The end-to-end test runs the command as a newcomer would, in a child process (``python3 -m
hatwist.cli demo``) with real HAProxy, DNS and sink, and reads only what it prints: the
source address the sink saw for each binding and for the bypassed domain, and that the
HAProxy it started is gone afterwards. The rest pins the parts a run on this machine
cannot reach: the install hint, the root check, and the self-check that fails a run.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import signal
import sys
from pathlib import Path

import pytest
import pytest_twisted

from hatwist import _cli_demo
from hatwist.lab.demo import (
    BYPASS_BIND,
    DEFAULT_SOURCE,
    MESSAGES,
    WARMUP_SOURCE,
    build_rows,
    format_table,
    sample_config,
)
from tests.rig.needs import require_haproxy
from tests.rig.netns import run_process

ROOT = Path(__file__).resolve().parents[1]
#: The demo takes about a second; this only stops a wedged one from hanging the suite.
DEMO_DEADLINE = 60.0

_ROW = re.compile(
    r"^(?P<label>\d+)\s+(?P<binding>\S+)\s+(?P<recipient>\S+@\S+)\s+"
    r"(?P<route>proxy \S+ from \S+|direct|-)\s+(?P<seen>\S+)\s+(?P<result>.+)$",
    re.MULTILINE,
)
_PID = re.compile(r"^HAProxy \S+ \(pid (\d+);", re.MULTILINE)


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_demo_shows_each_bindings_source_and_the_bypass_then_stops_haproxy(reactor):
    require_haproxy()
    if os.geteuid() != 0:
        pytest.skip("hatwist demo needs root (HAProxy usesrc clientip)")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = await run_process(
        reactor, [sys.executable, "-m", "hatwist.cli", "demo"], DEMO_DEADLINE,
        cwd=str(ROOT), env=env,
    )
    out, err = result.out.decode(), result.err.decode()
    pids = [int(p) for p in _PID.findall(out)]
    leftover = [pid for pid in pids if _alive(pid)]
    for pid in leftover:  # never leave one behind, even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert result.code == 0, f"exit {result.code}\n{out}\n{err}"
    assert len(pids) == 1, out
    assert leftover == [], "the demo's HAProxy still runs after the demo exited"

    rows = {m["recipient"]: m for m in _ROW.finditer(out)}
    assert set(rows) == {m.recipient for m in MESSAGES}, out
    by_binding = {}
    for row in rows.values():
        domain = row["recipient"].partition("@")[2]
        key = "bypass" if domain == "bypass.test" else row["binding"]
        by_binding.setdefault(key, set()).add((row["route"].split(" from ")[-1], row["seen"]))
        assert row["result"].startswith("delivered"), row.group(0)
    assert by_binding == {
        "default": {(DEFAULT_SOURCE, DEFAULT_SOURCE)},
        "warmup": {(WARMUP_SOURCE, WARMUP_SOURCE)},
        "bypass": {("direct", BYPASS_BIND)},
    }, out
    # The newcomer sees what produced the result.
    assert "binding warmup {" in out and "ha_proxy_bypass = true" in out


def _run(**kwargs) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    args = argparse.Namespace(show_config=True, hold=0.0, verbose=False)
    code = _cli_demo.run(args, out, err)
    return code, out.getvalue(), err.getvalue()


def test_without_haproxy_the_demo_prints_the_exact_install_command(monkeypatch):
    monkeypatch.setattr(_cli_demo, "find_haproxy", lambda: None)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    code, out, err = _run()
    assert (code, out) == (2, "apt-get install -y haproxy\n")
    assert "haproxy" in err


def test_without_haproxy_and_not_root_the_install_command_has_sudo():
    problem = _cli_demo.preflight(None, euid=1000)
    assert problem is not None and problem.command == "sudo apt-get install -y haproxy"


def test_not_root_is_refused_naming_usesrc_and_how_to_rerun(monkeypatch):
    monkeypatch.setattr(_cli_demo, "find_haproxy", lambda: "/usr/sbin/haproxy")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    code, out, err = _run()
    assert code == 2
    assert "root" in err and "usesrc clientip" in err
    assert out.startswith("sudo ") and out.rstrip().endswith(" demo")


def test_rerun_command_keeps_the_installed_script_path():
    assert _cli_demo.rerun_command("/x/.venv/bin/hatwist", "/x/.venv/bin/python") == (
        "sudo /x/.venv/bin/hatwist demo"
    )
    assert _cli_demo.rerun_command("/x/hatwist/cli.py", "/usr/bin/python3") == (
        "sudo /usr/bin/python3 -m hatwist.cli demo"
    )


def test_preflight_passes_as_root_with_haproxy():
    assert _cli_demo.preflight("/usr/sbin/haproxy", euid=0) is None


def _event(recipient: str, route: str, code: int = 250, error: str | None = None) -> dict:
    return {"route": route, "codes": {recipient: code}, "error": error}


def test_a_message_from_the_wrong_source_fails_the_demo():
    default, warmup, *_ = MESSAGES
    attempts = {
        default.recipient: _event(default.recipient, "proxy p from 127.0.0.9"),
        warmup.recipient: _event(warmup.recipient, "proxy p from 127.0.0.9"),
    }
    arrived = {default.recipient: DEFAULT_SOURCE, warmup.recipient: DEFAULT_SOURCE}
    ok, wrong = build_rows([default, warmup], attempts, arrived)
    assert ok.ok and not wrong.ok
    assert wrong.result == f"WRONG SOURCE (expected {WARMUP_SOURCE})"


def test_a_message_that_never_arrived_shows_the_attempts_error():
    message = MESSAGES[0]
    attempts = {message.recipient: _event(message.recipient, "-", 451, "no MX took it")}
    (row,) = build_rows([message], attempts, {})
    assert (row.ok, row.seen_source, row.result) == (False, None, "NOT DELIVERED: no MX took it")
    assert "NOT DELIVERED: no MX took it" in format_table([row])


def test_the_sample_config_loads_with_two_ipv4_bindings_through_one_proxy():
    from hatwist.config import parse_config

    config = parse_config(
        sample_config(proxy="127.0.0.1:1", resolver=("127.0.0.1", 2), smtp_port=3,
                      spool_dir="/nonexistent")
    )
    (server,) = config.proxy_servers
    assert config.sources_for(server) == (DEFAULT_SOURCE, WARMUP_SOURCE)
    # IPv4 sources only: the demo's MXs have no IPv6 address, which is all it warns about.
    assert [w.message.split(":")[-1].strip() for w in config.warnings] == [
        "destinations of the other family (IPv6) cannot be reached through the proxy"
    ] * 2
