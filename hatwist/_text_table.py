"""Aligned plain-text tables for the ``hatwist`` sub-commands (tests: tests/test_text_table.py).

``hatwist check-config``, ``hatwist status`` and ``hatwist demo`` all print for a terminal;
one helper keeps their tables laid out alike (two spaces between columns, no trailing
blanks).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

#: Blanks between two columns.
GUTTER = "  "


def text_table(
    header: Sequence[str], rows: Iterable[Sequence[str]], indent: str = "  ", rule: bool = False
) -> list[str]:
    """``header`` and ``rows`` as lines, each column as wide as its widest cell; ``rule``
    adds a line of dashes under the header (``hatwist demo``'s table stands alone).

    :raises ValueError: for a row with more or fewer cells than ``header`` (a caller's bug
        that would otherwise shift every column after it).
    """
    table = [list(header), *(list(row) for row in rows)]
    for row in table:
        if len(row) != len(header):
            raise ValueError(f"row {row!r} has {len(row)} cells; the header has {len(header)}")
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    if rule:
        table.insert(1, ["-" * width for width in widths])
    return [
        indent
        + GUTTER.join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in table
    ]
