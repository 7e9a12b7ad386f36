"""Throw-away TLS certificates made at test time (tests: tests.rig.test_rig).

STARTTLS tests need a server certificate a client can really verify, for a name the test
chooses (``mx.test``), without shipping keys in the repository. :func:`shared_ca` makes one
CA per process; :meth:`CA.issue` signs leaf certificates for the names asked for.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import ssl

#: Validity window of every certificate made here, starting a day in the past.
VALIDITY = datetime.timedelta(days=30)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@attrs.frozen
class ServerCert:
    """A leaf certificate and its key, both PEM."""

    cert_pem: bytes
    key_pem: bytes

    def server_options(self) -> ssl.CertificateOptions:
        """Twisted server-side TLS options presenting this certificate."""
        return ssl.PrivateCertificate.loadPEM(self.cert_pem + self.key_pem).options()


@attrs.frozen
class CA:
    """A self-signed CA that clients trust and that signs the servers' certificates."""

    cert_pem: bytes
    key_pem: bytes

    def issue(self, *dns_names: str, ips: tuple[str, ...] = ()) -> ServerCert:
        """A server certificate for ``dns_names`` (and IP SANs ``ips``) signed by this CA."""
        ca_cert = x509.load_pem_x509_certificate(self.cert_pem)
        ca_key = serialization.load_pem_private_key(self.key_pem, password=None)
        key = _key()
        now = datetime.datetime.now(datetime.UTC)
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(dns_names[0] if dns_names else ips[0]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return ServerCert(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))

    def trust_root(self) -> ssl.Certificate:
        """This CA as a Twisted trust root (``optionsForClientTLS(trustRoot=...)``)."""
        return ssl.Certificate.loadPEM(self.cert_pem)

    def client_options(self, hostname: str) -> ssl.IOpenSSLClientConnectionCreator:
        """Client TLS options that verify ``hostname`` against this CA only."""
        return ssl.optionsForClientTLS(hostname, trustRoot=self.trust_root())


def make_ca(common_name: str = "hatwist test CA") -> CA:
    """A fresh CA (use :func:`shared_ca` unless a test needs one clients do not trust)."""
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return CA(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


@functools.cache
def shared_ca() -> CA:
    """The process-wide test CA (made once: key generation is the slow part)."""
    return make_ca()
