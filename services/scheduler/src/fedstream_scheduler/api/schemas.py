"""The REST admin API's request and response bodies: the OpenAPI document is built from these."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from fedstream import ids
from fedstream.errors import InvalidArgument
from fedstream_scheduler.enrollment import MAX_TOKEN_TTL_S
from fedstream_scheduler.models import RunSpec
from fedstream_scheduler.site_policy import ReleasePolicy, SiteRequestPolicy

T = TypeVar("T")

# The core's rules (fedstream.ids), the same as gRPC's: the patterns document them in the
# OpenAPI document, the validators below apply the very functions the gRPC servicers use.
FEDERATION_ID = f"^{ids.FEDERATION_ID}$"
RUN_ID = f"^{ids.RUN_ID}$"
VERSION = f"^{ids.VERSION}$"


def checked(check: Callable[[str], object], *, empty_ok: bool = False) -> AfterValidator:
    """A pydantic validator applying one of fedstream.ids's checks (its message kept)."""

    def validate(value: str) -> str:
        if not (empty_ok and value == ""):
            try:
                check(value)
            except InvalidArgument as e:
                raise ValueError(e.public) from None
        return value

    return AfterValidator(validate)


FederationIdField = Annotated[str, checked(ids.check_federation_id)]
RunIdField = Annotated[str, checked(ids.check_run_id, empty_ok=True)]
VersionField = Annotated[str, checked(ids.parse_version, empty_ok=True)]
AgentIdField = Annotated[str, checked(ids.check_agent_id, empty_ok=True)]


class Problem(BaseModel):
    """An error, as application/problem+json (RFC 9457), with a stable code."""

    type: str = Field(description="A URI naming the kind of problem.")
    title: str = Field(description="The HTTP status phrase.")
    status: int = Field(description="The HTTP status code.")
    detail: str = Field(description="What was wrong, for a person.")
    code: str = Field(description="Stable machine-readable error code, e.g. federation_not_found.")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_page_token: str | None = Field(None, description="Pass as page_token for the next page; null on the last.")


class Schedule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cron: str = Field(description="Five-field cron expression, e.g. '0 2 * * *' for 02:00 every night.",
                      examples=["0 2 * * *"])
    timezone: str = Field("UTC", description="IANA time zone the cron expression is read in.")
    missed: Literal["skip", "run_once"] = Field(
        "skip", description="A slot missed while every scheduler was down: skipped, or run once on recovery."
    )


class ScheduleState(Schedule):
    broken: str | None = Field(
        None, description="Why the schedule cannot fire (an expression that never matches, a time zone no "
        "longer known): no run starts until it is changed. Null while it is sound.",
    )
    next_unix: float | None = Field(
        None, description="When the schedule next fires (a run starts then unless the federation's previous "
        "run still runs); null while it is broken.",
    )


class FederationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    federation_id: FederationIdField = Field(pattern=FEDERATION_ID, description="Lowercase letters, digits and '-'.")
    description: str = Field("", max_length=1000)
    spec: RunSpec = Field(description="What each run of the federation trains and how.")
    schedule: Schedule | None = Field(None, description="When runs start by themselves; none: on request only.")
    releases: ReleasePolicy | None = Field(None, description="Release channels and their approvals; none: no "
                                           "channel (docs/releases.md).")
    site_requests: SiteRequestPolicy | None = Field(None, description="Whether its sites' agents may request "
                                                    "runs; none: refused (docs/releases.md).")


class FederationUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str | None = Field(None, max_length=1000)
    spec: dict[str, Any] | None = Field(
        None, description="The run spec's fields to change, as a JSON merge patch (RFC 7386): nested blocks "
        "(training, selection, asynchronous, strategy, ...) merge field by field, so {\"selection\": "
        "{\"fairness_floor\": 0.3}} keeps selection.prefer_fast; null deletes a field, which takes its default "
        "again ({\"asynchronous\": null}: synchronous runs); arrays and other values replace. Naming another "
        "strategy drops the old one's params. The merged spec is validated whole.")
    schedule: Schedule | None = Field(None, description="A new schedule.")
    clear_schedule: bool = Field(False, description="Remove the schedule.")
    releases: dict[str, Any] | None = Field(
        None, description="The release policy's fields to change, as a JSON merge patch ({\"channels\": "
        "{\"production\": {\"admin_approvals\": 2}}}; a channel set to null is removed). Validated whole.")
    site_requests: dict[str, Any] | None = Field(
        None, description="The site-request policy's fields to change, as a JSON merge patch ({\"mode\": "
        "\"approve\"}). Validated whole.")


class Federation(BaseModel):
    federation_id: str
    description: str
    spec: RunSpec
    schedule: ScheduleState | None
    created_unix: float
    updated_unix: float
    latest_version: str = Field(description="The newest model its runs committed; empty when none.")
    releases: ReleasePolicy = Field(description="Its release channels and their approvals.")
    site_requests: SiteRequestPolicy = Field(description="Whether its sites' agents may request runs.")


class RunStart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: RunIdField = Field("", pattern=f"^$|{RUN_ID}", description="Empty: one is generated.")
    initial_version: VersionField = Field(
        "", pattern=f"^$|{VERSION}", description="Start from this version; empty: the federation's latest model, "
        "or an init round when it has none."
    )


class Run(BaseModel):
    run_id: str
    federation: str
    state: Literal["running", "succeeded", "failed", "cancelled"]
    reason: str
    trigger: str = Field(description="api, grpc or schedule.")
    started_by: str = Field("", description="Who started it: an API token, a gRPC caller's certificate, or "
                            "schedule/<federation>; empty for runs started before this was recorded.")
    latest_version: str
    created_unix: float
    finished_unix: float
    rounds_committed: int
    spec: dict[str, Any]


