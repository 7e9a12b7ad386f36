# -*- test-case-name: tests.delivery.test_client_tls -*-
"""
The STARTTLS policy of one session, per the binding's ``tls`` setting.

- ``required``: Twisted's own ``optionsForClientTLS``: the chain must verify against the
  trust root and the certificate must name the MX host (service-identity), or the
  handshake fails and the session with it.
- ``ifavailable``: opportunistic TLS (RFC 7435). Encryption beats plaintext even with a
  certificate nobody can check, so verification never aborts the handshake here; it is
  still carried out, and its outcome recorded, so that logs say whether the peer was
  authenticated. A refused STARTTLS goes on in plaintext (RFC 3207); a failed handshake
  fails the session, and the delivery agent tries the MX again without STARTTLS.
- ``no``: no STARTTLS at all.
"""

from __future__ import annotations

import attrs
from OpenSSL import SSL
from service_identity import VerificationError
from service_identity.pyopenssl import (
    DNS_ID,
    IPAddress_ID,
    extract_patterns,
    verify_service_identity,
)
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from zope.interface import implementer

from hatwist.config import TLSMode

#: Host name used when none was given: reserved (RFC 6761), so it can never verify.
_NO_HOSTNAME = "invalid"

_log = Logger()


@implementer(IOpenSSLClientConnectionCreator)
class _OpportunisticCreator:
    """
    ``optionsForClientTLS`` with its failing verify callback swapped for one that only
    records: the connection goes ahead whatever the certificate, and :attr:`verified`
    says afterwards whether it would have passed ``required``.
    """

    def __init__(self, hostname: str | None, trust_root: object | None) -> None:
        self._hostname = hostname
        self._inner = optionsForClientTLS(
            hostname or _NO_HOSTNAME,
            trustRoot=trust_root,
            sendServerName=None if hostname else False,
        )
        self._chain_ok = True
        self._identity_ok = False
        #: Why the certificate did not verify, for the log; ``None`` when it did.
        self.problem: str | None = "no certificate seen"

    @property
    def verified(self) -> bool:
        """True when the chain verified and the leaf names the host (after the handshake)."""
        return self._chain_ok and self._identity_ok

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection = self._inner.clientConnectionForTLS(tlsProtocol)
        connection.set_verify(SSL.VERIFY_PEER, self._record)
        return connection

    def _record(
        self, connection: SSL.Connection, cert: object, errno: int, depth: int, ok: int
    ) -> bool:
        # Never raise inside an OpenSSL callback: the exception would be lost.
        try:
            if not ok:
                self._chain_ok = False
                self.problem = f"certificate chain did not verify (X509 error {errno})"
            if depth == 0:
                self._identity_ok = self._matches_host(cert)
                if self.verified:
                    self.problem = None
                elif self._chain_ok:
                    self.problem = f"certificate does not name {self._hostname!r}"
        except Exception:
            _log.failure("while recording an opportunistic TLS verification")
        return True

    def _matches_host(self, cert: object) -> bool:
        if not self._hostname:
            return False
        if isIPAddress(self._hostname) or isIPv6Address(self._hostname):
            wanted = IPAddress_ID(self._hostname)
        else:
            wanted = DNS_ID(self._hostname)
        try:
            verify_service_identity(extract_patterns(cert), [wanted], [])
        except VerificationError:
            return False
        return True


@attrs.frozen
class TLSPolicy:
    """What one session does about STARTTLS, and (after it) whether the peer was verified."""

    mode: TLSMode
    hostname: str | None
    creator: IOpenSSLClientConnectionCreator | None

    @classmethod
    def for_mode(
        cls, mode: TLSMode, hostname: str | None, trust_root: object | None = None
    ) -> TLSPolicy:
        """The policy for ``mode``; ``required`` needs the MX ``hostname`` to verify."""
        if mode is TLSMode.NO:
            return cls(mode, hostname, None)
        if mode is TLSMode.REQUIRED:
            if not hostname:
                raise ValueError("tls required needs tls_hostname (the MX host name)")
            return cls(mode, hostname, optionsForClientTLS(hostname, trustRoot=trust_root))
        if mode is TLSMode.IFAVAILABLE:
            return cls(mode, hostname, _OpportunisticCreator(hostname, trust_root))
        raise ValueError(f"unknown TLS mode {mode!r}")

    @property
    def required(self) -> bool:
        return self.mode is TLSMode.REQUIRED

    @property
    def wanted(self) -> bool:
        """True when STARTTLS should be used if the peer offers it."""
        return self.creator is not None

    def verified(self) -> bool:
        """After a completed handshake: was the certificate verified for the host?

        Under ``required`` a completed handshake is proof; otherwise ask the recorder.
        """
        if self.required:
            return True
        return isinstance(self.creator, _OpportunisticCreator) and self.creator.verified

    def problem(self) -> str | None:
        """Why the certificate did not verify (for the log), after a completed handshake."""
        if isinstance(self.creator, _OpportunisticCreator):
            return self.creator.problem
        return None
