"""Certificates, keys and tokens of a local control plane, made fresh for every run.

One CA signs everything: the serving certificate that kube-apiserver,
kube-controller-manager and kube-scheduler present on 127.0.0.1, and the certificates
the controller-manager signs for CSRs. Clients authenticate with static bearer tokens
(`--token-auth-file`): the admin and kwok in `system:masters`, and the controller-manager
and the scheduler as the users the bootstrap RBAC policy already grants their rights to.
Service-account tokens are signed with their own key pair.

Keys are ECDSA P-256: generating them takes microseconds, where RSA-2048 would add a
noticeable share of the start-up time. Every file is written readable by its owner only.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVING_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster",
    "kubernetes.default.svc.cluster.local",
)
SERVING_IPS = ("127.0.0.1", "10.0.0.1")
"""127.0.0.1 for every client on this machine; 10.0.0.1 is the `kubernetes` Service's
address in the service range 10.0.0.0/24."""

VALIDITY = datetime.timedelta(days=30)
"""Long enough for a `modelcycle cluster up` left running for weeks; runs are disposable."""

USERS: dict[str, tuple[str, ...]] = {
    "admin": ("system:masters",),
    "kwok": ("system:masters",),
    "system:kube-controller-manager": (),
    "system:kube-scheduler": (),
}
"""Token users and their groups. The two `system:kube-*` users are bound by the
bootstrap RBAC policy, so they need no group."""


@dataclass(frozen=True)
class ClusterPKI:
    """Paths of the files a control plane is started with, and the users' bearer tokens."""

    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    service_account_key: Path
    service_account_public_key: Path
    token_file: Path
    tokens: dict[str, str]

    @classmethod
    def load(cls, folder: Path) -> ClusterPKI:
        """The files `create` wrote in `folder`, with the tokens read back."""
        pki = cls._in(folder, tokens={})
        for line in pki.token_file.read_text().splitlines():
            token, user, _ = line.split(",", 2)
            pki.tokens[user] = token
        return pki

    @classmethod
    def _in(cls, folder: Path, *, tokens: dict[str, str]) -> ClusterPKI:
        return cls(
            ca_cert=folder / "ca.crt",
            ca_key=folder / "ca.key",
            serving_cert=folder / "serving.crt",
            serving_key=folder / "serving.key",
            service_account_key=folder / "service-account.key",
            service_account_public_key=folder / "service-account.pub",
            token_file=folder / "tokens.csv",
            tokens=tokens,
        )

    @classmethod
    def create(cls, folder: Path, *, users: dict[str, tuple[str, ...]] = USERS) -> ClusterPKI:
        """Make a new CA, serving certificate, service-account keys and a token per user
        (name -> groups) in `folder`."""
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        now = datetime.datetime.now(datetime.timezone.utc)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelcycle-local-ca")])
        ca_cert = (
            _builder(ca_name, ca_name, ca_key.public_key(), now)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())
        )

        serving_key = ec.generate_private_key(ec.SECP256R1())
        alt_names = [x509.DNSName(name) for name in SERVING_NAMES] + [
            x509.IPAddress(ipaddress.ip_address(ip)) for ip in SERVING_IPS
        ]
        serving_cert = (
            _builder(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
                ca_name, serving_key.public_key(), now,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )

        service_account_key = ec.generate_private_key(ec.SECP256R1())
        tokens = {user: secrets.token_urlsafe(32) for user in users}

        pki = cls._in(folder, tokens=tokens)
        _write(pki.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
        _write(pki.ca_key, _private_pem(ca_key))
        _write(pki.serving_cert, serving_cert.public_bytes(serialization.Encoding.PEM))
        _write(pki.serving_key, _private_pem(serving_key))
        _write(pki.service_account_key, _private_pem(service_account_key))
        _write(
            pki.service_account_public_key,
            service_account_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )
        # Format of --token-auth-file: token,user,uid,"group1,group2"
        lines = [f'{tokens[user]},{user},{user},"{",".join(groups)}"' for user, groups in users.items()]
        _write(pki.token_file, ("\n".join(lines) + "\n").encode())
        return pki


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, now: datetime.datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes) -> None:
    path.touch(mode=0o600)
    path.write_bytes(data)
