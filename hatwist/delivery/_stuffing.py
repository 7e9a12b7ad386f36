# -*- test-case-name: tests.delivery.test_stuffing -*-
"""
Message content to DATA bytes: clean CRLF line endings and dot-stuffing that survives
any chunking.

Why this exists: ``twisted.mail``'s ``SMTPClient.transformChunk`` stuffs each 16 KiB
chunk on its own, so a line starting with ``.`` right at a chunk boundary goes out
unescaped; a lone ``.`` there ends DATA early and the rest of the body runs as SMTP
commands (SMTP smuggling). :class:`DotStuffer` carries "are we at the start of a line?"
(and a pending CR) from one chunk to the next, so its output does not depend on where
the input was cut.

Line endings: CRLF stays, and every bare LF and bare CR becomes CRLF. A bare CR or LF
must never reach the wire (receivers disagree on what they mean, which is the other half
of smuggling), and turning them into line breaks is what sendmail and Postfix do.

Pure: no reactor, no I/O.
"""

from __future__ import annotations

import re

#: What ends the DATA section: a line holding a single dot (RFC 5321 section 4.1.1.4).
TERMINATOR = b".\r\n"

CRLF = b"\r\n"

#: Any line ending: CRLF first, so it is not seen as a bare CR followed by a bare LF.
_LINE_ENDING = re.compile(rb"\r\n|\r|\n")


def normalise(content: bytes) -> bytes:
    """``content`` as it will arrive: every line ending CRLF, the last line ended too.

    This is what a receiver reconstructs from :func:`stuff`'s output; the empty message
    stays empty.
    """
    content = _LINE_ENDING.sub(CRLF, content)
    if content and not content.endswith(CRLF):
        content += CRLF
    return content


class DotStuffer:
    """
    Turns message content, fed in chunks of any size, into DATA bytes.

    Feed every chunk to :meth:`feed` and write what it returns; then write what
    :meth:`finish` returns, which ends the last line and adds the terminator.
    """

    def __init__(self) -> None:
        # Where the next output byte goes: at the start of a line (the message starts
        # with one). A dot there must be doubled.
        self._at_line_start = True
        # The previous chunk ended in CR; whether it is CRLF or a bare CR depends on the
        # next byte, so it is held back.
        self._pending_cr = False
        self._finished = False

    def feed(self, chunk: bytes) -> bytes:
        """DATA bytes for ``chunk`` (possibly fewer bytes: a trailing CR is held back)."""
        if self._finished:
            raise RuntimeError("DotStuffer.feed() after finish()")
        if self._pending_cr:
            chunk = b"\r" + chunk
            self._pending_cr = False
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
            self._pending_cr = True
        if not chunk:
            return b""
        out = _LINE_ENDING.sub(CRLF, chunk).replace(b"\r\n.", b"\r\n..")
        if self._at_line_start and out.startswith(b"."):
            out = b"." + out
        self._at_line_start = out.endswith(CRLF)
        return out

    def finish(self) -> bytes:
        """The last bytes: a held-back CR as CRLF, a CRLF for an unended last line, the
        terminator."""
        if self._finished:
            raise RuntimeError("DotStuffer.finish() called twice")
        self._finished = True
        tail = b""
        if self._pending_cr:
            tail = CRLF
            self._pending_cr = False
        elif not self._at_line_start:
            tail = CRLF
        return tail + TERMINATOR


def stuff(content: bytes) -> bytes:
    """All DATA bytes for ``content`` in one go, terminator included."""
    stuffer = DotStuffer()
    return stuffer.feed(content) + stuffer.finish()


def unstuff(data: bytes) -> bytes:
    """
    What a receiver makes of DATA bytes (RFC 5321 section 4.5.2): the content up to the
    terminator line, one leading dot removed from each line.

    Raises ``ValueError`` when ``data`` does not end with the terminator line.
    """
    lines = data.split(CRLF)
    # A well-formed stream is: content lines, ".", and the empty rest after the last CRLF.
    try:
        end = lines.index(b".")
    except ValueError:
        raise ValueError("no terminator line in DATA") from None
    if end != len(lines) - 2 or lines[-1] != b"":
        raise ValueError("bytes after the DATA terminator")
    content = [line[1:] if line.startswith(b".") else line for line in lines[:end]]
    return b"".join(line + CRLF for line in content)
