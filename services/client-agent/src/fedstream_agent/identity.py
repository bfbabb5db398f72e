"""An agent's TLS identity on disk: enrolled once with a one-time token, renewed before it
expires, without an operator; a certificate that expired while the agent was offline is
renewed with the key it holds, within the scheduler's grace period, on the enrollment port.

The key is made here and never leaves the directory (mode 0600); the scheduler sees only a
certificate signing request. The directory holds ``ca.pem``, ``key.pem`` and ``cert.pem``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedstream.grpcutil import KEEPALIVE_OPTIONS, error_code_of
from fedstream.pki import TlsIdentity, key_pem, make_csr, new_key, read_peer
from fedstream.v1 import scheduler_pb2, scheduler_pb2_grpc

log = logging.getLogger(__name__)
# Answers of the enrollment port that only an operator can change.
REFUSALS = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED)


class EnrollmentError(Exception):
    """Enrollment cannot succeed without an operator (no token, a refused token)."""


class AgentDisabledError(EnrollmentError):
    """An operator disabled this agent: nothing succeeds until it is enabled again."""


class CallFailed(Exception):
    """A call to ``endpoint`` (the ``what`` of the control plane) failed with ``error``, a
    grpc.RpcError that may pass (an endpoint down, a network cut)."""

    def __init__(self, what: str, endpoint: str, error: grpc.RpcError) -> None:
        super().__init__(f"{what} {endpoint}: {error}")
        self.what = what
        self.endpoint = endpoint
        self.error = error


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


def renew_expired(endpoint: str, ca_pem: bytes, current: TlsIdentity, timeout: float = 10.0) -> TlsIdentity:
    """A new certificate for the key of ``current`` (whose certificate expired), from the
    scheduler's enrollment port, trusting only ``ca_pem``: the request is signed by that key,
    which proves this agent holds it. Raises grpc.RpcError."""
    key = serialization.load_pem_private_key(current.key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the agent's key is not an ECDSA key")
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    with grpc.secure_channel(endpoint, creds, options=KEEPALIVE_OPTIONS) as ch:
        reply = scheduler_pb2_grpc.EnrollmentServiceStub(ch).RenewExpired(
            scheduler_pb2.RenewExpiredRequest(
                certificate_pem=current.cert_pem, csr_pem=make_csr(key, current.peer.identity.name)
            ),
            timeout=timeout,
        )
    return TlsIdentity(reply.ca_certificate_pem, reply.certificate_pem, current.key_pem)


def expired(identity: TlsIdentity) -> bool:
    return identity.peer.not_after_unix <= time.time()


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
        self.last_action = ""

    def stored(self) -> TlsIdentity | None:
        """The stored identity if it is this agent's under the configured authority, expired
        or not; None otherwise (logged)."""
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
        return stored

    def load(self) -> TlsIdentity | None:
        """The stored identity if it is current (see ``stored``); None otherwise."""
        stored = self.stored()
        return stored if stored is not None and not expired(stored) else None

    def ensure(self) -> TlsIdentity:
        """The stored identity; a stored one that expired renewed with its key; or a new one
        enrolled with the token. ``last_action`` says which ("loaded", "renewed", "enrolled").

        Raises AgentDisabledError when the scheduler says an operator disabled this agent,
        EnrollmentError when there is no token or the scheduler refuses it (naming why an
        expired certificate was not renewed), CallFailed when the enrollment port cannot be
        reached."""
        stored = self.stored()
        if stored is not None and not expired(stored):
            self.last_action = "loaded"
            return stored
        refusal = ""
        if stored is not None:
            log.warning("the certificate in %s expired at %s; renewing it with its key at %s", self.directory,
                        time.ctime(stored.peer.not_after_unix), self.enroll_endpoint)
            try:
                return self._keep(self._call(renew_expired, stored), "renewed")
            except EnrollmentError as e:
                refusal = f"the expired certificate was not renewed: {e}"
                log.warning("%s", refusal)
        if self.token_file is None or not self.token_file.exists():
            missing = "no enrollment token" if self.token_file is None else (
                f"no enrollment token: the token file {self.token_file} does not exist")
            raise EnrollmentError((refusal + "; " if refusal else f"no certificate in {self.directory} and ") + missing)
        token = self.token_file.read_text().strip()
        return self._keep(self._call(enroll, token, self.agent_id), "enrolled")

    def _call(self, fn: Any, *args: Any) -> TlsIdentity:
        """``fn(enroll_endpoint, ca_pem, *args)``, its refusals as EnrollmentError."""
        try:
            out: TlsIdentity = fn(self.enroll_endpoint, self.ca_file.read_bytes(), *args)
        except grpc.RpcError as e:
            if error_code_of(e) == "agent_disabled":
                raise AgentDisabledError(e.details()) from None
            if e.code() in REFUSALS:
                what = "renewal" if fn is renew_expired else "enrollment"
                raise EnrollmentError(f"{what} refused: {e.details()}") from None
            raise CallFailed("enrollment", self.enroll_endpoint, e) from None
        return out

    def _keep(self, fresh: TlsIdentity, action: str) -> TlsIdentity:
        fresh.save(self.directory)
        self.last_action = action
        log.info("%s as %s; certificate valid until %s, kept in %s", action, self.agent_id,
                 time.ctime(fresh.peer.not_after_unix), self.directory)
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
