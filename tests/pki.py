"""A test CA and the certificates it signs: the gateway's, a client's, a stranger's, made with
`cryptography` for the tests that serve or speak TLS."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class PKI:
    ca: Path  # the CA's certificate: what clients (and the gateway, for mTLS) trust
    cert: Path  # the server's certificate, for 127.0.0.1 and localhost
    key: Path
    client_cert: Path  # a client certificate the CA signed
    client_key: Path
    stranger_cert: Path  # a client certificate another CA signed
    stranger_key: Path
    other_key: Path  # a key that belongs to no certificate here
    encrypted_key: Path  # the server's key, behind a passphrase

    def trust(self, *, client: bool = False, stranger: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        if client:
            context.load_cert_chain(str(self.client_cert), str(self.client_key))
        if stranger:
            context.load_cert_chain(str(self.stranger_cert), str(self.stranger_key))
        return context


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _write_encrypted(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"a passphrase"),
        )
    )
    return path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer[0].subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        assert issuer is not None
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()), False
        )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())  # fmt: skip


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def make_pki(d: Path) -> PKI:
    ca_key = _key()
    ca = _issue("secureig test CA", ca_key, None, ca=True)
    other_ca_key = _key()
    other_ca = _issue("someone else's CA", other_ca_key, None, ca=True)
    server_key, client_key, stranger_key = _key(), _key(), _key()
    return PKI(
        ca=_write_cert(ca, d / "ca.pem"),
        cert=_write_cert(_issue("gateway", server_key, (ca, ca_key), server=True), d / "cert.pem"),
        key=_write_key(server_key, d / "key.pem"),
        client_cert=_write_cert(_issue("ops", client_key, (ca, ca_key)), d / "client.pem"),
        client_key=_write_key(client_key, d / "client-key.pem"),
        stranger_cert=_write_cert(
            _issue("stranger", stranger_key, (other_ca, other_ca_key)), d / "stranger.pem"
        ),
        stranger_key=_write_key(stranger_key, d / "stranger-key.pem"),
        other_key=_write_key(_key(), d / "other-key.pem"),
        encrypted_key=_write_encrypted(server_key, d / "encrypted-key.pem"),
    )
