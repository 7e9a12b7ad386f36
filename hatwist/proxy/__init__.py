# -*- test-case-name: tests.proxy -*-
"""
The PROXY protocol (HAProxy's doc/proxy-protocol.txt), versions 1 and 2.

Pure: values, encoders and an incremental parser, with no I/O and no reactor, so
the endpoint that sends headers and any test that reads them share one codec.
Addresses are Twisted's address values, as in L{twisted.protocols.haproxy}.
"""

from ._encode import encode, proxy_header_bytes
from ._errors import (
    AddressBlockTooShortError,
    HeaderTooLongError,
    InvalidChecksumError,
    InvalidSignatureError,
    InvalidTLVError,
    InvalidV1HeaderError,
    MixedFamiliesError,
    ProxyProtocolError,
    TruncatedHeaderError,
    UnsupportedCommandError,
    UnsupportedFamilyError,
    UnsupportedVersionError,
)
from ._parser import DEFAULT_MAX_LENGTH, HeaderParser, decode
from ._values import (
    APPLICATION_TLV_TYPES,
    TLV,
    Command,
    ProxyHeader,
    TLVType,
    is_application_tlv,
)

__all__ = [
    "APPLICATION_TLV_TYPES",
    "DEFAULT_MAX_LENGTH",
    "TLV",
    "AddressBlockTooShortError",
    "Command",
    "HeaderParser",
    "HeaderTooLongError",
    "InvalidChecksumError",
    "InvalidSignatureError",
    "InvalidTLVError",
    "InvalidV1HeaderError",
    "MixedFamiliesError",
    "ProxyHeader",
    "ProxyProtocolError",
    "TLVType",
    "TruncatedHeaderError",
    "UnsupportedCommandError",
    "UnsupportedFamilyError",
    "UnsupportedVersionError",
    "decode",
    "encode",
    "is_application_tlv",
    "proxy_header_bytes",
]
