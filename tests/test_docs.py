"""The documents a newcomer reads render cleanly and say what CI really runs."""

from __future__ import annotations

import io
import pathlib

import docutils.core
import pytest

ROOT = pathlib.Path(__file__).parents[1]
DOCUMENTS = ["README.rst", "HACKING.rst", "docs/config-reference.rst"]


@pytest.mark.parametrize("name", DOCUMENTS)
def test_document_renders_without_warnings(name):
    warnings = io.StringIO()
    docutils.core.publish_string(
        (ROOT / name).read_text(encoding="utf-8"),
        writer="null",
        settings_overrides={"report_level": 2, "warning_stream": warnings},
    )
    assert warnings.getvalue() == ""


def _literal_blocks(text: str) -> list[str]:
    """The indented lines after each ``::`` paragraph."""
    blocks, current, inside = [], [], False
    for line in text.splitlines():
        if line.rstrip().endswith("::"):
            inside, current = True, []
            continue
        if inside and (line.startswith("    ") or not line.strip()):
            if line.strip():
                current.append(line.strip())
            continue
        if inside:
            blocks.append("\n".join(current))
            inside = False
    return blocks


def test_ci_runs_exactly_the_test_command_the_readme_shows():
    readme = (ROOT / "README.rst").read_text(encoding="utf-8")
    section = readme.split("Run the tests::", 1)[1]
    test_command = _literal_blocks("Run the tests::" + section)[0]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()
    assert ci[-1] == test_command


def test_ci_installs_what_the_readme_tells_a_newcomer_to_install():
    """The README's install block (a virtual environment: Debian 12's python3 refuses a
    plain pip install) is what CI runs, line for line."""
    readme = (ROOT / "README.rst").read_text(encoding="utf-8")
    install = _literal_blocks(readme.split("Install into a virtual environment", 1)[1])[0]
    assert install.splitlines() == [
        "python3 -m venv .venv", ".venv/bin/python -m pip install '.[test]'"]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "python3 -m venv .venv\n" in ci
    assert ".venv/bin/python -m pip install --quiet --disable-pip-version-check '.[test]'" in ci
