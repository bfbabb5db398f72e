"""Who is calling: identities from client certificates, checked on every gRPC call.

With TLS on (the default), a caller is the identity its client certificate names (see
fedstream.pki), and an agent is also checked against its record in the state store on every
call: an agent that was deleted, or whose certificate was replaced, is UNAUTHENTICATED; a
disabled one is PERMISSION_DENIED. With ``tls.insecure_plaintext`` (development only), there
is no certificate and agents are who their messages say.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from pathlib import Path
from typing import Any

from fedstream.config import TlsSettings
from fedstream.errors import AgentDisabled, AgentNotFound, PermissionDenied, Unauthenticated
from fedstream.ids import check_agent_id
from fedstream.pki import CertificateAuthority, Identity, PeerCertificate, TlsIdentity, read_peer
from fedstream.startup import StartupError
from fedstream.state import AgentRecord, StateStore

log = logging.getLogger(__name__)

# A certificate a service issues itself from the tenant's CA key at start.
SERVICE_CERT_LIFETIME = dt.timedelta(days=365)
# At most this many of an agent's certificates are valid at once: the newest and the one it
# replaced, still held by connections opened before the renewal.
AGENT_CERTS_KEPT = 2


_PLAINTEXT_ADVICE = "or set {tls.insecure_plaintext}=true, for development only"


def service_identity(tls: TlsSettings, tenant: str, name: str) -> TlsIdentity | None:
    """This process's TLS identity from its settings; None in plaintext mode (logged as a
    warning). Raises StartupError naming the setting that is missing or wrong (exit code 2)."""
    if tls.insecure_plaintext:
        log.warning(
            "gRPC is PLAINTEXT (tls.insecure_plaintext=true): no encryption, and agents are "
            "taken at the id they claim. For development only."
        )
        return None
    if tls.ca_file is None:
        raise StartupError("tls.ca_file", None, "the tenant's CA certificate is required",
                           f"set it to the ca.pem of `fedstream pki init-ca`, {_PLAINTEXT_ADVICE}")
    if tls.ca_key_file is None and (tls.cert_file is None or tls.key_file is None):
        raise StartupError("tls.ca_key_file", None, "this process needs a certificate: the CA key to issue "
                           "one, or {tls.cert_file} and {tls.key_file}",
                           "set it to the ca-key.pem of `fedstream pki init-ca`, or set the other two")
    ca_pem = _read(tls.ca_file, "tls.ca_file")
    if tls.cert_file is not None and tls.key_file is not None:
        out = TlsIdentity(ca_pem, _read(tls.cert_file, "tls.cert_file"), _read(tls.key_file, "tls.key_file"))
        try:
            ident = out.peer.identity
        except ValueError as e:
            raise StartupError("tls.cert_file", tls.cert_file, str(e), _CERT_ADVICE) from e
        if ident.tenant != tenant or ident.role != "service":
            raise StartupError("tls.cert_file", tls.cert_file, f"the certificate is for {ident}, not a service "
                               f"of tenant {tenant!r}", _CERT_ADVICE)
        return out
    ca = load_authority(tls, tenant)
    assert ca is not None
    return ca.issue_identity(Identity(tenant, "service", name), SERVICE_CERT_LIFETIME, tuple(tls.server_names))


_CERT_ADVICE = "issue one with `fedstream pki issue --role service`, or use {tls.ca_key_file} instead"


def load_authority(tls: TlsSettings, tenant: str) -> CertificateAuthority | None:
    """The tenant's authority when this process holds its key (the scheduler signs agents'
    certificates with it); None otherwise. Raises StartupError for unreadable files or another
    tenant's authority."""
    if tls.insecure_plaintext or tls.ca_file is None or tls.ca_key_file is None:
        return None
    _read(tls.ca_file, "tls.ca_file")
    _read(tls.ca_key_file, "tls.ca_key_file")
    try:
        ca = CertificateAuthority.load(tls.ca_file, tls.ca_key_file)
    except (OSError, ValueError) as e:
        raise StartupError("tls.ca_key_file", tls.ca_key_file, f"no authority from {{tls.ca_file}} and this key: {e}",
                           _FILES_ADVICE) from e
    if ca.tenant != tenant:
        raise StartupError("tls.ca_file", tls.ca_file, f"the authority is tenant {ca.tenant!r}'s, not {tenant!r}'s",
                           "use this tenant's CA, or set {tenant.tenant} to the CA's tenant")
    return ca


