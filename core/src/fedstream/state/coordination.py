"""The coordination role of the state store: leases between replicas, and idempotency marks."""

from __future__ import annotations

from abc import abstractmethod
from typing import Protocol


class Coordination(Protocol):
    """What replicas of one tenant's control plane agree on. Every method is atomic."""

    @abstractmethod
    def acquire_lease(self, name: str, holder: str, ttl_s: float, now_unix: float) -> bool:
        """Takes or renews a lease until ``now_unix + ttl_s``; False when another holder has it
        unexpired (expiry is judged by the caller's clock)."""

    @abstractmethod
    def release_lease(self, name: str, holder: str) -> None:
        """Gives the lease up; no effect unless ``holder`` has it."""

    @abstractmethod
    def mark_once(self, scope: str, key: str) -> bool:
        """Records ``key`` under ``scope``; True the first time, False ever after."""

    @abstractmethod
    def is_marked(self, scope: str, key: str) -> bool:
        """Whether ``mark_once(scope, key)`` has been called."""
