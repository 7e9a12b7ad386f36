"""hatwist._text_table: the aligned tables of ``hatwist check-config`` and ``hatwist status``."""

import pytest

from hatwist._text_table import text_table


def test_columns_are_as_wide_as_their_widest_cell_without_trailing_blanks():
    lines = text_table(["key", "value"], [["listen", "127.0.0.1:2525"], ["tls", "no"]])
    assert lines == [
        "  key     value",
        "  listen  127.0.0.1:2525",
        "  tls     no",
    ]


def test_header_only_and_custom_indent():
    assert text_table(["a", "bb"], [], indent="") == ["a  bb"]


def test_a_rule_under_the_header_spans_each_column():
    lines = text_table(["a", "long"], [["wide cell", "x"]], indent="", rule=True)
    assert lines == ["a          long", "---------  ----", "wide cell  x"]


def test_a_row_of_the_wrong_width_is_refused():
    with pytest.raises(ValueError):
        text_table(["a", "b"], [["only one"]])
