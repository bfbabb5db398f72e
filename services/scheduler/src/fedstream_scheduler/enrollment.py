"""Agent enrollment, independent of gRPC and HTTP: one-time tokens, first certificates and
renewals, signed by the tenant's certificate authority.

An operator makes a token (kept only as its SHA-256, expiring, usable once); an agent sends
it with a signing request for a key it made itself and gets a certificate naming its id and
the tenant. The certificate's serial joins the agent's record: a certificate not listed there
is refused on every call (fedstream.auth), so deleting the agent revokes it, and a renewal
retires the certificate before the one it replaced. A certificate that expired while its
agent was offline is renewed for the same key, within a grace period, by proof that the
caller holds that key (``renew_expired``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from fedstream.auth import AGENT_CERTS_KEPT
from fedstream.errors import (
    AgentDisabled,
    AgentNotFound,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    RenewalRefused,
    Unauthenticated,
)
from fedstream.ids import check_agent_id
from fedstream.pki import (
    CertificateAuthority,
    Identity,
    PeerCertificate,
    cert_pem,
    identity_of,
    public_key_of_csr,
    same_public_key,
)
from fedstream.state import AgentRecord, EnrollmentTokenRecord, StateStore

log = logging.getLogger(__name__)

ENROLLMENT_PREFIX = "fse_"
MAX_CSR_BYTES = 16 << 10
# The longest an enrollment token may wait to be used.
MAX_TOKEN_TTL_S = 30 * 86400.0
DEFAULT_RENEWAL_GRACE_S = 30 * 86400.0
MAX_CERT_BYTES = 16 << 10


def taken(agent_id: str) -> AlreadyExists:
    return AlreadyExists(
        f"agent {agent_id!r} is already enrolled: a token not made for an agent id enrolls only new "
        f"agents; re-enrolling {agent_id!r} needs a token made for it"
    )


def secret_hash(secret: str) -> str:
    """How token secrets (API and enrollment) are stored. They are 256-bit random secrets, so
    one SHA-256 is enough to keep them safely (a slow password hash protects guessable
    secrets; these are not guessable)."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Issued:
    agent_id: str
    certificate_pem: bytes
    ca_certificate_pem: bytes
    not_after_unix: float
    renew_after_unix: float


