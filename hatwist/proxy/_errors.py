# -*- test-case-name: tests.proxy.test_errors -*-
"""
Why a PROXY protocol header was refused: one class per meaning.

Every error is a L{ValueError} (the bytes, or the values given, were wrong), so a
caller that only cares "was it valid?" catches L{ProxyProtocolError}; one that logs
or counts refusals can tell the reasons apart by class.  Messages describe the
bytes that were seen.
"""


class ProxyProtocolError(ValueError):
    """A PROXY protocol header was malformed or cannot be represented."""


class InvalidSignatureError(ProxyProtocolError):
    """The first bytes are neither the v2 signature nor the v1 C{"PROXY "} prefix."""


class UnsupportedVersionError(ProxyProtocolError):
    """The v2 version nibble is not 2."""


class UnsupportedCommandError(ProxyProtocolError):
    """The v2 command nibble is neither LOCAL (0) nor PROXY (1)."""


class UnsupportedFamilyError(ProxyProtocolError):
    """The address family or transport is not one this codec carries.

    Supported: UNSPEC, and STREAM (TCP) over IPv4, IPv6 and UNIX.  Datagram
    transports are refused, as are values the specification leaves undefined.
    """


class TruncatedHeaderError(ProxyProtocolError):
    """The header ended early: a TLV runs past the declared length, or the
    stream ended with a header still incomplete."""


class AddressBlockTooShortError(ProxyProtocolError):
    """The declared v2 length is shorter than the address block of its family."""


class InvalidChecksumError(ProxyProtocolError):
    """The CRC32C TLV does not match the header it arrived in."""


class MixedFamiliesError(ProxyProtocolError):
    """Source and destination are of different address families.

    A receiver cannot express such a pair (v2 has a single family byte), and
    HAProxy needs a separate C{server} line per family anyway.
    """


class HeaderTooLongError(ProxyProtocolError):
    """The header is longer than allowed: a v1 line past 107 bytes, a declared
    v2 length past the parser's cap, or a header too big to encode."""


class InvalidTLVError(ProxyProtocolError):
    """A TLV is malformed for its type (e.g. a CRC32C that is not 4 bytes, a
    UNIQUE_ID over 128 bytes, or a second CRC32C)."""


class InvalidV1HeaderError(ProxyProtocolError):
    """A v1 text line is not of the form
    C{PROXY TCP4|TCP6 SRC DST SPORT DPORT\\r\\n} or C{PROXY UNKNOWN...\\r\\n}."""
