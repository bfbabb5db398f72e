"""The documents role of the state store: federations, API tokens, enrollment tokens, releases
and site-requested runs (with their per-site quota)."""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from collections.abc import Callable
from typing import Any, Protocol

from fedstream.errors import AlreadyExists, FederationNotFound, NotFound, ReleaseNotFound, RunRequestNotFound
from fedstream.state.records import (
    EnrollmentTokenRecord,
    FederationRecord,
    PrivacyLedgerRecord,
    ReleaseRecord,
    RunRequestRecord,
    TokenRecord,
    from_doc,
)


class QuotaFull(Exception):
    """A quota with no slot left; ``frees_unix`` is when its oldest slot frees."""

    def __init__(self, frees_unix: float) -> None:
        super().__init__(f"no slot left until {frees_unix}")
        self.frees_unix = frees_unix


class Documents(Protocol):
    """Small JSON records of one kind, by id. A backend implements the five ``_doc_*``
    primitives (each atomic); the typed methods are built on them here, once."""

    @abstractmethod
    def _doc_create(self, kind: str, doc_id: str, doc: dict[str, Any]) -> bool:
        """Stores the document unless one of that id exists; False when it does."""

    @abstractmethod
    def _doc_get(self, kind: str, doc_id: str) -> dict[str, Any] | None:
        """The document, or None when there is none."""

    @abstractmethod
    def _doc_list(self, kind: str) -> list[dict[str, Any]]:
        """Every document of the kind, by id."""

    @abstractmethod
    def _doc_update(
        self, kind: str, doc_id: str, mutate: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> dict[str, Any] | None:
        """Atomically replaces the document by ``mutate(current)``; None when there is none."""

    @abstractmethod
    def _doc_delete(self, kind: str, doc_id: str) -> bool:
        """Removes the document; False when there was none (so of two callers, one gets True)."""

    # Federations.
    def create_federation(self, rec: FederationRecord) -> None:
        """Raises AlreadyExists when the id is taken."""
        if not self._doc_create("federation", rec.federation_id, dataclasses.asdict(rec)):
            raise AlreadyExists(f"federation {rec.federation_id!r} already exists")

    def get_federation(self, federation_id: str) -> FederationRecord:
        """Raises FederationNotFound."""
        doc = self._doc_get("federation", federation_id)
        if doc is None:
            raise FederationNotFound(f"federation {federation_id!r} not found")
        return from_doc(FederationRecord, doc)

    def list_federations(self) -> list[FederationRecord]:
        """All federations, by id."""
        return [from_doc(FederationRecord, d) for d in self._doc_list("federation")]

    def update_federation(self, federation_id: str, **changes: Any) -> FederationRecord:
        """Sets fields of a federation atomically and returns it; raises FederationNotFound."""
        doc = self._doc_update(
            "federation", federation_id,
            lambda d: dataclasses.asdict(dataclasses.replace(from_doc(FederationRecord, d), **changes)),
        )
        if doc is None:
            raise FederationNotFound(f"federation {federation_id!r} not found")
        return from_doc(FederationRecord, doc)

    def delete_federation(self, federation_id: str) -> None:
        """Raises FederationNotFound."""
        if not self._doc_delete("federation", federation_id):
            raise FederationNotFound(f"federation {federation_id!r} not found")

    # Privacy ledgers, by federation (or "run:<run id>" for a run without one). Kept when the
    # federation is deleted: a federation made again under that id spends on the same sites.
    def get_privacy_ledger(self, ledger_id: str) -> PrivacyLedgerRecord:
        """The ledger; an empty one when nothing was charged to it."""
        doc = self._doc_get("privacy_ledger", ledger_id)
        return from_doc(PrivacyLedgerRecord, doc) if doc is not None else PrivacyLedgerRecord(ledger_id)

    def update_privacy_ledger(
        self, ledger_id: str, mutate: Callable[[PrivacyLedgerRecord], PrivacyLedgerRecord]
    ) -> PrivacyLedgerRecord:
        """Replaces the ledger (made empty first when there is none) by ``mutate(current)``
        atomically: of two replicas charging at once, the second sees the first's charge; an
        exception from ``mutate`` changes nothing and propagates."""
        self._doc_create("privacy_ledger", ledger_id, dataclasses.asdict(PrivacyLedgerRecord(ledger_id)))
        doc = self._doc_update(
            "privacy_ledger", ledger_id, lambda d: dataclasses.asdict(mutate(from_doc(PrivacyLedgerRecord, d)))
        )
        assert doc is not None  # made above; ledgers are never deleted
        return from_doc(PrivacyLedgerRecord, doc)

    # API tokens, by their id (the secret's hash is a field: lookups by hash scan the tenant's
    # few tokens).
    def create_token(self, rec: TokenRecord) -> None:
        """Raises AlreadyExists when the id is taken."""
        if not self._doc_create("token", rec.token_id, dataclasses.asdict(rec)):
            raise AlreadyExists(f"token {rec.token_id!r} already exists")

    def find_token(self, sha256: str) -> TokenRecord | None:
        """The token whose secret hashes to ``sha256``, or None."""
        for d in self._doc_list("token"):
            if d["sha256"] == sha256:
                return from_doc(TokenRecord, d)
        return None

    def list_tokens(self) -> list[TokenRecord]:
        """All API tokens, by id."""
        return [from_doc(TokenRecord, d) for d in self._doc_list("token")]

    def delete_token(self, token_id: str) -> None:
        """Raises NotFound."""
        if not self._doc_delete("token", token_id):
            raise NotFound(f"token {token_id!r} not found")

    # Enrollment tokens, by id; using one deletes it, so it enrolls at most once.
    def create_enrollment_token(self, rec: EnrollmentTokenRecord) -> None:
        """Raises AlreadyExists when the id is taken."""
        if not self._doc_create("enrollment", rec.token_id, dataclasses.asdict(rec)):
            raise AlreadyExists(f"enrollment token {rec.token_id!r} already exists")

    def list_enrollment_tokens(self) -> list[EnrollmentTokenRecord]:
        """The enrollment tokens not yet used, by id."""
        return [from_doc(EnrollmentTokenRecord, d) for d in self._doc_list("enrollment")]

    def delete_enrollment_token(self, token_id: str) -> None:
        """Raises NotFound."""
        if not self._doc_delete("enrollment", token_id):
            raise NotFound(f"enrollment token {token_id!r} not found")

    def consume_enrollment_token(self, sha256: str) -> EnrollmentTokenRecord | None:
        """Takes the token whose secret hashes to ``sha256`` away and returns it; None when
        there is none (never made, already used, or deleted)."""
        for d in self._doc_list("enrollment"):
            if d["sha256"] == sha256:
                # Deleting is atomic: of two callers with the same secret, one gets True.
                return from_doc(EnrollmentTokenRecord, d) if self._doc_delete("enrollment", d["token_id"]) else None
        return None

    # Releases, by id; every change goes through ``update_release`` (atomic), so that of two
    # approvals at once both land.
    def create_release(self, rec: ReleaseRecord) -> None:
        """Raises AlreadyExists when the id is taken."""
        if not self._doc_create("release", rec.release_id, dataclasses.asdict(rec)):
            raise AlreadyExists(f"release {rec.release_id!r} already exists")

    def get_release(self, release_id: str) -> ReleaseRecord:
        """Raises ReleaseNotFound."""
        doc = self._doc_get("release", release_id)
        if doc is None:
            raise ReleaseNotFound(f"release {release_id!r} not found")
        return from_doc(ReleaseRecord, doc)

    def list_releases(self, federation_id: str = "") -> list[ReleaseRecord]:
        """The releases (of one federation when given), oldest proposal first."""
        recs = [from_doc(ReleaseRecord, d) for d in self._doc_list("release")]
        recs = [r for r in recs if not federation_id or r.federation_id == federation_id]
        return sorted(recs, key=lambda r: (r.proposed_unix, r.release_id))

    def update_release(self, release_id: str, mutate: Callable[[ReleaseRecord], ReleaseRecord]) -> ReleaseRecord:
        """Replaces the release by ``mutate(current)`` atomically (an exception from ``mutate``
        changes nothing and propagates); raises ReleaseNotFound."""
        doc = self._doc_update("release", release_id, lambda d: dataclasses.asdict(mutate(from_doc(ReleaseRecord, d))))
        if doc is None:
            raise ReleaseNotFound(f"release {release_id!r} not found")
        return from_doc(ReleaseRecord, doc)

    # Site-requested runs, by id.
    def create_run_request(self, rec: RunRequestRecord) -> None:
        """Raises AlreadyExists when the id is taken."""
        if not self._doc_create("run_request", rec.request_id, dataclasses.asdict(rec)):
            raise AlreadyExists(f"run request {rec.request_id!r} already exists")

    def get_run_request(self, request_id: str) -> RunRequestRecord:
        """Raises RunRequestNotFound."""
        doc = self._doc_get("run_request", request_id)
        if doc is None:
            raise RunRequestNotFound(f"run request {request_id!r} not found")
        return from_doc(RunRequestRecord, doc)

    def list_run_requests(self, federation_id: str = "") -> list[RunRequestRecord]:
        """The run requests (of one federation when given), oldest first."""
        recs = [from_doc(RunRequestRecord, d) for d in self._doc_list("run_request")]
        recs = [r for r in recs if not federation_id or r.federation_id == federation_id]
        return sorted(recs, key=lambda r: (r.requested_unix, r.request_id))

    def update_run_request(
        self, request_id: str, mutate: Callable[[RunRequestRecord], RunRequestRecord]
    ) -> RunRequestRecord:
        """Replaces the request by ``mutate(current)`` atomically; raises RunRequestNotFound."""
        doc = self._doc_update(
            "run_request", request_id, lambda d: dataclasses.asdict(mutate(from_doc(RunRequestRecord, d)))
        )
        if doc is None:
            raise RunRequestNotFound(f"run request {request_id!r} not found")
        return from_doc(RunRequestRecord, doc)

    def take_quota_slot(self, quota: str, now: float, limit: int, window_s: float) -> None:
        """Takes one of ``limit`` slots of ``quota`` within the ``window_s`` seconds up to
        ``now``, atomically (of concurrent callers, at most ``limit`` per window succeed);
        raises QuotaFull, naming when the oldest slot frees, when none is left."""
        self._doc_create("quota", quota, {"slots": []})

        def take(d: dict[str, Any]) -> dict[str, Any]:
            slots = sorted(t for t in d.get("slots", []) if t > now - window_s)
            if len(slots) >= limit:
                raise QuotaFull(slots[len(slots) - limit] + window_s if limit > 0 else now + window_s)
            return {"slots": [*slots, now]}

        self._doc_update("quota", quota, take)