class Enrollment:
    """Tokens and certificates of one tenant's agents. Without an authority (plaintext
    development mode, or a scheduler given a certificate but not the CA key) tokens can be
    made but enrolling fails with FAILED_PRECONDITION."""

    def __init__(
        self,
        state: StateStore,
        ca: CertificateAuthority | None,
        cert_lifetime_s: float,
        clock: Callable[[], float] = time.time,
        renewal_grace_s: float = DEFAULT_RENEWAL_GRACE_S,
    ) -> None:
        self.state = state
        self.ca = ca
        self.cert_lifetime_s = cert_lifetime_s
        self.clock = clock
        self.renewal_grace_s = renewal_grace_s

    def create_token(self, agent_id: str, ttl_s: float, name: str = "") -> tuple[EnrollmentTokenRecord, str]:
        """A new token and its secret (shown once). Raises InvalidArgument for a bad agent id
        or a lifetime outside (0, MAX_TOKEN_TTL_S]."""
        if agent_id:
            check_agent_id(agent_id)
        if not 0 < ttl_s <= MAX_TOKEN_TTL_S:
            raise InvalidArgument(f"ttl_s must be above 0 and at most {MAX_TOKEN_TTL_S:g} seconds")
        secret = ENROLLMENT_PREFIX + secrets.token_urlsafe(32)
        now = self.clock()
        rec = EnrollmentTokenRecord(
            f"enr-{uuid.uuid4().hex[:12]}", secret_hash(secret), now + ttl_s, agent_id, name, now
        )
        self.state.create_enrollment_token(rec)
        log.info("enrollment token %s made (agent %s, expires in %.0f s)", rec.token_id, agent_id or "any", ttl_s)
        return rec, secret

    def list_tokens(self) -> list[EnrollmentTokenRecord]:
        """Tokens not yet used; expired ones are removed on the way."""
        now = self.clock()
        out = []
        for rec in self.state.list_enrollment_tokens():
            if rec.expires_unix <= now:
                self.state.consume_enrollment_token(rec.sha256)
            else:
                out.append(rec)
        return out

    def delete_token(self, token_id: str) -> None:
        self.state.delete_enrollment_token(token_id)

    def _authority(self) -> CertificateAuthority:
        if self.ca is None:
            raise FailedPrecondition("this scheduler cannot sign certificates: tls.ca_key_file is not set")
        return self.ca

    def _issue(self, agent_id: str, csr_pem: bytes) -> tuple[Issued, str]:
        ca = self._authority()
        if len(csr_pem) > MAX_CSR_BYTES:
            raise InvalidArgument(f"csr_pem exceeds {MAX_CSR_BYTES} bytes")
        key = public_key_of_csr(csr_pem)
        cert = ca.issue(key, Identity(ca.tenant, "agent", agent_id), dt.timedelta(seconds=self.cert_lifetime_s))
        start, end = cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
        issued = Issued(agent_id, cert_pem(cert), ca.cert_pem, end, start + (end - start) * 2 / 3)
        return issued, format(cert.serial_number, "x")

    def enroll(self, token: str, agent_id: str, csr_pem: bytes) -> Issued:
        """Uses ``token`` to certify ``agent_id``'s key. Raises Unauthenticated for an unknown,
        used or expired token, PermissionDenied for another agent's token or a disabled agent,
        AlreadyExists when a token not made for an agent id names an agent already enrolled
        (never taking over an agent: only a token made for its id re-enrolls it),
        InvalidArgument for a bad id or request (the token is not used up by these refusals)."""
        ca = self._authority()
        check_agent_id(agent_id)
        if len(csr_pem) > MAX_CSR_BYTES:
            raise InvalidArgument(f"csr_pem exceeds {MAX_CSR_BYTES} bytes")
        public_key_of_csr(csr_pem)  # a bad request does not use the token up
        digest = secret_hash(token)
        candidate = next((t for t in self.state.list_enrollment_tokens() if t.sha256 == digest), None)
        if candidate is None:
            raise Unauthenticated("unknown or already used enrollment token")
        if candidate.agent_id and candidate.agent_id != agent_id:
            raise PermissionDenied(f"this enrollment token is for agent {candidate.agent_id!r}")
        try:
            existing = self.state.get_agent(agent_id)
        except AgentNotFound:
            existing = None
        if existing is not None and existing.disabled:
            raise AgentDisabled(agent_id)
        if existing is not None and not candidate.agent_id:
            raise taken(agent_id)  # before the token is used: it can still enroll a new id
        rec = self.state.consume_enrollment_token(digest)
        if rec is None:
            raise Unauthenticated("unknown or already used enrollment token")
        if rec.expires_unix <= self.clock():
            raise Unauthenticated("the enrollment token has expired")
        issued, serial = self._issue(agent_id, csr_pem)
        now = self.clock()

        def enrolled(current: AgentRecord) -> AgentRecord:
            if current.disabled:
                raise AgentDisabled(agent_id)
            if not rec.agent_id:
                raise taken(agent_id)  # enrolled meanwhile under another token
            # A re-enrollment with a token made for this id (a lost key, a rebuilt site)
            # retires every older certificate of the agent.
            return dataclasses.replace(current, cert_serials=[serial], enrolled_unix=now)

        try:
            self.state.update_agent(agent_id, enrolled)
        except AgentNotFound:
            try:
                self.state.create_agent(AgentRecord(agent_id=agent_id, registered_unix=now, cert_serials=[serial],
                                                    enrolled_unix=now))
            except AlreadyExists:
                # Another enrollment of this new id won the race: a token made for the id
                # re-enrolls it as usual; an unbound token never replaces that agent.
                self.state.update_agent(agent_id, enrolled)
        log.info("agent %s enrolled with token %s (tenant %s)", agent_id, rec.token_id, ca.tenant)
        return issued

    def renew(self, peer: PeerCertificate, csr_pem: bytes) -> Issued:
        """A new certificate for the agent ``peer`` names (already checked current). The one
        it replaces stays valid until it expires or the next renewal."""
        agent_id = peer.identity.name
        issued, serial = self._issue(agent_id, csr_pem)

        def renewed(current: AgentRecord) -> AgentRecord:
            if peer.serial not in current.cert_serials:
                raise Unauthenticated(f"this certificate of agent {agent_id!r} was revoked or replaced")
            return dataclasses.replace(current, cert_serials=[*current.cert_serials, serial][-AGENT_CERTS_KEPT:])

        try:
            self.state.update_agent(agent_id, renewed)
        except AgentNotFound:
            raise Unauthenticated(f"agent {agent_id!r} is not enrolled (or was deleted)") from None
        log.info("agent %s renewed its certificate", agent_id)
        return issued

    def renew_expired(self, certificate_pem: bytes, csr_pem: bytes) -> Issued:
        """A new certificate for the key of ``certificate_pem``: an agent's certificate of this
        authority that expired less than ``renewal_grace_s`` ago (or has not expired yet),
        presented with ``csr_pem``, a request for the same key signed by it (the proof that
        the caller holds the key). The presented certificate is retired, so the same request
        cannot be used twice.

        Raises Unauthenticated for a certificate this authority did not issue to an agent, a
        request of another key, a certificate revoked or replaced, an agent deleted;
        AgentDisabled; RenewalRefused once the grace has passed; InvalidArgument for input
        that does not parse."""
        ca = self._authority()
        cert = _agent_certificate(ca, certificate_pem)
        if len(csr_pem) > MAX_CSR_BYTES:
            raise InvalidArgument(f"csr_pem exceeds {MAX_CSR_BYTES} bytes")
        agent_id, serial = identity_of(cert).name, format(cert.serial_number, "x")
        if not same_public_key(public_key_of_csr(csr_pem), cert.public_key()):
            raise Unauthenticated("the signing request is not signed by the certificate's key")
        late = self.clock() - cert.not_valid_after_utc.timestamp()
        if late > self.renewal_grace_s:
            raise RenewalRefused(
                f"the certificate of agent {agent_id!r} expired {_span(late)} ago, beyond the renewal grace of "
                f"{_span(self.renewal_grace_s)} (enrollment.renewal_grace_s): ask an operator for a new "
                f"enrollment token (fedstream enrollment-tokens create --agent-id {agent_id})"
            )
        self._current(agent_id, serial)  # refuse before signing anything
        issued, issued_serial = self._issue(agent_id, csr_pem)

        def renewed(current: AgentRecord) -> AgentRecord:
            _still_current(current, serial)  # checked again atomically with the change
            return dataclasses.replace(current, cert_serials=[issued_serial])

        try:
            self.state.update_agent(agent_id, renewed)
        except AgentNotFound:
            raise Unauthenticated(f"agent {agent_id!r} is not enrolled (or was deleted)") from None
        log.info("agent %s renewed its certificate, expired %s ago", agent_id, _span(max(late, 0.0)))
        return issued

    def _current(self, agent_id: str, serial: str) -> None:
        try:
            _still_current(self.state.get_agent(agent_id), serial)
        except AgentNotFound:
            raise Unauthenticated(f"agent {agent_id!r} is not enrolled (or was deleted)") from None