class Round(BaseModel):
    round: int
    kind: Literal["init", "train", "evaluate"]
    state: Literal["open", "training", "aggregating", "committed", "failed", "cancelled"]
    participants: list[str]
    stragglers: list[str]
    updates: int = Field(description="Updates counted.")
    base_version: str
    version: str
    reason: str
    started_unix: float
    finished_unix: float
    duration_s: float | None = Field(description="Null while the round runs.")
    bytes_received: int = Field(description="Bytes of updates the aggregator received.")
    metrics: dict[str, float] = Field(description="Aggregated metrics (evaluation, distillation).")
    update_metrics: dict[str, float] = Field(
        description="The updates' own metrics (train_loss, train_seconds, ...), weighted by example count."
    )
    epsilon: float | None = Field(
        None, description="Under differential privacy, a training round's ledger (its federation's, or the run's "
        "own) epsilon once the round was charged, when it opened; null otherwise.",
    )


class PrivacyCharge(BaseModel):
    run_id: str
    round: int
    mode: Literal["central", "local"]
    noise_multiplier: float
    selected: int = Field(description="Sites selected for the round.")
    eligible: int = Field(description="Sites eligible when it was planned (live, enabled, offering the task).")
    sampling: float = Field(description="selected / eligible: 1 when every site, or no uniform draw, was selected.")
    sites: int | None = Field(description="Local mode: the sites that spent on it; null in central mode.")
    epsilon: float = Field(description="The ledger's epsilon once this round was charged, at delta.")
    delta: float
    charged_unix: float


class PrivacyReport(BaseModel):
    ledger_id: str = Field(description="The federation's id, or run:<run id> for a run without one.")
    mode: Literal["central", "local"] | None = Field(description="The federation's mode now; null: no privacy now.")
    budget: float | None = Field(description="The epsilon budget now; null when the federation has no privacy now.")
    delta: float | None = Field(description="The delta epsilon is reported at.")
    spent: float = Field(description="Epsilon spent by every charged round, at delta.")
    remaining: float | None = Field(description="budget - spent, at least 0.")
    charges: list[PrivacyCharge] = Field(description="Every training round charged, oldest first.")


class RunDetail(Run):
    rounds: list[Round]


class TensorInfo(BaseModel):
    name: str
    dtype: str
    shape: list[int]


class Model(BaseModel):
    version: str = Field(description="RUN/NNNNNN: the run and the round that committed it.")
    run_id: str
    round: int
    created_unix: float
    size_bytes: int = Field(description="Bytes of the safetensors file a download returns.")
    sha256: str = Field(description="SHA-256 of the tensor data section.")
    pinned: bool = Field(description="Kept through retention; a federation's runs start from its newest pinned model.")
    metadata: dict[str, str]
    tensors: list[TensorInfo]


class Agent(BaseModel):
    agent_id: str
    status: Literal["alive", "stale", "disabled"]
    connected: bool = Field(description="Whether its assignment stream is open on the replica that answered.")
    labels: dict[str, str]
    capabilities: dict[str, Any] = Field(description="device, GPU model and memory, CPUs, free disk, ...")
    tasks: list[str]
    registered_unix: float
    last_heartbeat_unix: float
    enrolled_unix: float = Field(description="When it last enrolled; 0 for an agent of a plaintext (development) control plane.")
    certificates: int = Field(description="How many of its certificates are valid (the newest and the one it replaced).")


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["viewer", "operator", "admin"]
    name: str = Field("", max_length=200)


class Token(BaseModel):
    token_id: str
    role: Literal["viewer", "operator", "admin"]
    name: str
    created_unix: float


class TokenCreated(Token):
    token: str = Field(description="The secret: shown once, stored only as a hash.")


class EnrollmentTokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent_id: AgentIdField = Field(
        "", max_length=ids.MAX_AGENT_ID, pattern=f"^({ids.AGENT_ID})?$",
        description="The agent id the token enrolls; empty lets the agent name itself.",
    )
    ttl_s: float = Field(3600.0, gt=0, allow_inf_nan=False, le=MAX_TOKEN_TTL_S, description="Seconds until the token expires unused.")
    name: str = Field("", max_length=200, description="What the token is for, shown in listings.")


class EnrollmentToken(BaseModel):
    token_id: str
    agent_id: str
    name: str
    created_unix: float
    expires_unix: float


class EnrollmentTokenCreated(EnrollmentToken):
    token: str = Field(description="The secret (fse_...): shown once, stored only as a hash, usable once.")


class Health(BaseModel):
    status: Literal["ok"]


class AuditEntry(BaseModel):
    """One operator action that changed state."""

    seq: int = Field(description="Its place in the tenant's audit log (1, 2, ...).")
    time_unix: float
    action: str = Field(description="What was done, e.g. run.cancel, agent.delete, token.create.")
    target: str = Field(description="What it was done to, <kind>/<id>, e.g. run/nightly-1.")
    actor: str = Field(description="Who did it: token/<token id> (admin API), certificate/<role>/<name> (gRPC), "
                       "schedule/<federation> (a cron run), system/scheduler.")
    actor_name: str = Field(description="The token's name, or the certificate's.")
    role: str = Field(description="The actor's role: viewer, operator, admin or service.")
    detail: dict[str, str] = Field(description="A few words more, for some actions.")
