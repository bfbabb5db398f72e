"""A tenant's certificate authority and the identities its certificates carry.

Every certificate names one identity in a URI subject alternative name,
``spiffe://fedstream/tenant/<tenant>/<role>/<name>``, where role is ``agent`` (a site),
``service`` (scheduler, aggregator) or ``operator`` (a person or tool driving runs over gRPC).
Identity is read from this name and nothing else: never from a field of a message.

Keys are ECDSA P-256. Agents make their own key and send only a certificate signing request;
the authority takes the public key from it and ignores every name it asks for.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedstream.errors import InvalidArgument

URI_PREFIX = "spiffe://fedstream/tenant/"
ROLES = ("agent", "service", "operator")
# Files of a tenant's authority and of any identity, in one directory each.
CA_CERT, CA_KEY, CERT, KEY = "ca.pem", "ca-key.pem", "cert.pem", "key.pem"
# Certificates are valid from a little before they are made, for clocks slightly behind.
CLOCK_SKEW = dt.timedelta(seconds=60)


@dataclass(frozen=True)
class Identity:
    """Who a certificate speaks for."""

    tenant: str
    role: str
    name: str

    @property
    def uri(self) -> str:
        return f"{URI_PREFIX}{self.tenant}/{self.role}/{quote(self.name, safe='')}"

    def __str__(self) -> str:
        return f"{self.role} {self.name!r} of tenant {self.tenant!r}"


@dataclass(frozen=True)
class PeerCertificate:
    identity: Identity
    serial: str
    not_after_unix: float


def identity_of(cert: x509.Certificate) -> Identity:
    """The identity in a certificate's URI name; raises ValueError when it has none."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise ValueError("the certificate has no subject alternative name") from None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if not uri.startswith(URI_PREFIX):
            continue
        parts = uri[len(URI_PREFIX):].split("/")
        if len(parts) == 3 and parts[1] in ROLES and parts[0] and parts[2]:
            return Identity(parts[0], parts[1], unquote(parts[2]))
    raise ValueError("the certificate names no fedstream identity")


def read_peer(pem: bytes) -> PeerCertificate:
    cert = x509.load_pem_x509_certificate(pem)
    return PeerCertificate(identity_of(cert), format(cert.serial_number, "x"),
                           cert.not_valid_after_utc.timestamp())


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_csr(key: ec.EllipticCurvePrivateKey, name: str) -> bytes:
    """A certificate signing request for ``key``; the name is informative only."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def public_key_of_csr(csr_pem: bytes) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    """The public key of a signed request; raises InvalidArgument for a request that does not
    parse, is not signed by its own key, or holds a weak or unknown kind of key."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
        valid = csr.is_signature_valid
    except (ValueError, InvalidSignature):
        raise InvalidArgument("csr_pem is not a PEM certificate signing request") from None
    if not valid:
        raise InvalidArgument("the certificate signing request is not signed by its own key")
    key = csr.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in ("secp256r1", "secp384r1"):
        return key
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048:
        return key
    raise InvalidArgument("the request's key must be ECDSA P-256/P-384 or RSA of at least 2048 bits")


def same_public_key(a: object, b: object) -> bool:
    """Whether two public keys (of requests or certificates) are the same key."""

    def der(key: object) -> bytes | None:
        if isinstance(key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
            return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return None

    mine = der(a)
    return mine is not None and mine == der(b)


class CertificateAuthority:
    """One tenant's authority: issues agents', services' and operators' certificates."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert = cert
        self.key = key
        tenant = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        if not tenant:
            raise ValueError("the authority's certificate names no tenant (O=)")
        self.tenant = str(tenant[0].value)

    @classmethod
    def create(cls, tenant: str, lifetime: dt.timedelta = dt.timedelta(days=3650)) -> CertificateAuthority:
        key = new_key()
        name = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, tenant),
            x509.NameAttribute(NameOID.COMMON_NAME, f"fedstream {tenant} CA"),
        ])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, cert_file: Path, key_file: Path) -> CertificateAuthority:
        cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
        key = serialization.load_pem_private_key(Path(key_file).read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_file}: the authority's key must be an ECDSA key")
        return cls(cert, key)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CA_CERT).write_bytes(cert_pem(self.cert))
        _write_private(directory / CA_KEY, key_pem(self.key))

    @property
    def cert_pem(self) -> bytes:
        return cert_pem(self.cert)

    def issue(
        self,
        public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
        identity: Identity,
        lifetime: dt.timedelta,
        dns_names: tuple[str, ...] = (),
    ) -> x509.Certificate:
        """A certificate for ``identity`` on ``public_key``, usable as a TLS client and, with
        ``dns_names`` (host names or IP addresses), as a TLS server."""
        if identity.tenant != self.tenant:
            raise ValueError(f"this authority is tenant {self.tenant!r}'s, not {identity.tenant!r}'s")
        now = dt.datetime.now(dt.UTC)
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
        for n in dns_names:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                names.append(x509.DNSName(n))
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if dns_names else [])
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, identity.tenant),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, identity.role),
                x509.NameAttribute(NameOID.COMMON_NAME, identity.name[:64]),
            ]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(min(now + lifetime, self.cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def issue_identity(
        self, identity: Identity, lifetime: dt.timedelta, dns_names: tuple[str, ...] = ()
    ) -> TlsIdentity:
        """A new key and its certificate for ``identity``, with this authority as the trust root."""
        key = new_key()
        cert = self.issue(key.public_key(), identity, lifetime, dns_names)
        return TlsIdentity(self.cert_pem, cert_pem(cert), key_pem(key))


@dataclass(frozen=True)
class TlsIdentity:
    """What one end of a mutually authenticated connection holds: the authority it trusts,
    its certificate and its key (all PEM)."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    @property
    def peer(self) -> PeerCertificate:
        return read_peer(self.cert_pem)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CA_CERT).write_bytes(self.ca_pem)
        _write_private(directory / KEY, self.key_pem)
        # The certificate last: its presence means the directory is complete.
        tmp = directory / (CERT + ".tmp")
        tmp.write_bytes(self.cert_pem)
        tmp.replace(directory / CERT)

    @classmethod
    def load(cls, directory: Path) -> TlsIdentity:
        return cls((directory / CA_CERT).read_bytes(), (directory / CERT).read_bytes(),
                   (directory / KEY).read_bytes())


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.touch(mode=0o600)
    tmp.chmod(0o600)
    tmp.write_bytes(data)
    tmp.replace(path)
