"""The SQLite state store: the embedded default, one file that survives restarts and that the
processes of one machine share (the scheduler and the aggregator name the same file).

Rows are keyed by tenant, one table per role (``fedstream.state.sqlite_db``); records are the
JSON that the Redis store keeps. Each method is one statement or one ``BEGIN IMMEDIATE``
transaction, so it is atomic against other threads and other processes alike: of two racing
writers exactly one wins. SQLite's own errors become Unavailable, naming the file.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from fedstream.errors import (
    AgentNotFound,
    AlreadyExists,
    InvalidTransition,
    RoundNotFound,
    RoundNotOpen,
    RunNotFound,
    Unavailable,
)
from fedstream.metrics import STATE_OPERATION_ERRORS, STATE_OPERATION_SECONDS
from fedstream.rounds import RoundState, UpdateReport
from fedstream.state.audit import DEFAULT_AUDIT_KEEP
from fedstream.state.base import StateStore
from fedstream.state.records import (
    AgentRecord,
    AggregationRecord,
    AuditEntry,
    RoundRecord,
    RunRecord,
    from_doc,
    round_state,
)
from fedstream.state.sqlite_db import Database, Synchronous

F = TypeVar("F", bound=Callable[..., Any])



def _measured(fn: F) -> F:
    """SQLite errors become Unavailable; every call's latency and failures are measured."""
    operation = fn.__name__

    @functools.wraps(fn)
    def wrapper(self: SQLiteStateStore, *args: Any, **kwargs: Any) -> Any:
        labels = (self.tenant, "sqlite", operation)
        start = time.perf_counter()
        try:
            return fn(self, *args, **kwargs)
        except sqlite3.Error as e:
            STATE_OPERATION_ERRORS.labels(*labels).inc()
            raise Unavailable("state store unavailable", detail=f"{self.endpoint()}: {e}") from e
        finally:
            STATE_OPERATION_SECONDS.labels(*labels).observe(time.perf_counter() - start)

    return wrapper  # type: ignore[return-value]


def _agent_row(agent: AgentRecord) -> tuple[str, float]:
    """An agent's record without its heartbeat, and the heartbeat (a column of its own, so that
    a heartbeat is one small update)."""
    fields = dataclasses.asdict(agent)
    heartbeat = fields.pop("last_heartbeat_unix")
    return json.dumps(fields), float(heartbeat)


def _agent(record: str, heartbeat: float) -> AgentRecord:
    return from_doc(AgentRecord, json.loads(record), last_heartbeat_unix=heartbeat)