def _still_current(rec: AgentRecord, serial: str) -> None:
    """Raises Unauthenticated when ``serial`` is not one of the agent's certificates (revoked or
    replaced), AgentDisabled when an operator disabled the agent."""
    if serial not in rec.cert_serials:
        raise Unauthenticated(f"this certificate of agent {rec.agent_id!r} was revoked or replaced")
    if rec.disabled:
        raise AgentDisabled(rec.agent_id)


def _agent_certificate(ca: CertificateAuthority, pem: bytes) -> x509.Certificate:
    """``pem`` as a certificate ``ca`` signed for one of its agents; raises InvalidArgument
    when it does not parse, Unauthenticated otherwise."""
    if len(pem) > MAX_CERT_BYTES:
        raise InvalidArgument(f"certificate_pem exceeds {MAX_CERT_BYTES} bytes")
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise InvalidArgument("certificate_pem is not a PEM certificate") from None
    try:
        cert.verify_directly_issued_by(ca.cert)
        identity = identity_of(cert)
    except (ValueError, TypeError, InvalidSignature):
        raise Unauthenticated(f"the certificate was not issued by tenant {ca.tenant!r}'s authority") from None
    if identity.tenant != ca.tenant or identity.role != "agent":
        raise Unauthenticated(f"the certificate is {identity}'s, not an agent's of tenant {ca.tenant!r}")
    return cert


def _span(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds:.0f} s"
