"""Signatures that hold secure aggregation against a malicious aggregator (Bonawitz et al., CCS
2017, section 6): each agent signs the keys it advertises, and later the list of survivors, with
the key of its TLS identity; every agent checks the others' certificates (issued by the tenant's
authority, valid now, naming an agent of exactly that id) and signatures before it shares a key
or reveals a share. Signing and verification are ``cryptography``'s (ECDSA, RSA-PSS, Ed25519;
x509 path validation).

Limits: whoever holds the tenant's CA key can issue a certificate for any agent, and so sign
keys in its name; an aggregator that issues its own certificate from ``tls.ca_key_file`` is
trusted not to (give aggregators ``tls.cert_file`` instead). A revoked agent's certificate
verifies until it expires (the scheduler does not select the agent)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from fedstream.errors import InvalidArgument, PermissionDenied
from fedstream.pki import TlsIdentity, identity_of

# The largest signature taken: RSA of 8192 bits (ECDSA P-256 signatures are about 72 bytes).
MAX_SIGNATURE_BYTES = 1024
# The largest certificate taken, DER (an agent's is about 500 bytes).
MAX_CERTIFICATE_BYTES = 8192
_ADVERTISE = b"fedstream-secagg-advertise-v1"
_SURVIVORS = b"fedstream-secagg-survivors-v1"

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
VerifyingKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


def _encode(label: bytes, *parts: bytes) -> bytes:
    """Length-prefixed, so that no two different tuples give the same bytes."""
    out = bytearray(label)
    for part in parts:
        out += len(part).to_bytes(4, "big") + part
    return bytes(out)


def advertise_payload(tenant: str, run_id: str, round_id: str, agent_id: str, c_pk: bytes, s_pk: bytes) -> bytes:
    """What an agent signs when it advertises its keys for one round."""
    return _encode(_ADVERTISE, tenant.encode(), run_id.encode(), round_id.encode(), agent_id.encode(), c_pk, s_pk)


def survivors_payload(tenant: str, run_id: str, round_id: str, survivors: Sequence[str]) -> bytes:
    """What a survivor signs in the consistency check: the agents whose masked inputs the
    aggregator holds (U3), sorted."""
    return _encode(_SURVIVORS, tenant.encode(), run_id.encode(), round_id.encode(),
                   *(a.encode() for a in sorted(survivors)))


def check_signature_bytes(what: str, signature: bytes) -> bytes:
    """Returns ``signature``; raises InvalidArgument naming ``what`` unless it is 1 to
    MAX_SIGNATURE_BYTES bytes."""
    if not isinstance(signature, bytes) or not 0 < len(signature) <= MAX_SIGNATURE_BYTES:
        raise InvalidArgument(f"{what} must be 1 to {MAX_SIGNATURE_BYTES} bytes")
    return signature


def check_certificate_bytes(what: str, certificate: bytes) -> bytes:
    """Returns ``certificate``; raises InvalidArgument naming ``what`` unless it is 1 to
    MAX_CERTIFICATE_BYTES bytes."""
    if not isinstance(certificate, bytes) or not 0 < len(certificate) <= MAX_CERTIFICATE_BYTES:
        raise InvalidArgument(f"{what} must be a DER certificate of 1 to {MAX_CERTIFICATE_BYTES} bytes")
    return certificate


class Signer:
    """Signs with an agent's identity key; ``certificate`` is its certificate (DER), sent with
    what it signs."""

    def __init__(self, key_pem: bytes, cert_pem: bytes) -> None:
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
            raise ValueError("the identity key must be an ECDSA, RSA or Ed25519 key")
        self._key: SigningKey = key
        self.certificate = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)

    def sign(self, data: bytes) -> bytes:
        key = self._key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key.sign(data, ec.ECDSA(hashes.SHA256()))
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(data, _PSS, hashes.SHA256())
        return key.sign(data)


_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)


def signature_valid(key: VerifyingKey, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` is ``key``'s over ``data``."""
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, _PSS, hashes.SHA256())
        else:
            key.verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


class Trust:
    """The tenant's authority, as agents check each other's certificates against it (the same
    identity rule the services apply: the URI name of fedstream.pki, role agent, this tenant)."""

    def __init__(self, ca_pem: bytes, tenant: str) -> None:
        self.ca = x509.load_pem_x509_certificate(ca_pem)
        self.tenant = tenant

    def agent_key(self, certificate: bytes, agent_id: str, now: dt.datetime | None = None) -> VerifyingKey:
        """The public key of ``certificate`` (DER), which must chain to the tenant's authority,
        be valid at ``now`` (default: now) and name agent ``agent_id`` of the tenant. Raises
        InvalidArgument naming what is wrong, PermissionDenied for another identity's."""
        try:
            cert = x509.load_der_x509_certificate(check_certificate_bytes("the certificate", certificate))
        except ValueError:
            raise InvalidArgument("the certificate is not a DER X.509 certificate") from None
        at = now or dt.datetime.now(dt.UTC)
        if at > cert.not_valid_after_utc:
            raise InvalidArgument(f"the certificate expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")
        if at < cert.not_valid_before_utc:
            raise InvalidArgument(f"the certificate is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC")
        try:
            PolicyBuilder().store(Store([self.ca])).time(at).build_client_verifier().verify(cert, [])
        except VerificationError:
            raise InvalidArgument(f"the certificate is not issued by tenant {self.tenant!r}'s authority") from None
        try:
            who = identity_of(cert)
        except ValueError as e:
            raise InvalidArgument(f"the certificate: {e}") from None
        if (who.tenant, who.role, who.name) != (self.tenant, "agent", agent_id):
            raise PermissionDenied(f"the certificate is for {who}, not agent {agent_id!r} of tenant {self.tenant!r}")
        key = cert.public_key()
        if not isinstance(key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey, ed25519.Ed25519PublicKey)):
            raise InvalidArgument("the certificate's key is not an ECDSA, RSA or Ed25519 key")
        return key


@dataclass(frozen=True)
class Credentials:
    """What an agent signs with and checks the others against."""

    signer: Signer
    trust: Trust

    @classmethod
    def of(cls, identity: TlsIdentity) -> Credentials:
        """From the agent's TLS identity (its key, its certificate, its tenant's authority)."""
        tenant = identity.peer.identity.tenant
        return cls(Signer(identity.key_pem, identity.cert_pem), Trust(identity.ca_pem, tenant))
