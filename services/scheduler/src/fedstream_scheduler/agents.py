"""The agent registry of one scheduler replica: registration, heartbeats, agents' assignment
streams and the assignments pending on them, disabling and deleting agents."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import NoReturn

from fedstream.errors import (
    AgentDisabled,
    AgentNotFound,
    AlreadyExists,
    FedstreamError,
    InvalidArgument,
    ResourceExhausted,
    RoundNotFound,
    RunNotFound,
    Unauthenticated,
)
from fedstream.ids import check_agent_id
from fedstream.metrics import LIMIT_HITS
from fedstream.rounds import Assignment, RoundState
from fedstream.state import AgentRecord, StateStore
from fedstream_scheduler import metrics as m
from fedstream_scheduler.settings import SchedulerSettings

log = logging.getLogger(__name__)

_CLOSE = object()
# A round of a run: the key of the assignments pending for it.
RoundKey = tuple[str, int]


class AgentRegistry:
    """Agents' records (in the state store) and their open assignment streams (here)."""

    def __init__(self, state: StateStore, settings: SchedulerSettings, clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.settings = settings
        self.clock = clock
        self._streams: dict[str, asyncio.Queue[object]] = {}
        # Each running round's assignment of every participant, sent again when one reconnects.
        self._pending: dict[RoundKey, dict[str, Assignment]] = {}

    def register(self, agent: AgentRecord) -> float:
        """Creates or refreshes an agent's record; returns the heartbeat interval."""
        check_agent_id(agent.agent_id)
        self._check_sizes(agent)
        now = self.clock()

        def refresh(current: AgentRecord) -> AgentRecord:
            # What the agent reports changes; what operators and enrollment decided does not.
            return dataclasses.replace(current, labels=agent.labels, capabilities=agent.capabilities,
                                       tasks=agent.tasks, last_heartbeat_unix=now)

        try:
            self.state.update_agent(agent.agent_id, refresh)
        except AgentNotFound:
            agent.registered_unix = agent.last_heartbeat_unix = now
            try:
                self.state.create_agent(agent)
            except AlreadyExists:  # created meanwhile (an enrollment): refresh that record instead
                self.state.update_agent(agent.agent_id, refresh)
        log.info("agent %s registered (%s)", agent.agent_id, agent.capabilities.get("device", "?"))
        return self.settings.heartbeat_interval_s

    def _check_sizes(self, agent: AgentRecord) -> None:
        """Raises InvalidArgument, naming the limit and the value, for labels, tasks or text
        capabilities beyond the scheduler's limits; counts the limit hit."""
        limits = self.settings.limits

        def refuse(limit: str, what: str, most: int) -> NoReturn:
            LIMIT_HITS.labels(self.state.tenant, "scheduler", limit).inc()
            raise InvalidArgument(f"agent {agent.agent_id!r} registers {what}: at most {most} allowed ({limit})")

        if len(agent.labels) > limits.max_labels:
            refuse("max_labels", f"{len(agent.labels)} labels", limits.max_labels)
        if len(agent.tasks) > limits.max_tasks:
            refuse("max_tasks", f"{len(agent.tasks)} tasks", limits.max_tasks)
        for text in (t for kv in agent.labels.items() for t in kv):
            if (n := len(text.encode())) > limits.max_label_bytes:
                refuse("max_label_bytes", f"a label key or value of {n} bytes", limits.max_label_bytes)
        for task in agent.tasks:
            if (n := len(task.encode())) > limits.max_task_name_bytes:
                refuse("max_task_name_bytes", f"a task name of {n} bytes", limits.max_task_name_bytes)
        for key, value in agent.capabilities.items():
            if isinstance(value, str) and (n := len(value.encode())) > limits.max_capability_bytes:
                refuse("max_capability_bytes", f"capability {key!r} of {n} bytes", limits.max_capability_bytes)

    def heartbeat(self, agent_id: str) -> None:
        """Raises AgentNotFound for an agent that never registered."""
        self.state.heartbeat(agent_id, self.clock())

    def round_over(self, agent_id: str, run_id: str, round_: int) -> tuple[str, bool]:
        """Whether the agent's work on the round is over, for its heartbeat: (why, closed).
        ("", False) while it goes on (or the agent does not take part, or there is no such
        round); closed when the round closed without the agent's update (it had the updates it
        needed), not closed when it was cancelled."""
        try:
            rnd = self.state.get_round(run_id, round_)
        except RoundNotFound:
            return "", False
        if agent_id not in rnd.participants:
            return "", False
        if rnd.state == RoundState.CANCELLED:
            return rnd.reason or f"round {round_} of run {run_id!r} was cancelled", False
        if rnd.state in (RoundState.AGGREGATING, RoundState.COMMITTED) and all(
            r.agent_id != agent_id for r in rnd.reports
        ) and not self._buffered(run_id):
            n = len(rnd.reports)
            return f"round {round_} of run {run_id!r} closed with its {n} update{'s' * (n != 1)}", True
        return "", False

    def _buffered(self, run_id: str) -> bool:
        """Whether the run is buffered asynchronous: a buffer that committed without an agent's
        update never makes that work late (it counts, staler, in the buffer open when it comes)."""
        try:
            return bool(self.state.get_run(run_id).spec.get("asynchronous"))
        except RunNotFound:
            return False

    async def assignments(
        self, agent_id: str, still_allowed: Callable[[], object] | None = None
    ) -> AsyncIterator[Assignment]:
        """The agent's assignment stream; a newer stream of the same agent replaces it.

        ``still_allowed`` is called every heartbeat interval while the stream is idle and ends
        it by raising (a revoked certificate, an agent deleted or disabled through another
        replica). Raises PermissionDenied for a disabled agent, ResourceExhausted when the
        agent fell behind reading its stream."""
        agent = self.state.get_agent(agent_id)
        if agent.disabled:
            raise AgentDisabled(agent_id)
        queue: asyncio.Queue[object] = asyncio.Queue(self.settings.limits.assignment_queue)
        old = self._streams.get(agent_id)
        if old is not None:
            self._offer(old, _CLOSE)
        self._streams[agent_id] = queue
        m.AGENTS_CONNECTED.labels(self.state.tenant).set(len(self._streams))
        for assignments in list(self._pending.values()):
            if agent_id in assignments:
                self._offer(queue, assignments[agent_id])
        log.info("agent %s connected", agent_id)
        try:
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), self.settings.heartbeat_interval_s)
                except TimeoutError:
                    if still_allowed is not None:
                        still_allowed()
                    continue
                if item is _CLOSE:
                    return
                if isinstance(item, FedstreamError):
                    raise item
                assert isinstance(item, Assignment)
                yield item
        finally:
            if self._streams.get(agent_id) is queue:
                del self._streams[agent_id]
            m.AGENTS_CONNECTED.labels(self.state.tenant).set(len(self._streams))
            log.info("agent %s disconnected", agent_id)

    def _offer(self, queue: asyncio.Queue[object], item: object) -> None:
        """Puts an item on an agent's stream queue. A queue that is full (an agent not reading
        its stream) is emptied and its stream closed: the agent reconnects and is sent its
        pending assignments again, so nothing is lost and memory stays bounded."""
        try:
            queue.put_nowait(item)
        except asyncio.QueueFull:
            LIMIT_HITS.labels(self.state.tenant, "scheduler", "assignment_queue").inc()
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(ResourceExhausted("this agent's assignment stream fell behind; reconnect"))

    def publish(self, key: RoundKey, assignments: dict[str, Assignment]) -> None:
        """Sends a round's assignments to the participants connected now, and to any that
        connects until ``withdraw``. Agents do each (run, round) once, so a repeat is harmless."""
        self._pending[key] = assignments
        for agent_id, assignment in assignments.items():
            queue = self._streams.get(agent_id)
            if queue is not None:
                self._offer(queue, assignment)

    def withdraw(self, key: RoundKey) -> None:
        """Stops sending a round's assignments to agents that connect."""
        self._pending.pop(key, None)

    def is_connected(self, agent_id: str) -> bool:
        """Whether the agent has its assignment stream open on this replica."""
        return agent_id in self._streams

    def status(self, agent: AgentRecord) -> str:
        """``disabled``, ``alive`` (a heartbeat within the TTL) or ``stale``."""
        if agent.disabled:
            return "disabled"
        fresh = self.clock() - agent.last_heartbeat_unix <= self.settings.heartbeat_ttl_s
        return "alive" if fresh else "stale"

    def list_agents(self, status: str = "") -> list[AgentRecord]:
        """Every agent of the tenant, or those in ``status``."""
        return [a for a in self.state.list_agents() if not status or self.status(a) == status]

    def set_disabled(self, agent_id: str, disabled: bool) -> AgentRecord:
        """Disables (or enables again) an agent: a disabled one is never selected, its open
        stream is closed and it cannot open another. Raises AgentNotFound."""
        agent = self.state.update_agent(agent_id, lambda a: dataclasses.replace(a, disabled=disabled))
        log.info("agent %s %s", agent_id, "disabled" if disabled else "enabled")
        stream = self._streams.get(agent_id)
        if disabled and stream is not None:
            self._offer(stream, AgentDisabled(agent_id))
        return agent

    def delete(self, agent_id: str) -> None:
        """Forgets an agent: its certificates are refused from now on and its open stream is
        closed; it needs a new enrollment to come back. Raises AgentNotFound."""
        self.state.delete_agent(agent_id)
        stream = self._streams.get(agent_id)
        if stream is not None:
            self._offer(stream, Unauthenticated(f"agent {agent_id!r} was deleted"))
        log.info("agent %s deleted", agent_id)

    def _live(self) -> list[AgentRecord]:
        """Agents with a fresh heartbeat, an open stream, not disabled."""
        now = self.clock()
        ttl = self.settings.heartbeat_ttl_s
        return [
            a for a in self.state.list_agents()
            if a.agent_id in self._streams and not a.disabled and now - a.last_heartbeat_unix <= ttl
        ]

    def live_agents(self, task: str) -> list[str]:
        """Agents with a fresh heartbeat, an open stream, not disabled, offering the task."""
        return [a.agent_id for a in self._live() if not a.tasks or task in a.tasks]

    def eligible_agents(self, task: str) -> list[str]:
        """Agents that may take part in the task's runs, connected or not: enabled, offering
        the task (an agent that comes back later takes part without a new selection)."""
        return [a.agent_id for a in self.state.list_agents() if not a.disabled and (not a.tasks or task in a.tasks)]

    def live_offers(self) -> dict[str, list[str]]:
        """The tasks live agents offer, each with the agents offering it (an agent that names
        no task takes any: it is listed under ``*``)."""
        offers: dict[str, list[str]] = {}
        for a in self._live():
            for task in a.tasks or ["*"]:
                offers.setdefault(task, []).append(a.agent_id)
        return offers

    def close_streams(self) -> None:
        """Ends every open stream (shutting down)."""
        for queue in self._streams.values():
            self._offer(queue, _CLOSE)
