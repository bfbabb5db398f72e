"""An agent's TLS identity on disk: enrolled once with a one-time token, renewed before it
expires, without an operator.

The key is made here and never leaves the directory (mode 0600); the scheduler sees only a
certificate signing request. The directory holds ``ca.pem``, ``key.pem`` and ``cert.pem``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import grpc

from fedstream.grpcutil import KEEPALIVE_OPTIONS
from fedstream.pki import TlsIdentity, key_pem, make_csr, new_key, read_peer
from fedstream.v1 import scheduler_pb2, scheduler_pb2_grpc

log = logging.getLogger(__name__)


class EnrollmentError(Exception):
    """Enrollment cannot succeed without an operator (no token, a refused token)."""


def enroll(endpoint: str, ca_pem: bytes, token: str, agent_id: str, timeout: float = 10.0) -> TlsIdentity:
    """Trades ``token`` and a signing request for a new key's certificate at the scheduler's
    enrollment port, trusting only ``ca_pem`` for the server. Raises grpc.RpcError."""
    key = new_key()
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    with grpc.secure_channel(endpoint, creds, options=KEEPALIVE_OPTIONS) as ch:
        reply = scheduler_pb2_grpc.EnrollmentServiceStub(ch).Enroll(
            scheduler_pb2.EnrollRequest(token=token, agent_id=agent_id, csr_pem=make_csr(key, agent_id)),
            timeout=timeout,
        )
    return TlsIdentity(reply.ca_certificate_pem, reply.certificate_pem, key_pem(key))


def renew(scheduler: grpc.Channel, current: TlsIdentity, timeout: float = 10.0) -> TlsIdentity:
    """A new key's certificate, asked for over ``scheduler`` (a channel that presents
    ``current``). Raises grpc.RpcError."""
    key = new_key()
    reply = scheduler_pb2_grpc.AgentServiceStub(scheduler).Renew(
        scheduler_pb2.RenewRequest(csr_pem=make_csr(key, current.peer.identity.name)), timeout=timeout
    )
    return TlsIdentity(reply.ca_certificate_pem, reply.certificate_pem, key_pem(key))


def renew_after_unix(identity: TlsIdentity) -> float:
    """Two thirds into the certificate's lifetime."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(identity.cert_pem)
    start, end = cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
    return start + (end - start) * 2 / 3


class AgentIdentity:
    """The identity kept in ``directory``: loaded when current, enrolled otherwise."""

    def __init__(
        self, directory: Path, agent_id: str, ca_file: Path, enroll_endpoint: str, token_file: Path | None
    ) -> None:
        self.directory = Path(directory)
        self.agent_id = agent_id
        self.ca_file = Path(ca_file)
        self.enroll_endpoint = enroll_endpoint
        self.token_file = token_file

    def load(self) -> TlsIdentity | None:
        """The stored identity if it is this agent's, signed by the configured authority and
        not expired; None otherwise."""
        if not (self.directory / "cert.pem").exists():
            return None
        try:
            stored = TlsIdentity.load(self.directory)
            peer = read_peer(stored.cert_pem)
        except (OSError, ValueError) as e:
            log.warning("ignoring the identity in %s: %s", self.directory, e)
            return None
        if peer.identity.name != self.agent_id or stored.ca_pem != self.ca_file.read_bytes():
            log.warning("the identity in %s is not agent %s's under this authority; enrolling again",
                        self.directory, self.agent_id)
            return None
        if peer.not_after_unix <= time.time():
            log.warning("the certificate in %s expired; enrolling again", self.directory)
            return None
        return stored

    def ensure(self) -> TlsIdentity:
        """The stored identity, or a new one enrolled with the token. Raises EnrollmentError
        when there is no token or the scheduler refuses it, grpc.RpcError when the scheduler
        cannot be reached."""
        stored = self.load()
        if stored is not None:
            return stored
        if self.token_file is None or not self.token_file.exists():
            raise EnrollmentError(f"no certificate in {self.directory} and no enrollment token")
        token = self.token_file.read_text().strip()
        try:
            fresh = enroll(self.enroll_endpoint, self.ca_file.read_bytes(), token, self.agent_id)
        except grpc.RpcError as e:
            if e.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                            grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
                raise EnrollmentError(f"enrollment refused: {e.details()}") from None
            raise
        fresh.save(self.directory)
        log.info("enrolled as %s; certificate kept in %s", self.agent_id, self.directory)
        return fresh

    def discard(self) -> None:
        """Sets the stored certificate aside (the control plane refused it): the next
        ``ensure`` enrolls again, with a new token."""
        cert = self.directory / "cert.pem"
        if cert.exists():
            cert.replace(self.directory / "cert.pem.refused")

    def renew(self, scheduler: grpc.Channel, current: TlsIdentity) -> TlsIdentity:
        fresh = renew(scheduler, current)
        fresh.save(self.directory)
        log.info("certificate renewed (valid until %s)", time.ctime(fresh.peer.not_after_unix))
        return fresh