_FILES_ADVICE = "point it at the files `fedstream pki init-ca` wrote (ca.pem, ca-key.pem)"


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise StartupError(setting, path, f"cannot read {path}: {e.strerror}", _FILES_ADVICE) from e


@functools.lru_cache(maxsize=4096)
def _peer_of_pem(pem: bytes) -> PeerCertificate | None:
    try:
        return read_peer(pem)
    except ValueError:
        return None


def peer_certificate(context: Any) -> PeerCertificate | None:
    """The verified client certificate of a gRPC call (sync or asyncio context), if any."""
    pems = (context.auth_context() or {}).get("x509_pem_cert")
    if not pems:
        return None
    return _peer_of_pem(pems[0])


class Guard:
    """Decides who a call comes from and whether it may proceed.

    ``tls`` False is plaintext (development) mode: every check passes and agents are the id
    their messages name. ``check_records`` False skips the per-call check of the agent's
    record, for a process that does not share the scheduler's state store (an aggregator
    with the in-process backend): certificates are then trusted until they expire.
    """

    def __init__(self, tenant: str, tls: bool, state: StateStore, check_records: bool = True) -> None:
        self.tenant = tenant
        self.tls = tls
        self.state = state
        self.check_records = check_records

    def caller(self, context: Any) -> PeerCertificate:
        """Raises Unauthenticated without a fedstream certificate, PermissionDenied for one of
        another tenant."""
        peer = peer_certificate(context)
        if peer is None:
            raise Unauthenticated("a client certificate naming a fedstream identity is required")
        if peer.identity.tenant != self.tenant:
            raise PermissionDenied(f"this control plane serves tenant {self.tenant!r}, not {peer.identity.tenant!r}")
        return peer

    def require_role(self, context: Any, *roles: str) -> Identity | None:
        """The caller, which must have one of ``roles``; None in plaintext mode."""
        if not self.tls:
            return None
        ident = self.caller(context).identity
        if ident.role not in roles:
            raise PermissionDenied(f"{ident.role}s may not call this method")
        return ident

    def agent(self, context: Any, claimed: str = "") -> str:
        """The calling agent's id: its certificate's, which ``claimed`` (a message's agent_id)
        must equal when not empty. The agent must be enrolled, its certificate current and the
        agent not disabled. Raises InvalidArgument for a malformed ``claimed`` (never echoed
        whole: a long one would not fit in the status)."""
        if claimed:
            check_agent_id(claimed)
        if not self.tls:
            return claimed
        peer = self.caller(context)
        ident = peer.identity
        if ident.role != "agent":
            raise PermissionDenied(f"only agents may call this method, not {ident.role}s")
        if claimed and claimed != ident.name:
            raise PermissionDenied(f"this certificate is agent {ident.name!r}'s; the message names {claimed!r}")
        if self.check_records:
            self.check_current(peer)
        return ident.name

    def check_current(self, peer: PeerCertificate) -> AgentRecord:
        agent_id = peer.identity.name
        try:
            rec = self.state.get_agent(agent_id)
        except AgentNotFound:
            raise Unauthenticated(f"agent {agent_id!r} is not enrolled (or was deleted)") from None
        if peer.serial not in rec.cert_serials:
            raise Unauthenticated(f"this certificate of agent {agent_id!r} was revoked or replaced")
        if rec.disabled:
            raise AgentDisabled(agent_id)
        return rec
