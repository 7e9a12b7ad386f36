"""docs/config-reference.rst is generated from the schema and must not drift."""

from __future__ import annotations

import pathlib
import re

from hatwist.config import parse_config, schema
from hatwist.config._reference import render

REFERENCE = pathlib.Path(__file__).parents[2] / "docs" / "config-reference.rst"


def test_committed_reference_matches_the_generator():
    assert REFERENCE.read_text(encoding="utf-8") == render(), (
        "docs/config-reference.rst is stale: run "
        "python3 -m hatwist.config._reference > docs/config-reference.rst"
    )


def test_reference_documents_every_key_and_scope():
    text = render()
    for name in [*schema.KEYS_BY_NAME, *schema.SCOPES]:
        assert f"``{name}``" in text


def test_reference_example_is_a_valid_config():
    example = re.search(r"::\n\n((?:    .*\n|\n)+)", render()).group(1)
    config = parse_config("\n".join(line[4:] for line in example.splitlines()))
    assert config.binding("b1").group == "pool"


def test_readme_key_tables_match_the_generator():
    from hatwist.config._reference import render_readme

    readme = (REFERENCE.parents[1] / "README.rst").read_text(encoding="utf-8")
    assert readme == render_readme(readme), (
        "README.rst config key tables are stale: "
        "run python3 -m hatwist.config._reference --readme"
    )
