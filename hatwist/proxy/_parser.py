# -*- test-case-name: tests.proxy.test_parser -*-
"""
Reading a PROXY header off a byte stream that arrives in arbitrary pieces.

The receiver of a relayed connection does not know how the header was split
into segments, nor (before the first bytes) which version is coming.  The
parser decides v1 or v2 from the first byte, refuses bad input as early as the
bytes allow, and hands back everything after the header untouched.
"""

from __future__ import annotations

from ._errors import HeaderTooLongError, InvalidSignatureError, TruncatedHeaderError
from ._v1 import MAX_LINE_LENGTH, decode_v1
from ._v1 import PREFIX as V1_PREFIX
from ._v2 import FIXED_LENGTH, MAX_LENGTH, decode_v2, read_fixed
from ._v2 import SIGNATURE as V2_SIGNATURE
from ._values import ProxyHeader

DEFAULT_MAX_LENGTH = 1024
"""Default cap on a v2 header's declared length: ample for addresses and the
usual TLVs, and far below the 64 KiB a hostile peer could declare."""


class HeaderParser:
    """
    An incremental parser for one v1 or v2 PROXY header.

    Use one parser per connection.  Once it has returned a header, or raised,
    it is spent: further calls to L{feed} raise L{RuntimeError}.
    """

    def __init__(self, max_length: int = DEFAULT_MAX_LENGTH) -> None:
        """
        @param max_length: the largest declared v2 length (bytes after the
            16-byte fixed part) to accept; a larger one raises
            L{HeaderTooLongError} as soon as the length field arrives.
        """
        if not 0 <= max_length <= MAX_LENGTH:
            raise ValueError(f"max_length must be in 0..{MAX_LENGTH}, not {max_length!r}")
        self._max_length = max_length
        self._buffer = bytearray()
        self._version: int | None = None
        self._total: int | None = None
        self._spent = False

    def feed(self, data: bytes) -> tuple[ProxyHeader | None, bytes]:
        """
        Add C{data} and parse as far as it allows.

        @return: C{(None, b"")} while the header is incomplete, then
            C{(header, rest)} where C{rest} is every byte fed after the header
            (the start of the application's data).
        @raise ProxyProtocolError: the subclass naming what is wrong.
        @raise RuntimeError: if this parser already returned a header or raised.
        """
        if self._spent:
            raise RuntimeError("this HeaderParser already returned a header or raised")
        self._buffer += data
        try:
            parsed = self._parse()
        except Exception:
            self._spent = True
            raise
        if parsed is None:
            return None, b""
        self._spent = True
        header, end = parsed
        rest = bytes(self._buffer[end:])
        self._buffer.clear()
        return header, rest

    def finish(self) -> None:
        """
        Tell the parser the stream ended (call it from C{connectionLost}).

        @raise TruncatedHeaderError: if part of a header had arrived.
        """
        if self._spent or not self._buffer:
            return
        self._spent = True
        expected = (
            f"{self._total} bytes" if self._total is not None else "more bytes"
        )
        raise TruncatedHeaderError(
            f"stream ended after {len(self._buffer)} bytes of a "
            f"{'v' + str(self._version) if self._version else 'PROXY'} header; "
            f"it needed {expected}"
        )

    def _parse(self) -> tuple[ProxyHeader, int] | None:
        buffer = self._buffer
        if self._version is None:
            if V2_SIGNATURE.startswith(buffer[: len(V2_SIGNATURE)]):
                if len(buffer) < len(V2_SIGNATURE):
                    return None
                self._version = 2
            elif V1_PREFIX.startswith(buffer[: len(V1_PREFIX)]):
                if len(buffer) < len(V1_PREFIX):
                    return None
                self._version = 1
            else:
                raise InvalidSignatureError(
                    f"first bytes {bytes(buffer[:16])!r} start neither a v2 signature "
                    f"nor a v1 {V1_PREFIX!r} line"
                )
        if self._version == 1:
            return self._parse_v1()
        return self._parse_v2()

    def _parse_v1(self) -> tuple[ProxyHeader, int] | None:
        newline = self._buffer.find(b"\n", 0, MAX_LINE_LENGTH)
        if newline < 0:
            if len(self._buffer) >= MAX_LINE_LENGTH:
                raise HeaderTooLongError(
                    f"no LF within the first {MAX_LINE_LENGTH} bytes of v1 line "
                    f"{bytes(self._buffer[:MAX_LINE_LENGTH])!r}"
                )
            return None
        end = newline + 1
        return decode_v1(bytes(self._buffer[:end])), end

    def _parse_v2(self) -> tuple[ProxyHeader, int] | None:
        if self._total is None:
            if len(self._buffer) < FIXED_LENGTH:
                return None
            fixed = read_fixed(bytes(self._buffer[:FIXED_LENGTH]), self._max_length)
            self._total = FIXED_LENGTH + fixed.length
        if len(self._buffer) < self._total:
            return None
        return decode_v2(bytes(self._buffer[: self._total]), self._max_length), self._total


def decode(data: bytes, *, max_length: int = DEFAULT_MAX_LENGTH) -> tuple[ProxyHeader, bytes]:
    """
    Parse a header from C{data}, which must hold all of it.

    @return: C{(header, rest)}, C{rest} being the bytes after the header.
    @raise TruncatedHeaderError: if C{data} ends before the header does.
    @raise ProxyProtocolError: the subclass naming anything else wrong.
    """
    parser = HeaderParser(max_length)
    header, rest = parser.feed(data)
    if header is None:
        parser.finish()
        raise TruncatedHeaderError("no bytes: a PROXY header was expected")
    return header, rest
