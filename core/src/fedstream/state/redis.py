"""The Redis state store: shared by every process and replica of a tenant's control plane.

Keys are prefixed ``fedstream:<tenant>:``. Records are JSON. Round transitions and run
updates are optimistic transactions (WATCH, then MULTI/EXEC), so of two writers racing on the
same record exactly one wins; leases are a Lua script. Every call retries with exponential
backoff while Redis is unreachable, then raises Unavailable.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

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

F = TypeVar("F", bound=Callable[..., Any])

_ACQUIRE_LEASE = """
local current = redis.call('HMGET', KEYS[1], 'holder', 'expires')
local holder, expires = current[1], tonumber(current[2])
local now = tonumber(ARGV[2])
if holder and holder ~= ARGV[1] and expires and expires > now then
  return 0
end
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'expires', tostring(now + tonumber(ARGV[3])))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""
_RELEASE_LEASE = """
if redis.call('HGET', KEYS[1], 'holder') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
_HEARTBEAT = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'heartbeat', ARGV[1])
return 1
"""

# The audit log: a counter hands out sequence numbers; entries are members "<seq>:<json>" of a
# sorted set scored by seq, trimmed to the newest ARGV[2].
_APPEND_AUDIT = """
local seq = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[2], seq, seq .. ':' .. ARGV[1])
local keep = tonumber(ARGV[2])
local n = redis.call('ZCARD', KEYS[2])
if n > keep then
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, n - keep - 1)
end
return seq
"""
# Entries read at a time while a filtered listing looks for matches.
_AUDIT_SCAN = 500


def _unavailable(fn: F) -> F:
    """Redis errors become Unavailable; every call's latency and failures are measured."""
    operation = fn.__name__

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        labels = (self.tenant, "redis", operation)
        start = time.perf_counter()
        try:
            return fn(self, *args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            STATE_OPERATION_ERRORS.labels(*labels).inc()
            raise Unavailable("state store unreachable", detail=str(e)) from e
        finally:
            STATE_OPERATION_SECONDS.labels(*labels).observe(time.perf_counter() - start)

    return wrapper  # type: ignore[return-value]


def connect(url: str, password: str | None = None, retry_s: float = 60.0) -> redis.Redis[bytes]:
    """A client that retries a failed command with backoff for about ``retry_s`` seconds."""
    attempts = max(1, int(retry_s / 1.0))
    return redis.Redis.from_url(
        url,
        password=password,
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), attempts),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


class _NoDocument(Exception):
    """Raised inside a read-modify-write when the document is absent."""


