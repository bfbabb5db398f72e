"""The documents role of the state store: federations, API tokens and enrollment tokens."""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from collections.abc import Callable
from typing import Any, Protocol

from fedstream.errors import AlreadyExists, FederationNotFound, NotFound
from fedstream.state.records import EnrollmentTokenRecord, FederationRecord, TokenRecord


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
        return FederationRecord(**doc)

    def list_federations(self) -> list[FederationRecord]:
        """All federations, by id."""
        return [FederationRecord(**d) for d in self._doc_list("federation")]

    def update_federation(self, federation_id: str, **changes: Any) -> FederationRecord:
        """Sets fields of a federation atomically and returns it; raises FederationNotFound."""
        doc = self._doc_update(
            "federation", federation_id,
            lambda d: dataclasses.asdict(dataclasses.replace(FederationRecord(**d), **changes)),
        )
        if doc is None:
            raise FederationNotFound(f"federation {federation_id!r} not found")
        return FederationRecord(**doc)

    def delete_federation(self, federation_id: str) -> None:
        """Raises FederationNotFound."""
        if not self._doc_delete("federation", federation_id):
            raise FederationNotFound(f"federation {federation_id!r} not found")

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
                return TokenRecord(**d)
        return None

    def list_tokens(self) -> list[TokenRecord]:
        """All API tokens, by id."""
        return [TokenRecord(**d) for d in self._doc_list("token")]

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
        return [EnrollmentTokenRecord(**d) for d in self._doc_list("enrollment")]

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
                return EnrollmentTokenRecord(**d) if self._doc_delete("enrollment", d["token_id"]) else None
        return None
