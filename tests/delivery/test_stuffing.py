"""Tests for hatwist.delivery._stuffing: DATA bytes that no chunking can break."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hatwist.delivery._stuffing import (
    TERMINATOR,
    DotStuffer,
    normalise,
    stuff,
    unstuff,
)

#: Pieces that make the dangerous cases likely: dots at line starts, bare CR and LF,
#: and complete terminator lines inside the content.
_PIECES = [b".", b"..", b"\r", b"\n", b"\r\n", b"x", b"\r\n.\r\n", b".\r\n", b"\n.\n", b"\xff"]

bodies = st.one_of(
    st.binary(max_size=200),
    st.lists(st.sampled_from(_PIECES), max_size=60).map(b"".join),
)


def _feed_in_pieces(body: bytes, cuts: list[int]) -> bytes:
    stuffer = DotStuffer()
    out, start = [], 0
    for cut in sorted(c % (len(body) + 1) for c in cuts):
        out.append(stuffer.feed(body[start:cut]))
        start = cut
    out.append(stuffer.feed(body[start:]))
    return b"".join(out) + stuffer.finish()


def _is_clean_crlf(data: bytes) -> bool:
    """Every CR is followed by LF and every LF is preceded by CR."""
    return data.count(b"\r") == data.count(b"\n") == data.count(b"\r\n")


@given(bodies)
def test_receiver_reconstructs_normalised_content(body):
    assert unstuff(stuff(body)) == normalise(body)


@given(bodies.map(normalise))
def test_crlf_content_round_trips_exactly(body):
    assert unstuff(stuff(body)) == body


@given(bodies)
def test_no_terminator_before_the_end(body):
    data = stuff(body)
    assert data.endswith(TERMINATOR)
    content = data[: -len(TERMINATOR)]
    assert b"\r\n.\r\n" not in content
    assert not content.startswith(b".\r\n")


@given(bodies)
def test_wire_has_only_crlf_line_endings(body):
    assert _is_clean_crlf(stuff(body))


@given(bodies, st.lists(st.integers(min_value=0, max_value=10_000), max_size=8))
def test_output_does_not_depend_on_chunking(body, cuts):
    assert _feed_in_pieces(body, cuts) == stuff(body)


def test_dot_line_at_chunk_boundary_is_stuffed():
    # The twisted.mail trap: the second chunk starts a line with a lone dot.
    stuffer = DotStuffer()
    data = stuffer.feed(b"a" * 16382 + b"\r\n") + stuffer.feed(b".\r\nRSET\r\n")
    data += stuffer.finish()
    assert data.endswith(b"\r\n..\r\nRSET\r\n.\r\n")


def test_dot_at_very_start_is_stuffed():
    assert stuff(b".\r\n") == b"..\r\n.\r\n"
    assert stuff(b".hidden\r\n") == b"..hidden\r\n.\r\n"


def test_crlf_split_across_chunks_is_one_line_ending():
    stuffer = DotStuffer()
    data = stuffer.feed(b"a\r") + stuffer.feed(b"\n.b") + stuffer.finish()
    assert data == b"a\r\n..b\r\n.\r\n"


@pytest.mark.parametrize(
    ("content", "wire"),
    [
        (b"", b".\r\n"),
        (b"x", b"x\r\n.\r\n"),
        (b"a\nb\n", b"a\r\nb\r\n.\r\n"),
        (b"a\rb\r", b"a\r\nb\r\n.\r\n"),
        (b"a\r\r\nb", b"a\r\n\r\nb\r\n.\r\n"),
        (b"a\n\rb", b"a\r\n\r\nb\r\n.\r\n"),
        (b"end\r", b"end\r\n.\r\n"),
    ],
)
def test_line_endings_become_crlf(content, wire):
    assert stuff(content) == wire


def test_feed_after_finish_is_refused():
    stuffer = DotStuffer()
    stuffer.finish()
    with pytest.raises(RuntimeError):
        stuffer.feed(b"x")


@pytest.mark.parametrize("data", [b"abc\r\n", b".\r\nextra\r\n.\r\n", b".\r\nx"])
def test_unstuff_refuses_broken_streams(data):
    with pytest.raises(ValueError):
        unstuff(data)
