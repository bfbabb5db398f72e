"""The health role every backend (state store or model store) plays: which tenant it serves,
where its server is, and whether that server answers."""

from __future__ import annotations

from abc import abstractmethod
from typing import Protocol


class Health(Protocol):
    """A backend's identity and reachability, for readiness checks and log lines."""

    tenant: str

    @abstractmethod
    def endpoint(self) -> str:
        """Where the backend's data lives, in words fit for a log line (never a password):
        e.g. "redis at host:6379"."""

    @abstractmethod
    def ping(self) -> None:
        """Returns when the backend's server answers, at once (no retries); raises Unavailable
        naming ``endpoint()`` when it does not. In-process backends always answer."""
