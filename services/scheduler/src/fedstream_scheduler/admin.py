"""The admin surface's logic, independent of HTTP: federations, runs, agents and API tokens of
one tenant. The REST API (fedstream_scheduler.api) translates requests into these calls.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import ValidationError

from fedstream.errors import FailedPrecondition, FedstreamError, InvalidArgument, ModelNotFound, Unavailable
from fedstream.state import (
    AgentRecord,
    EnrollmentTokenRecord,
    FederationRecord,
    RoundRecord,
    RunRecord,
    TokenRecord,
)
from fedstream.store import ModelReader, ModelStore, ModelVersion
from fedstream.store.base import parse_version
from fedstream.strategies import make_strategy
from fedstream_scheduler.enrollment import Enrollment, secret_hash
from fedstream_scheduler.models import RunSpec
from fedstream_scheduler.service import SchedulerService

ROLES = ("viewer", "operator", "admin")
MISSED_POLICIES = ("skip", "run_once")
BOOTSTRAP_TOKEN_ID = "bootstrap"
# Token secrets: a recognisable prefix and 32 random bytes (URL-safe base64).
TOKEN_PREFIX = "fst_"




def check_schedule(schedule: dict[str, Any]) -> dict[str, Any]:
    """A schedule with its defaults filled in; raises InvalidArgument naming the bad field."""
    cron = schedule.get("cron", "")
    if not isinstance(cron, str) or len(cron.split()) != 5 or not croniter.is_valid(cron):
        raise InvalidArgument(f"schedule.cron: {cron!r} is not a five-field cron expression")
    tz = schedule.get("timezone", "UTC")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise InvalidArgument(f"schedule.timezone: unknown time zone {tz!r}") from None
    missed = schedule.get("missed", "skip")
    if missed not in MISSED_POLICIES:
        raise InvalidArgument(f"schedule.missed: must be one of {', '.join(MISSED_POLICIES)}, not {missed!r}")
    return {"cron": cron, "timezone": tz, "missed": missed}


def check_spec(fields: dict[str, Any]) -> RunSpec:
    try:
        return RunSpec.model_validate(fields)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "spec"
        raise InvalidArgument(f"spec.{where}: {first['msg']}") from None


@dataclass(frozen=True)
class Principal:
    tenant: str
    role: str
    token_id: str

    def allows(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


class AdminService:
    """One tenant's admin operations over its scheduler and state store."""

    def __init__(
        self, scheduler: SchedulerService, store: ModelStore | None = None, clock: Callable[[], float] | None = None,
        enrollment: Enrollment | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.store = store
        self.enrollment = enrollment or Enrollment(
            scheduler.state, None, scheduler.settings.enrollment.cert_lifetime_s, clock or scheduler.clock,
        )
        self.state = scheduler.state
        self.tenant = scheduler.state.tenant
        self.clock = clock or scheduler.clock

    # Tokens.

    def ensure_bootstrap(self, secret: str) -> None:
        """Makes ``secret`` this tenant's bootstrap admin token (replacing an older one)."""
        if len(secret) < 16:
            raise InvalidArgument("the bootstrap token must be at least 16 characters")
        digest = secret_hash(secret)
        existing = {t.token_id: t for t in self.state.list_tokens()}.get(BOOTSTRAP_TOKEN_ID)
        if existing is not None and existing.sha256 == digest:
            return
        if existing is not None:
            self.state.delete_token(BOOTSTRAP_TOKEN_ID)
        self.state.create_token(TokenRecord(BOOTSTRAP_TOKEN_ID, digest, "admin", "bootstrap", self.clock()))

    def authenticate(self, secret: str) -> Principal | None:
        rec = self.state.find_token(secret_hash(secret))
        return Principal(self.tenant, rec.role, rec.token_id) if rec is not None else None

    def create_token(self, role: str, name: str) -> tuple[TokenRecord, str]:
        if role not in ROLES:
            raise InvalidArgument(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        rec = TokenRecord(f"tok-{uuid.uuid4().hex[:12]}", secret_hash(secret), role, name, self.clock())
        self.state.create_token(rec)
        return rec, secret

    def list_tokens(self) -> list[TokenRecord]:
        return self.state.list_tokens()

    def delete_token(self, token_id: str) -> None:
        self.state.delete_token(token_id)

    # Federations.

    def create_federation(self, federation_id: str, spec: dict[str, Any], description: str,
                          schedule: dict[str, Any] | None) -> FederationRecord:
        check_federation_id(federation_id)
        run_spec = check_spec(spec)
        now = self.clock()
        rec = FederationRecord(
            federation_id, self._normalised(run_spec), description,
            check_schedule(schedule) if schedule else {}, now, now,
        )
        self.state.create_federation(rec)
        return rec

    def _normalised(self, spec: RunSpec) -> dict[str, Any]:
        strategy = make_strategy(spec.strategy.name, spec.strategy.params)
        spec.strategy.params = strategy.params.model_dump()
        return spec.model_dump()

    def get_federation(self, federation_id: str) -> FederationRecord:
        return self.state.get_federation(federation_id)

    def list_federations(self) -> list[FederationRecord]:
        return self.state.list_federations()

    def update_federation(self, federation_id: str, *, spec: dict[str, Any] | None = None,
                          description: str | None = None, schedule: dict[str, Any] | None = None,
                          clear_schedule: bool = False) -> FederationRecord:
        current = self.state.get_federation(federation_id)
        changes: dict[str, Any] = {"updated_unix": self.clock()}
        if spec is not None:
            changes["spec"] = self._normalised(check_spec({**current.spec, **spec}))
        if description is not None:
            changes["description"] = description
        if clear_schedule:
            changes["schedule"] = {}
        elif schedule is not None:
            changes["schedule"] = check_schedule({**current.schedule, **schedule})
        return self.state.update_federation(federation_id, **changes)

    def delete_federation(self, federation_id: str) -> None:
        running = [r.run_id for r in self.state.list_runs() if r.federation == federation_id and r.state == "running"]
        if running:
            raise FailedPrecondition(
                f"federation {federation_id!r} has a running run ({running[0]}); cancel it first"
            )
        self.state.delete_federation(federation_id)

    def latest_version(self, federation_id: str) -> str:
        """The newest model any run of the federation committed; empty when none has."""
        runs = [r for r in self.state.list_runs() if r.federation == federation_id and r.latest_version]
        return max(runs, key=lambda r: (r.created_unix, r.run_id)).latest_version if runs else ""

    def pinned_version(self, federation_id: str) -> str:
        """The newest pinned model of the federation's runs; empty when none is pinned."""
        if self.store is None:
            return ""
        pinned = []
        for run in self._runs_of(federation_id):
            pinned += [(run.created_unix, v) for v in self.store.pinned(run.run_id)]
        return max(pinned)[1] if pinned else ""

    def _runs_of(self, federation_id: str) -> list[RunRecord]:
        return [r for r in self.state.list_runs() if r.federation == federation_id]

    def start_run(self, federation_id: str, run_id: str = "", initial_version: str = "",
                  trigger: str = "api") -> RunRecord:
        """Starts a run of the federation, warm-started from ``initial_version``, else the
        federation's newest pinned model, else its latest (an init round when it has none)."""
        fed = self.state.get_federation(federation_id)
        spec = dict(fed.spec)
        spec["initial_version"] = (
            initial_version or self.pinned_version(federation_id) or self.latest_version(federation_id)
            or spec.get("initial_version", "")
        )
        return self.scheduler.start_run(spec, run_id, federation=federation_id, trigger=trigger)

    # Models.

    def _models(self) -> ModelStore:
        if self.store is None:
            raise Unavailable("this scheduler has no model store configured")
        return self.store

    def list_models(self, federation_id: str) -> list[tuple[ModelVersion, bool]]:
        """Every stored version of the federation's runs, oldest run first, with whether it is
        pinned."""
        self.state.get_federation(federation_id)
        store = self._models()
        out = []
        for run in self._runs_of(federation_id):
            pinned = set(store.pinned(run.run_id))
            for version in store.versions(run.run_id):
                try:
                    out.append((store.info(version), version in pinned))
                except ModelNotFound:
                    continue  # removed by retention meanwhile
        return out

    def _check_ours(self, version: str) -> str:
        """The version, if one of this tenant's runs made it (ModelNotFound otherwise)."""
        run_id, _ = parse_version(version)
        try:
            self.state.get_run(run_id)
        except FedstreamError:
            raise ModelNotFound(f"model {version} not found") from None
        return version

    def model_info(self, version: str) -> tuple[ModelVersion, bool]:
        store = self._models()
        info = store.info(self._check_ours(version))
        return info, version in store.pinned(parse_version(version)[0])

    def open_model(self, version: str) -> ModelReader:
        return self._models().open(self._check_ours(version))

    def pin(self, version: str, pinned: bool) -> tuple[ModelVersion, bool]:
        store = self._models()
        self._check_ours(version)
        if pinned:
            store.pin(version)
        else:
            store.unpin(version)
        return self.model_info(version)

    # Runs.

    def list_runs(self, federation: str = "", state: str = "") -> list[RunRecord]:
        if federation:
            self.state.get_federation(federation)  # FederationNotFound
        runs = self.state.list_runs()
        return [r for r in runs if (not federation or r.federation == federation) and (not state or r.state == state)]

    def get_run(self, run_id: str) -> tuple[RunRecord, list[RoundRecord]]:
        return self.scheduler.get_run(run_id)

    async def cancel_run(self, run_id: str) -> RunRecord:
        return await self.scheduler.cancel_run(run_id)

    # Agents.

    def agent_status(self, agent: AgentRecord) -> str:
        if agent.disabled:
            return "disabled"
        fresh = self.clock() - agent.last_heartbeat_unix <= self.scheduler.settings.heartbeat_ttl_s
        return "alive" if fresh else "stale"

    def connected(self, agent_id: str) -> bool:
        return self.scheduler.is_connected(agent_id)

    def list_agents(self, status: str = "") -> list[AgentRecord]:
        return [a for a in self.state.list_agents() if not status or self.agent_status(a) == status]

    def get_agent(self, agent_id: str) -> AgentRecord:
        return self.state.get_agent(agent_id)

    def set_agent_disabled(self, agent_id: str, disabled: bool) -> AgentRecord:
        return self.scheduler.set_agent_disabled(agent_id, disabled)

    def delete_agent(self, agent_id: str) -> None:
        self.scheduler.delete_agent(agent_id)

    # Enrollment tokens.

    def create_enrollment_token(self, agent_id: str, ttl_s: float, name: str) -> tuple[EnrollmentTokenRecord, str]:
        return self.enrollment.create_token(agent_id, ttl_s, name)

    def list_enrollment_tokens(self) -> list[EnrollmentTokenRecord]:
        return self.enrollment.list_tokens()

    def delete_enrollment_token(self, token_id: str) -> None:
        self.enrollment.delete_token(token_id)


def check_federation_id(federation_id: str) -> str:
    if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", federation_id):
        raise InvalidArgument(
            f"invalid federation id {federation_id!r}: 1-63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return federation_id
