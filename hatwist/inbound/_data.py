# -*- test-case-name: tests.test_inbound_data -*-
"""
The DATA reader: message text in, checked and unstuffed message out; and
L{judge_message}, which decides whether a message read whole may be spooled.

Pure (no I/O, no reactor) so that every way a peer can cut or abuse the stream
can be fed to it byte by byte in a unit test.  It holds only what it must: the
message so far while it fits in C{max_size} and has no over-long line; once it
does not, the rest is counted and dropped, so a hostile body costs no memory.

A line is measured as it arrives (dot-stuffed): that is exactly the line an MX
would get from us, because the outbound client stuffs dots the same way.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import attrs

from hatwist.config.settings import route_group

from ._syntax import BindingHeaderError, Refusal, printable, split_binding

DEFAULT_BINDING = "default"
MAX_HOPS = 100
"""Received: fields a message may carry before it is taken for a loop."""

MAX_LINE = 998
"""RFC 5322 section 2.1.1 and RFC 5321 section 4.5.3.1.6: octets per line, CR LF
not counted.  Postfix folds longer lines; we refuse the message (README says why)."""
FLUSH_PARTIAL_LINE = 64 * 1024
"""A line still without its LF is counted (not held) past this many bytes."""


class Step(enum.Enum):
    """What one L{DataReader.feed} found."""

    MORE = "more"  # everything usable was taken; feed more input
    END = "end"  # the end-of-data line was read
    BARE_LF = "LF"  # a bare LF: the session must be closed
    BARE_CR = "CR"  # a bare CR: likewise


@attrs.frozen
class Fed:
    """The outcome of one feed: how many input bytes were used, and what was found."""

    used: int
    step: Step


class DataReader:
    """One message's DATA, from the 354 to the dot line.

    @ivar size: unstuffed octets seen so far (kept or not).
    @ivar longest: the longest line seen, in octets without CR LF.
    """

    def __init__(self, max_size: int, max_line: int = MAX_LINE) -> None:
        self.max_size = max_size
        self.max_line = max_line
        self.size = 0
        self.longest = 0
        self._chunks: list[bytes] = []
        self._midline = False  # the last region ended inside a line
        self._line = 0  # octets of that unfinished line so far

    @property
    def too_big(self) -> bool:
        return self.size > self.max_size

    @property
    def line_too_long(self) -> bool:
        return self.longest > self.max_line

    @property
    def kept(self) -> int:
        """Bytes held in memory for this message (0 once it will be refused)."""
        return sum(map(len, self._chunks))

    def content(self) -> bytes:
        """The unstuffed message with CR LF line ends (empty once refused)."""
        return b"".join(self._chunks)

    def feed(self, buffer: bytes) -> Fed:
        """Take what can be taken from the start of ``buffer``.

        The caller drops C{used} bytes from its buffer and, on C{MORE}, waits for
        input when nothing was used.  After C{END} the rest of the buffer is the
        next command.
        """
        probe = (b"xx" if self._midline else b"\r\n") + buffer
        end = probe.find(b"\r\n.\r\n")
        if end >= 0:  # the dot line starts at buffer[end]; it is clean by construction
            step = self._take(buffer[:end])
            return Fed(end + 3, Step.END) if step is None else Fed(0, step)
        last_lf = buffer.rfind(b"\n")
        if last_lf >= 0:
            step = self._take(buffer[:last_lf + 1])
            return Fed(last_lf + 1, Step.MORE) if step is None else Fed(0, step)
        if len(buffer) > FLUSH_PARTIAL_LINE:  # keep the last byte: it may be a CR
            step = self._take(buffer[:-1])
            return Fed(len(buffer) - 1, Step.MORE) if step is None else Fed(0, step)
        return Fed(0, Step.MORE)

    def _take(self, region: bytes) -> Step | None:
        """Check and keep one stretch of DATA; a bare line end found, or None."""
        pairs = region.count(b"\r\n")
        if region.count(b"\n") != pairs or region.count(b"\r") != pairs:
            bare_cr = region.count(b"\r") != pairs
            return Step.BARE_CR if bare_cr else Step.BARE_LF
        lines = region.split(b"\r\n")
        # The first piece continues the unfinished line; the last one is unfinished
        # (empty when the region ends with CR LF).
        lengths = [len(line) for line in lines]
        lengths[0] += self._line
        self.longest = max(self.longest, *lengths)
        self._line = lengths[-1]
        prefix = b"xx" if self._midline else b"\r\n"
        unstuffed = (prefix + region).replace(b"\r\n.", b"\r\n")[2:]
        self._midline = not region.endswith(b"\r\n")
        self.size += len(unstuffed)
        if self.too_big or self.line_too_long:
            self._chunks = []  # it will be refused: count the rest, keep none of it
        else:
            self._chunks.append(unstuffed)
        return None


@attrs.frozen
class Accepted:
    """A message that may be spooled: its binding (canonical; C{group:NAME} for
    X-Binding-Group) and content (without those headers)."""

    binding: str
    content: bytes


def judge_message(reader: DataReader,
                  binding_exists: Callable[[str], bool]) -> Accepted | Refusal:
    """Whether the message just read may be spooled, and on which binding; or the
    reply that refuses it.  The session goes on either way."""
    if reader.too_big:
        return Refusal(552, "5.3.4", "Message size exceeds fixed limit")
    if reader.line_too_long:
        return Refusal(550, "5.6.0", f"Error: message has a line of {reader.longest} octets; "
                       f"at most {reader.max_line} allowed (RFC 5322 2.1.1)")
    try:
        binding, content, hops = split_binding(reader.content())
    except BindingHeaderError as e:
        return Refusal(550, "5.7.1", f"Error: {e}")
    binding = DEFAULT_BINDING if binding is None else binding
    if hops >= MAX_HOPS:
        return Refusal(554, "5.4.6", "Too many hops")
    if not binding_exists(binding):
        group = route_group(binding)
        if group is not None:
            return Refusal(550, "5.7.1", f'Unknown binding_group "{printable(group)}" '
                           "(or it has no bindings)")
        return Refusal(550, "5.7.1", f'Unknown binding "{printable(binding)}"')
    return Accepted(binding, content)
