"""A throwaway certificate authority, broker keystore and client certificate for TLS tests.

The broker certificate names only ``localhost`` (not 127.0.0.1), so a client that connects by IP
address fails hostname verification: the tests use that to see verification switched on and off.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class TlsMaterial:
    ca_pem: Path
    broker_keystore: Path
    keystore_password: str
    client_cert: Path
    client_key: Path
    other_ca_pem: Path  # a CA that signed nothing here: trusting it must fail verification


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _authority(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, common_name: str,
          usage: x509.ObjectIdentifier, dns: list[str]) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if dns:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_tls_material(directory: Path) -> TlsMaterial:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca = _authority("creditflow test CA")
    _, other_ca = _authority("creditflow unrelated CA")
    broker_key, broker = _leaf(ca_key, ca, "localhost", ExtendedKeyUsageOID.SERVER_AUTH, ["localhost"])
    client_key, client = _leaf(ca_key, ca, "creditflow-client", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    password = secrets.token_hex(8)
    material = TlsMaterial(
        ca_pem=directory / "ca.pem", broker_keystore=directory / "broker.p12", keystore_password=password,
        client_cert=directory / "client.pem", client_key=directory / "client.key",
        other_ca_pem=directory / "other-ca.pem",
    )
    material.ca_pem.write_bytes(_pem(ca))
    material.other_ca_pem.write_bytes(_pem(other_ca))
    material.broker_keystore.write_bytes(pkcs12.serialize_key_and_certificates(
        b"broker", broker_key, broker, [ca], serialization.BestAvailableEncryption(password.encode())))
    material.client_cert.write_bytes(_pem(client))
    material.client_key.write_bytes(client_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return material
