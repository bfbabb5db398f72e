"""The REST admin API's bodies for releases, channels and site-requested runs."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from fedstream_scheduler.api.schemas import VERSION, VersionField
from fedstream_scheduler.site_policy import CHANNEL, TEXT_PATTERN, unshown


def _shown(value: str) -> str:
    if problem := unshown(value):
        raise ValueError(problem)
    return value


# A note or reason that people read, in a terminal too: no control characters (the pattern
# documents what _shown refuses, with a message naming the character).
Text = Annotated[str, AfterValidator(_shown), Field(json_schema_extra={"pattern": TEXT_PATTERN})]

ReleaseState = Literal["proposed", "released", "rejected", "superseded"]


class ReleasePropose(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: str = Field(pattern=CHANNEL, description="One of the federation's release channels, e.g. production.")
    version: VersionField = Field(pattern=VERSION, description="RUN/NNNNNN: a version of one of the federation's runs.")
    note: Text = Field("", max_length=1000, description="Why this version, for the approvers.")


class ReleaseReject(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Text = Field(min_length=1, max_length=1000, description="Why the release is rejected.")


class Approval(BaseModel):
    kind: Literal["admin", "site"]
    id: str = Field(description="The approving admin (token/<id>) or site (its agent id).")
    name: str
    unix: float


class Requirement(BaseModel):
    metric: str
    min: float


class Needed(BaseModel):
    admins: int = Field(description="Admin approvals needed.")
    sites: int = Field(description="Site approvals needed (agents that took part in the version).")
    require: Requirement | None = Field(description="The metric the version had to reach when proposed.")


class Release(BaseModel):
    release_id: str
    federation_id: str
    channel: str
    version: str
    state: ReleaseState
    proposed_by: str = Field(description="Who proposed it, as the audit log names actors (token/<id>).")
    proposed_unix: float
    note: str
    approvals: list[Approval]
    needed: Needed
    decided_unix: float = Field(description="When it was released or rejected; 0 while proposed.")
    reason: str = Field(description="A rejection's reason, or what superseded it.")


class RunRequestDeny(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Text = Field(min_length=1, max_length=500, description="Why the run is not started.")


class RunRequest(BaseModel):
    request_id: str
    federation_id: str
    agent_id: str = Field(description="The agent (its certificate's identity) that asked.")
    reason: str
    state: Literal["pending", "started", "denied"]
    requested_unix: float
    decided_unix: float
    decided_by: str = Field(description="policy/auto, or the operator (token/<id>) who decided.")
    run_id: str = Field(description="The run started; empty unless started.")
    deny_reason: str
