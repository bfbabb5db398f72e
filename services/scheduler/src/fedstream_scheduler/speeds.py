"""Each agent's measured speed per task, for speed-aware selection: seconds from a training
round's start to the agent's counted update, a moving average kept in the agent's record in
the state store (``AgentRecord.speeds``), so it survives restarts and is shared by replicas.

An agent that had not reported when its round closed (a straggler, or an over-selected agent
whose work was not needed) is only known to be slower than the round took: it is observed at
``MISSED_FACTOR`` times the round's elapsed time, or its estimate when that is more."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable

from fedstream.errors import AgentNotFound, FedstreamError
from fedstream.state import AgentRecord, StateStore

log = logging.getLogger(__name__)

# Weight of a new observation in the moving average.
ALPHA = 0.5
# What an agent that missed its round is observed at, in multiples of the round's elapsed time.
MISSED_FACTOR = 2.0


def blend(old: float | None, sample: float, alpha: float = ALPHA) -> float:
    """The moving average after ``sample``: the sample itself when there was none."""
    return sample if old is None else (1.0 - alpha) * old + alpha * sample


def missed_sample(old: float | None, elapsed: float) -> float:
    """What an agent that had not reported after ``elapsed`` seconds is observed at."""
    return max(MISSED_FACTOR * elapsed, old or 0.0)


class Speeds:
    """Reads and records agents' speeds in ``state``; recording never raises (a lost
    observation only makes selection less informed)."""

    def __init__(self, state: StateStore) -> None:
        self.state = state

    def of(self, task: str) -> dict[str, float]:
        """Agent id -> estimated seconds per training round of ``task``, for agents measured."""
        return {a.agent_id: a.speeds[task] for a in self.state.list_agents() if task in a.speeds}

    def reported(self, task: str, agents: Iterable[str], seconds: float) -> None:
        """Agents whose update counted ``seconds`` after their round started."""
        for agent in agents:
            self._observe(agent, task, lambda old: seconds)

    def missed(self, task: str, agents: Iterable[str], elapsed: float) -> None:
        """Agents that had not reported when their round closed ``elapsed`` seconds in."""
        for agent in agents:
            self._observe(agent, task, lambda old: missed_sample(old, elapsed))

    def _observe(self, agent: str, task: str, sample_of: Callable[[float | None], float]) -> None:
        def mutate(rec: AgentRecord) -> AgentRecord:
            old = rec.speeds.get(task)
            return dataclasses.replace(rec, speeds={**rec.speeds, task: blend(old, max(0.0, sample_of(old)))})

        try:
            self.state.update_agent(agent, mutate)
        except AgentNotFound:
            pass  # deleted meanwhile
        except FedstreamError as e:
            log.warning("cannot record the speed of agent %s: %s", agent, e.public)
