# -*- test-case-name: tests.test_mx -*-
"""
Why mail for a domain cannot be routed: one class per meaning, each carrying the SMTP
reply (code and RFC 3463 status) every recipient of the domain gets, and whether a later
attempt may succeed.
"""

from __future__ import annotations


class MXError(Exception):
    """
    Mail for a domain cannot be routed right now (or ever).

    :ivar domain: the domain that was looked up.
    :ivar reason: what a person needs to know, naming the domain.
    :ivar temporary: ``True`` when a later attempt may succeed (4xx), ``False`` to bounce.
    :ivar code: the SMTP reply code to report for every recipient of the domain.
    :ivar status: the RFC 3463 enhanced status code.
    """

    temporary: bool = True
    code: int = 451
    status: str = "4.4.3"

    def __init__(self, domain: str, reason: str) -> None:
        super().__init__(reason)
        self.domain = domain
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.code} {self.status} {self.reason}"


class NullMX(MXError):
    """The domain publishes ``MX 0 .`` (RFC 7505): it accepts no mail at all."""

    temporary = False
    code = 556
    status = "5.1.10"


class NoSuchDomain(MXError):
    """The domain does not exist (NXDOMAIN for its MX query)."""

    temporary = False
    code = 550
    status = "5.1.2"


class TemporaryDNSError(MXError):
    """The resolver timed out, failed (SERVFAIL) or answered something unusable."""

    temporary = True
    code = 451
    status = "4.4.3"


class NoMXAddresses(MXError):
    """MX hosts were found, but none of their names resolved to an address."""

    temporary = True
    code = 451
    status = "4.4.4"


class UnencodableDomain(MXError):
    """
    The domain cannot be written as a DNS name at all: a label over 63 octets (after
    IDNA encoding), an empty label, over 253 octets, or characters IDNA refuses. No
    later attempt can do better, so every recipient bounces with the reason.
    """

    temporary = False
    code = 553
    status = "5.1.3"
