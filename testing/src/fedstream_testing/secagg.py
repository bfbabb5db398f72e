"""Identities for secure aggregation in tests and benchmarks: agents' keys and certificates from
one tenant authority made in process, and certificates that must be refused (another CA's,
another agent's, expired)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from fedstream.pki import CertificateAuthority, Identity, TlsIdentity, cert_pem, key_pem, new_key
from fedstream.secagg.signing import Credentials

TENANT = "t1"
LIFETIME = dt.timedelta(hours=1)


class Authority:
    """A tenant's authority that issues agents' identities, as ``Credentials``."""

    def __init__(self, tenant: str = TENANT) -> None:
        self.tenant = tenant
        self.ca = CertificateAuthority.create(tenant)

    def identity(self, agent_id: str) -> TlsIdentity:
        return self.ca.issue_identity(Identity(self.tenant, "agent", agent_id), LIFETIME)

    def credentials(self, agent_id: str) -> Credentials:
        return Credentials.of(self.identity(agent_id))

    def all(self, agents: Iterable[str]) -> dict[str, Credentials]:
        return {a: self.credentials(a) for a in agents}

    def expired(self, agent_id: str) -> Credentials:
        """Credentials whose certificate expired a minute ago (otherwise sound)."""
        key = new_key()
        now = dt.datetime.now(dt.UTC)
        ident = Identity(self.tenant, "agent", agent_id)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([])).issuer_name(self.ca.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=2)).not_valid_after(now - dt.timedelta(minutes=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(ident.uri)]), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca.key.public_key()), critical=False)
            .sign(self.ca.key, hashes.SHA256())
        )
        return Credentials.of(TlsIdentity(self.ca.cert_pem, cert_pem(cert), key_pem(key)))
