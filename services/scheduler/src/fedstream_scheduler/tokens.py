"""API tokens of one tenant: the bootstrap token, issuing tokens and authenticating bearers."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from fedstream.errors import InvalidArgument
from fedstream.state import StateStore, TokenRecord
from fedstream_scheduler.enrollment import secret_hash

ROLES = ("viewer", "operator", "admin")
BOOTSTRAP_TOKEN_ID = "bootstrap"
# Token secrets: a recognisable prefix and 32 random bytes (URL-safe base64).
TOKEN_PREFIX = "fst_"


@dataclass(frozen=True)
class Principal:
    """Who a bearer token speaks for: a tenant, with a role."""

    tenant: str
    role: str
    token_id: str
    name: str = ""

    def allows(self, role: str) -> bool:
        """Whether this principal's role is ``role`` or above it (viewer < operator < admin)."""
        return ROLES.index(self.role) >= ROLES.index(role)


class TokenService:
    """Issues and checks the tenant's API tokens; only their hashes are stored."""

    def __init__(self, state: StateStore, clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.clock = clock

    def ensure_bootstrap(self, secret: str) -> None:
        """Makes ``secret`` this tenant's bootstrap admin token (replacing an older one);
        raises InvalidArgument for a secret under 16 characters."""
        if len(secret) < 16:
            raise InvalidArgument("the bootstrap token must be at least 16 characters")
        digest = secret_hash(secret)
        existing = {t.token_id: t for t in self.state.list_tokens()}.get(BOOTSTRAP_TOKEN_ID)
        if existing is not None and existing.sha256 == digest:
            return
        if existing is not None:
            self.state.delete_token(BOOTSTRAP_TOKEN_ID)
        self.state.create_token(TokenRecord(BOOTSTRAP_TOKEN_ID, digest, "admin", "bootstrap", self.clock()))

    def authenticate(self, secret: str) -> Principal | None:
        """The principal of a token's secret; None for an unknown or revoked one."""
        rec = self.state.find_token(secret_hash(secret))
        return Principal(self.state.tenant, rec.role, rec.token_id, rec.name) if rec is not None else None

    def create(self, role: str, name: str) -> tuple[TokenRecord, str]:
        """A new token and its secret (shown once); raises InvalidArgument for an unknown role."""
        if role not in ROLES:
            raise InvalidArgument(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        rec = TokenRecord(f"tok-{uuid.uuid4().hex[:12]}", secret_hash(secret), role, name, self.clock())
        self.state.create_token(rec)
        return rec, secret
