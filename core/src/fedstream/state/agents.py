"""The agent registry role of the state store: agents' records and their heartbeats."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import Protocol

from fedstream.state.records import AgentRecord


class AgentRegistry(Protocol):
    """Registered agents of one tenant, by id. Every method is atomic on its own and returns
    copies: changing a returned record changes nothing stored."""

    @abstractmethod
    def put_agent(self, agent: AgentRecord) -> None:
        """Creates or replaces an agent's record."""

    @abstractmethod
    def create_agent(self, agent: AgentRecord) -> None:
        """Creates an agent's record only if none exists under its id (atomically: of two
        concurrent creations one wins); raises AlreadyExists otherwise."""

    @abstractmethod
    def get_agent(self, agent_id: str) -> AgentRecord:
        """Raises AgentNotFound."""

    @abstractmethod
    def heartbeat(self, agent_id: str, now_unix: float) -> None:
        """Records a heartbeat; raises AgentNotFound for an agent never registered."""

    @abstractmethod
    def list_agents(self) -> list[AgentRecord]:
        """All registered agents, ordered by id."""

    @abstractmethod
    def update_agent(self, agent_id: str, mutate: Callable[[AgentRecord], AgentRecord]) -> AgentRecord:
        """Atomically replaces an agent's record by ``mutate(current)`` (retried if another
        writer got there first, so ``mutate`` must be pure; what it raises propagates and
        changes nothing). The last heartbeat is kept. Raises AgentNotFound."""

    @abstractmethod
    def delete_agent(self, agent_id: str) -> None:
        """Removes an agent's record; raises AgentNotFound."""