class RedisStateStore(StateStore):
    def __init__(self, client: redis.Redis[bytes], tenant: str = "default", audit_keep: int = DEFAULT_AUDIT_KEEP) -> None:
        self.tenant = tenant
        self.audit_keep = audit_keep
        self.r = client
        kwargs = client.connection_pool.connection_kwargs
        self._endpoint = f"redis at {kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
        self._prefix = f"fedstream:{tenant}:"
        self._acquire = self.r.register_script(_ACQUIRE_LEASE)
        self._release = self.r.register_script(_RELEASE_LEASE)
        self._heartbeat = self.r.register_script(_HEARTBEAT)
        self._append_audit = self.r.register_script(_APPEND_AUDIT)

    def _k(self, *parts: object) -> str:
        return self._prefix + ":".join(str(p) for p in parts)

    def endpoint(self) -> str:
        return self._endpoint

    def ping(self) -> None:
        """Raises Unavailable at once (no retries) when Redis does not answer."""
        pool = self.r.connection_pool
        kwargs = {k: v for k, v in pool.connection_kwargs.items() if k != "retry"}
        kwargs.update(socket_connect_timeout=2, socket_timeout=2)
        probe = redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))
        try:
            probe.ping()
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise Unavailable(f"{self._endpoint} does not answer ({type(e).__name__})") from e
        except redis.AuthenticationError as e:
            raise Unavailable(f"{self._endpoint} refused the credentials") from e
        finally:
            probe.close()

    def _update(self, key: str, mutate: Callable[[dict[str, Any] | None], dict[str, Any]]) -> dict[str, Any]:
        """Read-modify-write of one JSON record under WATCH; retried when another writer won."""
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    # Under WATCH the pipeline runs commands at once and returns their replies.
                    raw = cast("bytes | None", pipe.get(key))
                    new = mutate(json.loads(raw) if raw is not None else None)
                    pipe.multi()
                    pipe.set(key, json.dumps(new))
                    pipe.execute()
                    return new
                except redis.WatchError:
                    continue

    # Agents.

    @_unavailable
    def put_agent(self, agent: AgentRecord) -> None:
        fields = dataclasses.asdict(agent)
        heartbeat = fields.pop("last_heartbeat_unix")
        with self.r.pipeline() as pipe:
            pipe.hset(self._k("agent", agent.agent_id), mapping={"record": json.dumps(fields), "heartbeat": repr(heartbeat)})
            pipe.sadd(self._k("agents"), agent.agent_id)
            pipe.execute()

    @_unavailable
    def create_agent(self, agent: AgentRecord) -> None:
        fields = dataclasses.asdict(agent)
        heartbeat = fields.pop("last_heartbeat_unix")
        key = self._k("agent", agent.agent_id)
        # HSETNX on the record field is the atomic claim: of two creations one sets it.
        if not self.r.hsetnx(key, "record", json.dumps(fields)):
            raise AlreadyExists(f"agent {agent.agent_id!r} is already registered")
        with self.r.pipeline() as pipe:
            pipe.hset(key, "heartbeat", repr(heartbeat))
            pipe.sadd(self._k("agents"), agent.agent_id)
            pipe.execute()

    def _agent_from(self, agent_id: str, raw: dict[bytes, bytes]) -> AgentRecord:
        fields = json.loads(raw[b"record"])
        return from_doc(AgentRecord, fields, last_heartbeat_unix=float(raw.get(b"heartbeat", b"0")))

    @_unavailable
    def get_agent(self, agent_id: str) -> AgentRecord:
        raw = self.r.hgetall(self._k("agent", agent_id))
        if not raw:
            raise AgentNotFound(f"agent {agent_id!r} is not registered")
        return self._agent_from(agent_id, raw)

    @_unavailable
    def heartbeat(self, agent_id: str, now_unix: float) -> None:
        if not self._heartbeat(keys=[self._k("agent", agent_id)], args=[repr(now_unix)]):
            raise AgentNotFound(f"agent {agent_id!r} is not registered")

    @_unavailable
    def list_agents(self) -> list[AgentRecord]:
        ids = sorted(i.decode() for i in self.r.smembers(self._k("agents")))
        with self.r.pipeline(transaction=False) as pipe:
            for i in ids:
                pipe.hgetall(self._k("agent", i))
            raws = pipe.execute()
        return [self._agent_from(i, raw) for i, raw in zip(ids, raws, strict=True) if raw]

    @_unavailable
    def update_agent(self, agent_id: str, mutate: Callable[[AgentRecord], AgentRecord]) -> AgentRecord:
        key = self._k("agent", agent_id)
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = cast("dict[bytes, bytes]", pipe.hgetall(key))  # at once, under WATCH
                    if not raw:
                        raise AgentNotFound(f"agent {agent_id!r} is not registered")
                    new = mutate(self._agent_from(agent_id, raw))
                    fields = dataclasses.asdict(new)
                    heartbeat = fields.pop("last_heartbeat_unix")
                    pipe.multi()
                    pipe.hset(key, mapping={"record": json.dumps(fields), "heartbeat": repr(heartbeat)})
                    pipe.execute()
                    return new
                except redis.WatchError:
                    continue

    @_unavailable
    def delete_agent(self, agent_id: str) -> None:
        with self.r.pipeline() as pipe:
            pipe.delete(self._k("agent", agent_id))
            pipe.srem(self._k("agents"), agent_id)
            deleted, _ = pipe.execute()
        if not deleted:
            raise AgentNotFound(f"agent {agent_id!r} is not registered")

    # Runs.

    @_unavailable
    def create_run(self, run: RunRecord) -> None:
        if not self.r.set(self._k("run", run.run_id), json.dumps(run.to_dict()), nx=True):
            raise AlreadyExists(f"run {run.run_id!r} already exists")
        self.r.zadd(self._k("runs"), {run.run_id: run.created_unix})

    @_unavailable
    def get_run(self, run_id: str) -> RunRecord:
        raw = self.r.get(self._k("run", run_id))
        if raw is None:
            raise RunNotFound(f"run {run_id!r} not found")
        return RunRecord.from_dict(json.loads(raw))

    @_unavailable
    def update_run(self, run_id: str, **changes: Any) -> RunRecord:
        def mutate(current: dict[str, Any] | None) -> dict[str, Any]:
            if current is None:
                raise RunNotFound(f"run {run_id!r} not found")
            return dataclasses.replace(RunRecord.from_dict(current), **changes).to_dict()

        return RunRecord.from_dict(self._update(self._k("run", run_id), mutate))

    @_unavailable
    def list_runs(self) -> list[RunRecord]:
        ids = [i.decode() for i in self.r.zrange(self._k("runs"), 0, -1)]
        raws = self.r.mget([self._k("run", i) for i in ids]) if ids else []
        return [RunRecord.from_dict(json.loads(raw)) for raw in raws if raw is not None]

    # Documents.

    @_unavailable
    def _doc_create(self, kind: str, doc_id: str, doc: dict[str, Any]) -> bool:
        if not self.r.set(self._k(kind, doc_id), json.dumps(doc), nx=True):
            return False
        self.r.sadd(self._k(kind + "s"), doc_id)
        return True

    @_unavailable
    def _doc_get(self, kind: str, doc_id: str) -> dict[str, Any] | None:
        raw = self.r.get(self._k(kind, doc_id))
        return json.loads(raw) if raw is not None else None

    @_unavailable
    def _doc_list(self, kind: str) -> list[dict[str, Any]]:
        ids = sorted(i.decode() for i in self.r.smembers(self._k(kind + "s")))
        raws = self.r.mget([self._k(kind, i) for i in ids]) if ids else []
        return [json.loads(raw) for raw in raws if raw is not None]

    @_unavailable
    def _doc_update(
        self, kind: str, doc_id: str, mutate: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> dict[str, Any] | None:
        def change(current: dict[str, Any] | None) -> dict[str, Any]:
            if current is None:
                raise _NoDocument
            return mutate(current)

        try:
            return self._update(self._k(kind, doc_id), change)
        except _NoDocument:
            return None

    @_unavailable
    def _doc_delete(self, kind: str, doc_id: str) -> bool:
        with self.r.pipeline() as pipe:
            pipe.delete(self._k(kind, doc_id))
            pipe.srem(self._k(kind + "s"), doc_id)
            deleted, _ = pipe.execute()
        return bool(deleted)

    # Rounds.

    def _round_key(self, run_id: str, round_: int) -> str:
        return self._k("round", run_id, f"{round_:06d}")

    @_unavailable
    def create_round(self, rnd: RoundRecord) -> None:
        if not self.r.set(self._round_key(rnd.run_id, rnd.round), json.dumps(rnd.to_dict()), nx=True):
            raise AlreadyExists(f"round {rnd.round} of run {rnd.run_id!r} already exists")
        self.r.zadd(self._k("rounds", rnd.run_id), {str(rnd.round): rnd.round})

    @_unavailable
    def get_round(self, run_id: str, round_: int) -> RoundRecord:
        raw = self.r.get(self._round_key(run_id, round_))
        if raw is None:
            raise RoundNotFound(f"round {round_} of run {run_id!r} not found")
        return RoundRecord.from_dict(json.loads(raw))

    @_unavailable
    def list_rounds(self, run_id: str) -> list[RoundRecord]:
        numbers = [int(n) for n in self.r.zrange(self._k("rounds", run_id), 0, -1)]
        raws = self.r.mget([self._round_key(run_id, n) for n in numbers]) if numbers else []
        return [RoundRecord.from_dict(json.loads(raw)) for raw in raws if raw is not None]

    @_unavailable
    def transition_round(self, run_id: str, round_: int, to: RoundState, **changes: Any) -> RoundRecord:
        to = round_state(to)

        def mutate(current: dict[str, Any] | None) -> dict[str, Any]:
            if current is None:
                raise RoundNotFound(f"round {round_} of run {run_id!r} not found")
            rnd = RoundRecord.from_dict(current)
            if not rnd.state.can_move_to(to):
                raise InvalidTransition(f"round {round_} of run {run_id!r} cannot go from {rnd.state} to {to}")
            return dataclasses.replace(rnd, state=to, **changes).to_dict()

        return RoundRecord.from_dict(self._update(self._round_key(run_id, round_), mutate))

    @_unavailable
    def update_round(self, run_id: str, round_: int, **changes: Any) -> RoundRecord:
        if "state" in changes:
            raise InvalidTransition("update_round does not change state; use transition_round")

        def mutate(current: dict[str, Any] | None) -> dict[str, Any]:
            if current is None:
                raise RoundNotFound(f"round {round_} of run {run_id!r} not found")
            return dataclasses.replace(RoundRecord.from_dict(current), **changes).to_dict()

        return RoundRecord.from_dict(self._update(self._round_key(run_id, round_), mutate))

    # The aggregator's journal.

    def _agg_key(self, run_id: str, round_: int, journal: str) -> str:
        if journal:
            return self._k("aggregation", journal, run_id, f"{round_:06d}")
        return self._k("aggregation", run_id, f"{round_:06d}")

    def _agg_set(self, journal: str) -> str:
        return self._k("aggregations", journal) if journal else self._k("aggregations")

    @_unavailable
    def create_aggregation(self, rec: AggregationRecord) -> None:
        key = self._agg_key(rec.run_id, rec.round, rec.journal)
        if not self.r.set(key, json.dumps(rec.to_dict()), nx=True):
            raise AlreadyExists(f"round {rec.round} of run {rec.run_id!r} has a journal")
        self.r.sadd(self._agg_set(rec.journal), key)

    @_unavailable
    def get_aggregation(self, run_id: str, round_: int, journal: str = "") -> AggregationRecord:
        raw = self.r.get(self._agg_key(run_id, round_, journal))
        if raw is None:
            raise RoundNotFound(f"round {round_} of run {run_id!r} has no journal")
        return AggregationRecord.from_dict(json.loads(raw))

    @_unavailable
    def list_aggregations(self, journal: str = "") -> list[AggregationRecord]:
        keys = sorted(k.decode() for k in self.r.smembers(self._agg_set(journal)))
        raws = self.r.mget(keys) if keys else []
        recs = [AggregationRecord.from_dict(json.loads(raw)) for raw in raws if raw is not None]
        return [r for r in recs if not r.state.terminal]

    @_unavailable
    def count_update(
        self, run_id: str, round_: int, agent_id: str, report: UpdateReport, journal: str = ""
    ) -> bool:
        added = False

        def mutate(current: dict[str, Any] | None) -> dict[str, Any]:
            nonlocal added
            if current is None:
                raise RoundNotFound(f"round {round_} of run {run_id!r} has no journal")
            added = False
            rec = AggregationRecord.from_dict(current)
            if agent_id in rec.reports:
                return current
            if rec.state is not RoundState.TRAINING:
                raise RoundNotOpen(f"round {round_} of run {run_id!r} is {rec.state}, not accepting updates")
            rec.reports[agent_id] = report
            added = True
            return rec.to_dict()

        self._update(self._agg_key(run_id, round_, journal), mutate)
        return added

    @_unavailable
    def set_aggregation_state(
        self, run_id: str, round_: int, state: RoundState, journal: str = "", **changes: Any
    ) -> AggregationRecord:
        state = round_state(state)

        def mutate(current: dict[str, Any] | None) -> dict[str, Any]:
            if current is None:
                raise RoundNotFound(f"round {round_} of run {run_id!r} has no journal")
            rec = AggregationRecord.from_dict(current)
            if not rec.state.can_move_to(state):
                raise InvalidTransition(f"journal of round {round_} cannot go from {rec.state} to {state}")
            return dataclasses.replace(rec, state=state, **changes).to_dict()

        key = self._agg_key(run_id, round_, journal)
        rec = AggregationRecord.from_dict(self._update(key, mutate))
        if state.terminal:
            self.r.srem(self._agg_set(journal), key)
        return rec

    # Idempotency records and leases.

    @_unavailable
    def mark_once(self, scope: str, key: str) -> bool:
        return bool(self.r.sadd(self._k("mark", scope), key))

    @_unavailable
    def is_marked(self, scope: str, key: str) -> bool:
        return bool(self.r.sismember(self._k("mark", scope), key))

    @_unavailable
    def acquire_lease(self, name: str, holder: str, ttl_s: float, now_unix: float) -> bool:
        # Expiry is judged by the caller's clock (as in every store); Redis forgets the key
        # a while after it would have expired.
        keep_ms = int((ttl_s + 60) * 1000)
        return bool(self._acquire(keys=[self._k("lease", name)], args=[holder, repr(now_unix), repr(ttl_s), keep_ms]))

    @_unavailable
    def release_lease(self, name: str, holder: str) -> None:
        self._release(keys=[self._k("lease", name)], args=[holder])

    # The audit log.

    @_unavailable
    def append_audit(self, entry: AuditEntry) -> int:
        fields = {k: v for k, v in dataclasses.asdict(entry).items() if k != "seq"}
        keys = [self._k("audit", "seq"), self._k("audit")]
        return int(self._append_audit(keys=keys, args=[json.dumps(fields), self.audit_keep]))

    @_unavailable
    def list_audit(self, after_seq: int = 0, limit: int = 100, action: str = "", actor: str = "") -> list[AuditEntry]:
        found: list[AuditEntry] = []
        cursor = after_seq
        while len(found) < limit:
            batch = limit if not (action or actor) else _AUDIT_SCAN
            members = self.r.zrangebyscore(self._k("audit"), f"({cursor}", "+inf", start=0, num=batch)
            for member in members:
                seq, _, raw = member.partition(b":")
                entry = AuditEntry(**json.loads(raw), seq=int(seq))
                cursor = entry.seq
                if (not action or entry.action == action) and (not actor or entry.actor == actor):
                    found.append(entry)
                    if len(found) == limit:
                        break
            if len(members) < batch:
                break
        return found
