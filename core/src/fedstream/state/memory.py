"""The in-process state store: the embedded default for one machine."""

from __future__ import annotations

import collections
import copy
import dataclasses
import threading
from collections.abc import Callable
from typing import Any

from fedstream.errors import (
    AgentNotFound,
    AlreadyExists,
    InvalidTransition,
    RoundNotFound,
    RoundNotOpen,
    RunNotFound,
)
from fedstream.rounds import RoundState, UpdateReport
from fedstream.state.audit import DEFAULT_AUDIT_KEEP
from fedstream.state.base import StateStore
from fedstream.state.records import (
    AgentRecord,
    AggregationRecord,
    AuditEntry,
    RoundRecord,
    RunRecord,
    round_state,
)


class MemoryStateStore(StateStore):
    """All state in this process's memory, behind one lock. Returns copies, never aliases."""

    def __init__(self, tenant: str = "default", audit_keep: int = DEFAULT_AUDIT_KEEP) -> None:
        self.tenant = tenant
        self.audit_keep = audit_keep
        self._audit: collections.deque[AuditEntry] = collections.deque(maxlen=audit_keep)
        self._audit_seq = 0
        self._lock = threading.Lock()
        self._agents: dict[str, AgentRecord] = {}
        self._runs: dict[str, RunRecord] = {}
        self._rounds: dict[tuple[str, int], RoundRecord] = {}
        self._marks: dict[str, set[str]] = {}
        self._leases: dict[str, tuple[str, float]] = {}
        self._aggregations: dict[tuple[str, str, int], AggregationRecord] = {}
        self._docs: dict[str, dict[str, dict[str, Any]]] = {}

    def endpoint(self) -> str:
        return "in-process state store"

    def ping(self) -> None:
        """Always answers: the state is in this process."""

    def put_agent(self, agent: AgentRecord) -> None:
        with self._lock:
            self._agents[agent.agent_id] = copy.deepcopy(agent)

    def create_agent(self, agent: AgentRecord) -> None:
        with self._lock:
            if agent.agent_id in self._agents:
                raise AlreadyExists(f"agent {agent.agent_id!r} is already registered")
            self._agents[agent.agent_id] = copy.deepcopy(agent)

    def get_agent(self, agent_id: str) -> AgentRecord:
        with self._lock:
            try:
                return copy.deepcopy(self._agents[agent_id])
            except KeyError:
                raise AgentNotFound(f"agent {agent_id!r} is not registered") from None

    def heartbeat(self, agent_id: str, now_unix: float) -> None:
        with self._lock:
            agent = self._agents.get(agent_id)
            if agent is None:
                raise AgentNotFound(f"agent {agent_id!r} is not registered")
            agent.last_heartbeat_unix = now_unix

    def list_agents(self) -> list[AgentRecord]:
        with self._lock:
            return [copy.deepcopy(self._agents[k]) for k in sorted(self._agents)]

    def update_agent(self, agent_id: str, mutate: Callable[[AgentRecord], AgentRecord]) -> AgentRecord:
        with self._lock:
            current = self._agents.get(agent_id)
            if current is None:
                raise AgentNotFound(f"agent {agent_id!r} is not registered")
            new = mutate(copy.deepcopy(current))
            self._agents[agent_id] = copy.deepcopy(new)
            return new

    def delete_agent(self, agent_id: str) -> None:
        with self._lock:
            if self._agents.pop(agent_id, None) is None:
                raise AgentNotFound(f"agent {agent_id!r} is not registered")

    def create_run(self, run: RunRecord) -> None:
        with self._lock:
            if run.run_id in self._runs:
                raise AlreadyExists(f"run {run.run_id!r} already exists")
            self._runs[run.run_id] = copy.deepcopy(run)

    def get_run(self, run_id: str) -> RunRecord:
        with self._lock:
            try:
                return copy.deepcopy(self._runs[run_id])
            except KeyError:
                raise RunNotFound(f"run {run_id!r} not found") from None

    def update_run(self, run_id: str, **changes: Any) -> RunRecord:
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                raise RunNotFound(f"run {run_id!r} not found")
            updated = dataclasses.replace(run, **copy.deepcopy(changes))
            self._runs[run_id] = updated
            return copy.deepcopy(updated)

    def list_runs(self) -> list[RunRecord]:
        with self._lock:
            runs = sorted(self._runs.values(), key=lambda r: (r.created_unix, r.run_id))
            return [copy.deepcopy(r) for r in runs]

    def create_round(self, rnd: RoundRecord) -> None:
        with self._lock:
            key = (rnd.run_id, rnd.round)
            if key in self._rounds:
                raise AlreadyExists(f"round {rnd.round} of run {rnd.run_id!r} already exists")
            self._rounds[key] = copy.deepcopy(rnd)

    def get_round(self, run_id: str, round_: int) -> RoundRecord:
        with self._lock:
            try:
                return copy.deepcopy(self._rounds[(run_id, round_)])
            except KeyError:
                raise RoundNotFound(f"round {round_} of run {run_id!r} not found") from None

    def list_rounds(self, run_id: str) -> list[RoundRecord]:
        with self._lock:
            rounds = [r for (rid, _), r in self._rounds.items() if rid == run_id]
            return [copy.deepcopy(r) for r in sorted(rounds, key=lambda r: r.round)]

    def transition_round(self, run_id: str, round_: int, to: RoundState, **changes: Any) -> RoundRecord:
        to = round_state(to)
        with self._lock:
            rnd = self._rounds.get((run_id, round_))
            if rnd is None:
                raise RoundNotFound(f"round {round_} of run {run_id!r} not found")
            if not rnd.state.can_move_to(to):
                raise InvalidTransition(
                    f"round {round_} of run {run_id!r} cannot go from {rnd.state} to {to}"
                )
            updated = dataclasses.replace(rnd, state=to, **copy.deepcopy(changes))
            self._rounds[(run_id, round_)] = updated
            return copy.deepcopy(updated)

    def update_round(self, run_id: str, round_: int, **changes: Any) -> RoundRecord:
        if "state" in changes:
            raise InvalidTransition("update_round does not change state; use transition_round")
        with self._lock:
            rnd = self._rounds.get((run_id, round_))
            if rnd is None:
                raise RoundNotFound(f"round {round_} of run {run_id!r} not found")
            updated = dataclasses.replace(rnd, **copy.deepcopy(changes))
            self._rounds[(run_id, round_)] = updated
            return copy.deepcopy(updated)

    def create_aggregation(self, rec: AggregationRecord) -> None:
        with self._lock:
            key = (rec.journal, rec.run_id, rec.round)
            if key in self._aggregations:
                raise AlreadyExists(f"round {rec.round} of run {rec.run_id!r} has a journal")
            self._aggregations[key] = copy.deepcopy(rec)

    def get_aggregation(self, run_id: str, round_: int, journal: str = "") -> AggregationRecord:
        with self._lock:
            rec = self._aggregations.get((journal, run_id, round_))
            if rec is None:
                raise RoundNotFound(f"round {round_} of run {run_id!r} has no journal")
            return copy.deepcopy(rec)

    def list_aggregations(self, journal: str = "") -> list[AggregationRecord]:
        with self._lock:
            return [
                copy.deepcopy(r)
                for key, r in sorted(self._aggregations.items())
                if key[0] == journal and not r.state.terminal
            ]

    def count_update(
        self, run_id: str, round_: int, agent_id: str, report: UpdateReport, journal: str = ""
    ) -> bool:
        with self._lock:
            rec = self._aggregations.get((journal, run_id, round_))
            if rec is None:
                raise RoundNotFound(f"round {round_} of run {run_id!r} has no journal")
            if agent_id in rec.reports:
                return False
            if rec.state is not RoundState.TRAINING:
                raise RoundNotOpen(f"round {round_} of run {run_id!r} is {rec.state}, not accepting updates")
            rec.reports[agent_id] = copy.deepcopy(report)
            return True

    def set_aggregation_state(
        self, run_id: str, round_: int, state: RoundState, journal: str = "", **changes: Any
    ) -> AggregationRecord:
        state = round_state(state)
        with self._lock:
            rec = self._aggregations.get((journal, run_id, round_))
            if rec is None:
                raise RoundNotFound(f"round {round_} of run {run_id!r} has no journal")
            if not rec.state.can_move_to(state):
                raise InvalidTransition(f"journal of round {round_} cannot go from {rec.state} to {state}")
            updated = dataclasses.replace(rec, state=state, **copy.deepcopy(changes))
            self._aggregations[(journal, run_id, round_)] = updated
            return copy.deepcopy(updated)

    def _doc_create(self, kind: str, doc_id: str, doc: dict[str, Any]) -> bool:
        with self._lock:
            docs = self._docs.setdefault(kind, {})
            if doc_id in docs:
                return False
            docs[doc_id] = copy.deepcopy(doc)
            return True

    def _doc_get(self, kind: str, doc_id: str) -> dict[str, Any] | None:
        with self._lock:
            return copy.deepcopy(self._docs.get(kind, {}).get(doc_id))

    def _doc_list(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [copy.deepcopy(d) for _, d in sorted(self._docs.get(kind, {}).items())]

    def _doc_update(
        self, kind: str, doc_id: str, mutate: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> dict[str, Any] | None:
        with self._lock:
            docs = self._docs.get(kind, {})
            if doc_id not in docs:
                return None
            docs[doc_id] = mutate(copy.deepcopy(docs[doc_id]))
            return copy.deepcopy(docs[doc_id])

    def _doc_delete(self, kind: str, doc_id: str) -> bool:
        with self._lock:
            return self._docs.get(kind, {}).pop(doc_id, None) is not None

    def mark_once(self, scope: str, key: str) -> bool:
        with self._lock:
            keys = self._marks.setdefault(scope, set())
            if key in keys:
                return False
            keys.add(key)
            return True

    def is_marked(self, scope: str, key: str) -> bool:
        with self._lock:
            return key in self._marks.get(scope, ())

    def acquire_lease(self, name: str, holder: str, ttl_s: float, now_unix: float) -> bool:
        with self._lock:
            current = self._leases.get(name)
            if current is not None and current[0] != holder and current[1] > now_unix:
                return False
            self._leases[name] = (holder, now_unix + ttl_s)
            return True

    def release_lease(self, name: str, holder: str) -> None:
        with self._lock:
            current = self._leases.get(name)
            if current is not None and current[0] == holder:
                del self._leases[name]

    def append_audit(self, entry: AuditEntry) -> int:
        with self._lock:
            self._audit_seq += 1
            self._audit.append(dataclasses.replace(copy.deepcopy(entry), seq=self._audit_seq))
            return self._audit_seq

    def list_audit(self, after_seq: int = 0, limit: int = 100, action: str = "", actor: str = "") -> list[AuditEntry]:
        with self._lock:
            found = [
                copy.deepcopy(e) for e in self._audit
                if e.seq > after_seq and (not action or e.action == action) and (not actor or e.actor == actor)
            ]
        return found[:limit]
