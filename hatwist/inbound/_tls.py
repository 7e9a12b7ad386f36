# -*- test-case-name: tests.test_inbound_tls -*-
"""
The listener's TLS context, loaded from the PEM files ``listen_tls_cert`` and
``listen_tls_key``.

Loading reads two files, so it blocks: the service calls L{load_server_tls} at start
and, on SIGHUP, in a thread; the session only ever uses the finished
L{ServerTLS}.  Everything that can be wrong with the files (unreadable, not PEM, a key
that does not match the certificate) is found here, as one L{ListenerTLSError} naming
the file, so a bad reload keeps the running certificate instead of breaking STARTTLS.

Only TLS 1.2 and later are offered (RFC 8996 deprecates 1.0 and 1.1).
"""

from __future__ import annotations

import re

import attrs
from OpenSSL import SSL, crypto
from twisted.internet import ssl

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


class ListenerTLSError(Exception):
    """The listener's certificate or key cannot be used; the text names the file."""


@attrs.frozen
class ServerTLS:
    """A usable server context, and what it was made from (for logs and reloads)."""

    options: ssl.CertificateOptions = attrs.field(eq=False, repr=False)
    cert_path: str
    key_path: str


def _read(path: str, key: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ListenerTLSError(f"{key} {path}: cannot read: {e.strerror or e}") from e


def load_server_tls(cert_path: str, key_path: str) -> ServerTLS:
    """The context for STARTTLS from a PEM certificate chain and its private key.

    @raise ListenerTLSError: naming the file and what is wrong with it.
    """
    cert_pem = _read(cert_path, "listen_tls_cert")
    key_pem = _read(key_path, "listen_tls_key")
    blocks = _PEM_CERT.findall(cert_pem)
    if not blocks:
        raise ListenerTLSError(f"listen_tls_cert {cert_path}: no PEM certificate in it")
    try:
        chain = [crypto.load_certificate(crypto.FILETYPE_PEM, block) for block in blocks]
    except crypto.Error as e:
        raise ListenerTLSError(f"listen_tls_cert {cert_path}: not a certificate: {e}") from e
    try:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem)
    except crypto.Error as e:
        raise ListenerTLSError(f"listen_tls_key {key_path}: not a PEM private key "
                               f"(an encrypted key is not supported): {e}") from e
    options = ssl.CertificateOptions(
        privateKey=key, certificate=chain[0], extraCertChain=chain[1:],
        raiseMinimumTo=MINIMUM_VERSION,
    )
    try:
        options.getContext()  # checks that the key belongs to the certificate
    except SSL.Error as e:
        raise ListenerTLSError(
            f"listen_tls_key {key_path} does not match listen_tls_cert {cert_path}: {e}"
        ) from e
    return ServerTLS(options, cert_path, key_path)
