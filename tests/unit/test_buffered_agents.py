"""The scheduler's view of agents in buffered asynchronous runs: a buffer that committed
without an agent's update never tells that agent its work is over (the update still counts,
staler, in a later buffer), where a synchronous round that closed does; and every enabled
agent of the task may upload into a buffer, connected when it opened or not."""

from __future__ import annotations

from fedstream.rounds import RoundKind, RoundState, UpdateReport
from fedstream.state import AgentRecord, MemoryStateStore, RoundRecord, RunRecord
from fedstream_scheduler.agents import AgentRegistry
from fedstream_scheduler.settings import SchedulerSettings


def registry_with_a_committed_round(spec: dict[str, object]) -> AgentRegistry:
    state = MemoryStateStore("t")
    state.create_run(RunRecord("r", {"task": "digits", **spec}))
    state.create_round(RoundRecord("r", 1, RoundKind.TRAIN, RoundState.OPEN, ["fast", "slow"], "r/000000"))
    state.transition_round("r", 1, RoundState.TRAINING)
    reports = [UpdateReport("fast", 10, 10.0, {})]
    state.transition_round("r", 1, RoundState.AGGREGATING, reports=reports)
    state.transition_round("r", 1, RoundState.COMMITTED, reports=reports, version="r/000001")
    return AgentRegistry(state, SchedulerSettings())


def test_a_synchronous_round_closed_without_an_agent_tells_it_its_work_is_over() -> None:
    agents = registry_with_a_committed_round({})
    why, closed = agents.round_over("slow", "r", 1)
    assert closed and "closed with its 1 update" in why


def test_a_buffer_committed_without_an_agent_lets_its_work_go_on() -> None:
    agents = registry_with_a_committed_round({"asynchronous": {"bufferSize": 1, "concurrency": 2}})
    assert agents.round_over("slow", "r", 1) == ("", False)


def test_every_enabled_agent_of_the_task_is_eligible_connected_or_not() -> None:
    state = MemoryStateStore("t")
    for agent in (AgentRecord("any"), AgentRecord("digits", tasks=["digits"]), AgentRecord("other", tasks=["reid"]),
                  AgentRecord("off", tasks=["digits"], disabled=True)):
        state.create_agent(agent)
    agents = AgentRegistry(state, SchedulerSettings())
    assert agents.live_agents("digits") == []  # none has a stream open
    assert sorted(agents.eligible_agents("digits")) == ["any", "digits"]
