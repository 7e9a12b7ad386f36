"""Tests for hatwist.inbound._data: the DATA reader, fed byte by byte and in one piece (pure)."""

from __future__ import annotations

import pytest

from hatwist.inbound._data import (
    FLUSH_PARTIAL_LINE,
    MAX_HOPS,
    MAX_LINE,
    Accepted,
    DataReader,
    Step,
    judge_message,
)


def feed_all(reader: DataReader, data: bytes, step: int) -> tuple[Step, bytes]:
    """Feed ``data`` ``step`` bytes at a time, as a session would; the final step and
    what is left after it."""
    buffer = b""
    for start in range(0, len(data), step):
        buffer += data[start:start + step]
        while True:
            fed = reader.feed(buffer)
            if fed.step is not Step.MORE:
                return fed.step, buffer[fed.used:]
            if not fed.used:
                break
            buffer = buffer[fed.used:]
    return Step.MORE, buffer


MESSAGE = b"Subject: x\r\n\r\n..dot\r\n..\r\nline\r\n.\r\nNOOP\r\n"


@pytest.mark.parametrize("step", [1, 2, 7, len(MESSAGE)])
def test_the_message_is_unstuffed_and_ends_at_the_dot_line_however_it_is_cut(step):
    reader = DataReader(10_000)
    found, left = feed_all(reader, MESSAGE, step)
    assert found is Step.END and b"NOOP\r\n".startswith(left)  # what followed, as far as read
    assert reader.content() == b"Subject: x\r\n\r\n.dot\r\n.\r\nline\r\n"
    assert reader.size == len(reader.content())


@pytest.mark.parametrize("step", [1, 5, 1000])
@pytest.mark.parametrize("length, too_long", [(MAX_LINE, False), (MAX_LINE + 1, True)])
def test_the_longest_line_is_measured_across_reads(step, length, too_long):
    reader = DataReader(10_000)
    body = b"a\r\n" + b"x" * length + b"\r\nb\r\n.\r\n"
    assert feed_all(reader, body, step)[0] is Step.END
    assert (reader.longest, reader.line_too_long) == (length, too_long)
    assert (reader.kept == 0) is too_long


def test_a_line_is_measured_as_sent_dot_stuffed_which_is_what_an_mx_gets():
    reader = DataReader(10_000)
    assert feed_all(reader, b"." + b"x" * MAX_LINE + b"\r\n.\r\n", 3)[0] is Step.END
    assert reader.line_too_long


def test_a_long_line_without_lf_is_counted_not_held():
    reader = DataReader(10 * FLUSH_PARTIAL_LINE)
    data = b"y" * (3 * FLUSH_PARTIAL_LINE)
    step, left = feed_all(reader, data, FLUSH_PARTIAL_LINE + 10)
    assert step is Step.MORE and len(left) <= FLUSH_PARTIAL_LINE + 10
    assert reader.kept == 0 and reader.longest == len(data) - len(left)


def test_past_the_size_limit_nothing_is_kept():
    reader = DataReader(100)
    assert feed_all(reader, (b"z" * 50 + b"\r\n") * 4 + b".\r\n", 1000)[0] is Step.END
    assert reader.too_big and reader.kept == 0 and reader.size == 208


@pytest.mark.parametrize("data, step", [
    (b"a\nb\r\n.\r\n", Step.BARE_LF), (b"a\rb\r\n.\r\n", Step.BARE_CR),
    (b"a\r\n.\n", Step.BARE_LF)])
def test_bare_line_ends_are_reported(data, step):
    assert feed_all(DataReader(1000), data, 1)[0] is step


def read(message: bytes, max_size: int = 10_000) -> DataReader:
    reader = DataReader(max_size)
    assert feed_all(reader, message + b".\r\n", len(message) + 3)[0] is Step.END
    return reader


@pytest.mark.parametrize("message, verdict", [
    (b"X-Binding: B2\r\n\r\nhi\r\n", Accepted("b2", b"\r\nhi\r\n")),
    (b"Subject: a\r\n\r\nhi\r\n", Accepted("default", b"Subject: a\r\n\r\nhi\r\n")),
    (b"X-Binding: nope\r\n\r\nhi\r\n", (550, "5.7.1")),
    (b"X-Binding-Group: POOL\r\n\r\nhi\r\n", Accepted("group:pool", b"\r\nhi\r\n")),
    (b"X-Binding-Group: nope\r\n\r\nhi\r\n", (550, "5.7.1")),
    (b"Received: x\r\n" * MAX_HOPS + b"\r\nhi\r\n", (554, "5.4.6")),
    (b"X-Binding: nope\r\n\r\n" + b"x" * (MAX_LINE + 1) + b"\r\n", (550, "5.6.0")),
    (b"X-Binding: nope\r\n\r\n" + b"x\r\n" * 5000, (552, "5.3.4")),
])
def test_judge_message_says_what_may_be_spooled_and_on_which_binding(message, verdict):
    found = judge_message(read(message),
                          lambda name: name in ("default", "b2", "group:pool"))
    if isinstance(verdict, Accepted):
        assert found == verdict
    else:
        assert (found.code, found.enhanced) == verdict


def test_an_unknown_group_is_named_as_a_group():
    found = judge_message(read(b"X-Binding-Group: nope\r\n\r\nhi\r\n"), lambda name: False)
    assert found.text == 'Unknown binding_group "nope" (or it has no bindings)'
