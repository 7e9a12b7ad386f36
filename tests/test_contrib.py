"""The shipped Prometheus rules pass promtool (contrib/prometheus/alerts.yml).

``promtool check rules`` proves they parse; ``promtool test rules`` runs
``alerts_test.yml``, which feeds each alert the series that must fire it and the series
that must not. Skipped where promtool is missing, except in CI (Debian package prometheus),
where it fails. That every metric they name exists is checked against a running relay in
tests/service/test_contrib.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CONTRIB = Path(__file__).resolve().parents[1] / "contrib"
RULES = CONTRIB / "prometheus" / "alerts.yml"
RULE_TESTS = CONTRIB / "prometheus" / "alerts_test.yml"
DASHBOARD = CONTRIB / "grafana" / "hatwist.json"

_EXPR = re.compile(r"^\s*expr:\s*(.+?)\s*$", re.MULTILINE)
_METRIC = re.compile(r"\bhatwist_[a-z0-9_]+")


def promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    message = "promtool is not installed (Debian package prometheus)"
    if os.environ.get("CI"):
        pytest.fail(message + " and CI is set: the shipped rules must be checked here")
    pytest.skip(message)


def rule_expressions() -> list[str]:
    return _EXPR.findall(RULES.read_text())


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def metric_names(expressions: list[str]) -> set[str]:
    return {name for expr in expressions for name in _METRIC.findall(expr)}


@pytest.mark.parametrize("command", ["check", "test"])
def test_promtool_accepts_the_rules_and_their_unit_tests(command):
    target = RULES if command == "check" else RULE_TESTS
    done = subprocess.run([promtool(), command, "rules", str(target)],
                          capture_output=True, text=True, timeout=60, cwd=target.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_is_unit_tested():
    alerts = set(re.findall(r"^\s*- alert:\s*(\S+)", RULES.read_text(), re.MULTILINE))
    tested = set(re.findall(r"alertname:\s*(\S+)", RULE_TESTS.read_text()))
    untested = alerts - tested - {"HatwistQueueBackoffLong", "HatwistProxySourceUnplumbed",
                                  "HatwistQueueWaitingForProxy"}
    assert not untested
    assert tested <= alerts


def test_the_dashboard_and_the_rules_name_hatwist_metrics():
    # A typo'd expression with no hatwist metric at all would pass the live check.
    assert all(_METRIC.search(e) or e.startswith("up{") for e in rule_expressions())
    assert all(_METRIC.search(e) for e in dashboard_expressions())
    assert len(dashboard_expressions()) >= 10