class SQLiteStateStore(StateStore):
    """The state of ``tenant`` in the SQLite file at ``path`` (created, with its directory,
    when missing). Raises StorageUnusable when the file cannot be used."""

    def __init__(
        self, path: Path | str, tenant: str = "default", *, busy_timeout_s: float = 30.0,
        synchronous: Synchronous = "normal", audit_keep: int = DEFAULT_AUDIT_KEEP,
    ) -> None:
        self.tenant = tenant
        self.audit_keep = audit_keep
        self.db = Database(Path(path), busy_timeout_s, synchronous)

    def close(self) -> None:
        """Closes the file; the store cannot be used after."""
        self.db.close()

    def endpoint(self) -> str:
        return f"sqlite file {self.db.path}"

    def ping(self) -> None:
        """Raises Unavailable, naming the file, when it cannot be read."""
        try:
            with self.db.connection() as conn:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as e:
            raise Unavailable(f"{self.endpoint()} cannot be read ({e})") from e

    def _do(self, conn: sqlite3.Connection, sql: str, *args: object) -> sqlite3.Cursor:
        """Runs ``sql`` with this store's tenant as parameter ?1 and ``args`` as ?2, ?3, ..."""
        return conn.execute(sql, (self.tenant, *args))

    def _all(self, conn: sqlite3.Connection, sql: str, *args: object) -> list[Any]:
        """Every row of ``_do(conn, sql, *args)``."""
        return self._do(conn, sql, *args).fetchall()

    def _one(self, conn: sqlite3.Connection, sql: str, *args: object) -> Any:
        """The first row of ``_do(conn, sql, *args)``, or None."""
        return self._do(conn, sql, *args).fetchone()

    # Agents.

    @_measured
    def put_agent(self, agent: AgentRecord) -> None:
        with self.db.connection() as conn:
            self._do(conn, "INSERT OR REPLACE INTO agents VALUES (?1, ?2, ?3, ?4)",
                     agent.agent_id, *_agent_row(agent))

    @_measured
    def create_agent(self, agent: AgentRecord) -> None:
        with self.db.connection() as conn:
            cur = self._do(conn, "INSERT OR IGNORE INTO agents VALUES (?1, ?2, ?3, ?4)",
                           agent.agent_id, *_agent_row(agent))
        if cur.rowcount != 1:
            raise AlreadyExists(f"agent {agent.agent_id!r} is already registered")

    @_measured
    def get_agent(self, agent_id: str) -> AgentRecord:
        with self.db.connection() as conn:
            row = self._one(
                conn, "SELECT record, heartbeat FROM agents"
                " WHERE tenant = ?1 AND agent_id = ?2", agent_id
            )
        if row is None:
            raise AgentNotFound(f"agent {agent_id!r} is not registered")
        return _agent(*row)

    @_measured
    def heartbeat(self, agent_id: str, now_unix: float) -> None:
        with self.db.connection() as conn:
            cur = self._do(
                conn, "UPDATE agents SET heartbeat = ?3"
                " WHERE tenant = ?1 AND agent_id = ?2", agent_id, now_unix
            )
        if cur.rowcount != 1:
            raise AgentNotFound(f"agent {agent_id!r} is not registered")

    @_measured
    def list_agents(self) -> list[AgentRecord]:
        with self.db.connection() as conn:
            rows = self._all(conn, "SELECT record, heartbeat FROM agents WHERE tenant = ?1 ORDER BY agent_id")
        return [_agent(*row) for row in rows]

    @_measured
    def update_agent(self, agent_id: str, mutate: Callable[[AgentRecord], AgentRecord]) -> AgentRecord:
        with self.db.write() as conn:
            row = self._one(
                conn, "SELECT record, heartbeat FROM agents"
                " WHERE tenant = ?1 AND agent_id = ?2", agent_id
            )
            if row is None:
                raise AgentNotFound(f"agent {agent_id!r} is not registered")
            new = mutate(_agent(*row))
            self._do(
                conn, "UPDATE agents SET record = ?3, heartbeat = ?4"
                " WHERE tenant = ?1 AND agent_id = ?2", agent_id, *_agent_row(new)
            )
        return new

    @_measured
    def delete_agent(self, agent_id: str) -> None:
        with self.db.connection() as conn:
            cur = self._do(conn, "DELETE FROM agents WHERE tenant = ?1 AND agent_id = ?2", agent_id)
        if cur.rowcount != 1:
            raise AgentNotFound(f"agent {agent_id!r} is not registered")

    # Runs.

    @_measured
    def create_run(self, run: RunRecord) -> None:
        with self.db.connection() as conn:
            cur = self._do(conn, "INSERT OR IGNORE INTO runs VALUES (?1, ?2, ?3, ?4)",
                           run.run_id, run.created_unix, json.dumps(run.to_dict()))
        if cur.rowcount != 1:
            raise AlreadyExists(f"run {run.run_id!r} already exists")

    @_measured
    def get_run(self, run_id: str) -> RunRecord:
        with self.db.connection() as conn:
            row = self._one(conn, "SELECT record FROM runs WHERE tenant = ?1 AND run_id = ?2", run_id)
        if row is None:
            raise RunNotFound(f"run {run_id!r} not found")
        return RunRecord.from_dict(json.loads(row[0]))

    @_measured
    def update_run(self, run_id: str, **changes: Any) -> RunRecord:
        with self.db.write() as conn:
            row = self._one(conn, "SELECT record FROM runs WHERE tenant = ?1 AND run_id = ?2", run_id)
            if row is None:
                raise RunNotFound(f"run {run_id!r} not found")
            run = dataclasses.replace(RunRecord.from_dict(json.loads(row[0])), **changes)
            record = json.dumps(run.to_dict())
            self._do(conn, "UPDATE runs SET created_unix = ?3, record = ?4 WHERE tenant = ?1 AND run_id = ?2",
                     run_id, run.created_unix, record)
        return RunRecord.from_dict(json.loads(record))

    @_measured
    def list_runs(self) -> list[RunRecord]:
        with self.db.connection() as conn:
            rows = self._all(conn, "SELECT record FROM runs WHERE tenant = ?1 ORDER BY created_unix, run_id")
        return [RunRecord.from_dict(json.loads(row[0])) for row in rows]

    # Rounds.

    @_measured
    def create_round(self, rnd: RoundRecord) -> None:
        with self.db.connection() as conn:
            cur = self._do(conn, "INSERT OR IGNORE INTO rounds VALUES (?1, ?2, ?3, ?4)",
                           rnd.run_id, rnd.round, json.dumps(rnd.to_dict()))
        if cur.rowcount != 1:
            raise AlreadyExists(f"round {rnd.round} of run {rnd.run_id!r} already exists")

    @_measured
    def get_round(self, run_id: str, round_: int) -> RoundRecord:
        with self.db.connection() as conn:
            row = self._one(
                conn, "SELECT record FROM rounds"
                " WHERE tenant = ?1 AND run_id = ?2 AND round = ?3", run_id, round_
            )
        if row is None:
            raise RoundNotFound(f"round {round_} of run {run_id!r} not found")
        return RoundRecord.from_dict(json.loads(row[0]))

    @_measured
    def list_rounds(self, run_id: str) -> list[RoundRecord]:
        with self.db.connection() as conn:
            rows = self._all(
                conn, "SELECT record FROM rounds"
                " WHERE tenant = ?1 AND run_id = ?2 ORDER BY round", run_id
            )
        return [RoundRecord.from_dict(json.loads(row[0])) for row in rows]

    def _change_round(
        self, run_id: str, round_: int, change: Callable[[RoundRecord], RoundRecord]
    ) -> RoundRecord:
        """Replaces a round's record by ``change(current)`` in one transaction."""
        with self.db.write() as conn:
            row = self._one(
                conn, "SELECT record FROM rounds"
                " WHERE tenant = ?1 AND run_id = ?2 AND round = ?3", run_id, round_
            )
            if row is None:
                raise RoundNotFound(f"round {round_} of run {run_id!r} not found")
            record = json.dumps(change(RoundRecord.from_dict(json.loads(row[0]))).to_dict())
            self._do(
                conn, "UPDATE rounds SET record = ?4"
                " WHERE tenant = ?1 AND run_id = ?2 AND round = ?3", run_id, round_, record
            )
        return RoundRecord.from_dict(json.loads(record))

    @_measured
    def transition_round(self, run_id: str, round_: int, to: RoundState, **changes: Any) -> RoundRecord:
        to = round_state(to)

        def change(rnd: RoundRecord) -> RoundRecord:
            if not rnd.state.can_move_to(to):
                raise InvalidTransition(
                    f"round {round_} of run {run_id!r} cannot go from {rnd.state} to {to}"
                )
            return dataclasses.replace(rnd, state=to, **changes)

        return self._change_round(run_id, round_, change)

    @_measured
    def update_round(self, run_id: str, round_: int, **changes: Any) -> RoundRecord:
        if "state" in changes:
            raise InvalidTransition("update_round does not change state; use transition_round")
        return self._change_round(run_id, round_, lambda rnd: dataclasses.replace(rnd, **changes))

    # The aggregator's journal.

    @_measured
    def create_aggregation(self, rec: AggregationRecord) -> None:
        with self.db.connection() as conn:
            cur = self._do(conn, "INSERT OR IGNORE INTO aggregations VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                           rec.journal, rec.run_id, rec.round, rec.state.terminal, json.dumps(rec.to_dict()))
        if cur.rowcount != 1:
            raise AlreadyExists(f"round {rec.round} of run {rec.run_id!r} has a journal")

    def _aggregation(
        self, conn: sqlite3.Connection, run_id: str, round_: int, journal: str
    ) -> AggregationRecord:
        row = self._one(
            conn, "SELECT record FROM aggregations"
            " WHERE tenant = ?1 AND journal = ?2 AND run_id = ?3 AND round = ?4", journal, run_id, round_
        )
        if row is None:
            raise RoundNotFound(f"round {round_} of run {run_id!r} has no journal")
        return AggregationRecord.from_dict(json.loads(row[0]))

    def _put_aggregation(self, conn: sqlite3.Connection, rec: AggregationRecord, journal: str) -> None:
        """Replaces the record of ``journal`` (the key, whatever an old record's own field says)."""
        self._do(
            conn, "UPDATE aggregations SET finished = ?5, record = ?6"
            " WHERE tenant = ?1 AND journal = ?2 AND run_id = ?3 AND round = ?4",
            journal, rec.run_id, rec.round, rec.state.terminal, json.dumps(rec.to_dict()),
        )

    @_measured
    def get_aggregation(self, run_id: str, round_: int, journal: str = "") -> AggregationRecord:
        with self.db.connection() as conn:
            return self._aggregation(conn, run_id, round_, journal)

    @_measured
    def list_aggregations(self, journal: str = "") -> list[AggregationRecord]:
        with self.db.connection() as conn:
            rows = self._do(conn, "SELECT record FROM aggregations WHERE tenant = ?1 AND journal = ?2"
                            " AND finished = 0 ORDER BY run_id, round", journal).fetchall()
        return [AggregationRecord.from_dict(json.loads(row[0])) for row in rows]

    @_measured
    def count_update(
        self, run_id: str, round_: int, agent_id: str, report: UpdateReport, journal: str = ""
    ) -> bool:
        with self.db.write() as conn:
            rec = self._aggregation(conn, run_id, round_, journal)
            if agent_id in rec.reports:
                return False
            if rec.state is not RoundState.TRAINING:
                raise RoundNotOpen(f"round {round_} of run {run_id!r} is {rec.state}, not accepting updates")
            rec.reports[agent_id] = report
            self._put_aggregation(conn, rec, journal)
        return True

    @_measured
    def set_aggregation_state(
        self, run_id: str, round_: int, state: RoundState, journal: str = "", **changes: Any
    ) -> AggregationRecord:
        state = round_state(state)
        with self.db.write() as conn:
            rec = self._aggregation(conn, run_id, round_, journal)
            if not rec.state.can_move_to(state):
                raise InvalidTransition(f"journal of round {round_} cannot go from {rec.state} to {state}")
            new = dataclasses.replace(rec, state=state, **changes)
            self._put_aggregation(conn, new, journal)
        return new

    # Documents.

    @_measured
    def _doc_create(self, kind: str, doc_id: str, doc: dict[str, Any]) -> bool:
        with self.db.connection() as conn:
            cur = self._do(conn, "INSERT OR IGNORE INTO documents VALUES (?1, ?2, ?3, ?4)",
                           kind, doc_id, json.dumps(doc))
        return cur.rowcount == 1

    @_measured
    def _doc_get(self, kind: str, doc_id: str) -> dict[str, Any] | None:
        with self.db.connection() as conn:
            row = self._one(
                conn, "SELECT record FROM documents"
                " WHERE tenant = ?1 AND kind = ?2 AND doc_id = ?3", kind, doc_id
            )
        return json.loads(row[0]) if row is not None else None

    @_measured
    def _doc_list(self, kind: str) -> list[dict[str, Any]]:
        with self.db.connection() as conn:
            rows = self._all(
                conn, "SELECT record FROM documents"
                " WHERE tenant = ?1 AND kind = ?2 ORDER BY doc_id", kind
            )
        return [json.loads(row[0]) for row in rows]

    @_measured
    def _doc_update(
        self, kind: str, doc_id: str, mutate: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> dict[str, Any] | None:
        with self.db.write() as conn:
            row = self._one(
                conn, "SELECT record FROM documents"
                " WHERE tenant = ?1 AND kind = ?2 AND doc_id = ?3", kind, doc_id
            )
            if row is None:
                return None
            record = json.dumps(mutate(json.loads(row[0])))
            self._do(
                conn, "UPDATE documents SET record = ?4"
                " WHERE tenant = ?1 AND kind = ?2 AND doc_id = ?3", kind, doc_id, record
            )
        new: dict[str, Any] = json.loads(record)
        return new

    @_measured
    def _doc_delete(self, kind: str, doc_id: str) -> bool:
        with self.db.connection() as conn:
            cur = self._do(
                conn, "DELETE FROM documents"
                " WHERE tenant = ?1 AND kind = ?2 AND doc_id = ?3", kind, doc_id
            )
        return cur.rowcount == 1

    # Idempotency marks and leases.

    @_measured
    def mark_once(self, scope: str, key: str) -> bool:
        with self.db.connection() as conn:
            cur = self._do(conn, "INSERT OR IGNORE INTO marks VALUES (?1, ?2, ?3)", scope, key)
        return cur.rowcount == 1

    @_measured
    def is_marked(self, scope: str, key: str) -> bool:
        with self.db.connection() as conn:
            row = self._one(conn, "SELECT 1 FROM marks WHERE tenant = ?1 AND scope = ?2 AND key = ?3",
                            scope, key)
        return row is not None

    @_measured
    def acquire_lease(self, name: str, holder: str, ttl_s: float, now_unix: float) -> bool:
        with self.db.write() as conn:
            row = self._one(conn, "SELECT holder, expires FROM leases WHERE tenant = ?1 AND name = ?2", name)
            if row is not None and row[0] != holder and row[1] > now_unix:
                return False
            self._do(conn, "INSERT OR REPLACE INTO leases VALUES (?1, ?2, ?3, ?4)",
                     name, holder, now_unix + ttl_s)
        return True

    @_measured
    def release_lease(self, name: str, holder: str) -> None:
        with self.db.connection() as conn:
            self._do(conn, "DELETE FROM leases WHERE tenant = ?1 AND name = ?2 AND holder = ?3", name, holder)

    # The audit log. The newest entry is always kept (audit_keep >= 1), so max(seq) + 1 never
    # hands out a number twice.

    @_measured
    def append_audit(self, entry: AuditEntry) -> int:
        fields = {k: v for k, v in dataclasses.asdict(entry).items() if k != "seq"}
        with self.db.write() as conn:
            seq = int(self._one(conn, "SELECT coalesce(max(seq), 0) + 1 FROM audit WHERE tenant = ?1")[0])
            self._do(conn, "INSERT INTO audit VALUES (?1, ?2, ?3, ?4, ?5)",
                     seq, entry.action, entry.actor, json.dumps(fields))
            self._do(conn, "DELETE FROM audit WHERE tenant = ?1 AND seq <= ?2", seq - self.audit_keep)
        return seq

    @_measured
    def list_audit(self, after_seq: int = 0, limit: int = 100, action: str = "", actor: str = "") -> list[AuditEntry]:
        with self.db.connection() as conn:
            rows = self._all(
                conn,
                "SELECT seq, record FROM audit WHERE tenant = ?1 AND seq > ?2"
                " AND (?3 = '' OR action = ?3) AND (?4 = '' OR actor = ?4) ORDER BY seq LIMIT ?5",
                after_seq, action, actor, limit,
            )
        return [AuditEntry(**json.loads(record), seq=seq) for seq, record in rows]
