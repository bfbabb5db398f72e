"""A federation's policies for what its sites and operators do with its models beyond training:
release channels (approvals needed, a metric a version must reach) and site-requested runs
(started at once, waiting for an operator, or refused; how many per site a day)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from fedstream.errors import ChannelNotFound, InvalidArgument

CHANNEL = r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$"
METRIC = r"^[A-Za-z0-9_.:/-]{1,128}$"
MAX_CHANNELS = 32
DAY_S = 86400.0
ChannelName = Annotated[str, StringConstraints(pattern=CHANNEL)]
# What a terminal or a bidirectional text renderer obeys rather than shows: C0 and C1 controls,
# DEL, and the bidirectional embeddings, overrides and isolates.
TEXT_PATTERN = r"^[^\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]*$"
_UNSHOWN = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


class Requirement(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    metric: str = Field(pattern=METRIC, description="An evaluation metric of the version, e.g. accuracy.")
    min: float = Field(description="The least value of the metric a version needs to be proposed.")


class ChannelPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    admin_approvals: int = Field(1, ge=0, le=100, description="Distinct admin tokens that must approve "
                                 "(the proposer's does not count).")
    site_approvals: int = Field(0, ge=0, le=10_000, description="Distinct agents that took part in the "
                                "version's run and must approve through their identity.")
    require: Requirement | None = Field(None, description="An evaluation metric the version must reach; "
                                        "null: none.")

    @model_validator(mode="after")
    def _someone_approves(self) -> ChannelPolicy:
        if self.admin_approvals + self.site_approvals < 1:
            raise ValueError("a channel needs at least one approval (admin_approvals or site_approvals)")
        return self


class ReleasePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channels: dict[ChannelName, ChannelPolicy] = Field(
        default_factory=dict, max_length=MAX_CHANNELS,
        description="Release channels by name (lowercase letters, digits and '-', e.g. production); a "
        "channel not listed takes no release.")


class SiteRequestPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["auto", "approve", "refuse"] = Field(
        "refuse", description="A site's request starts a run at once (auto), waits for an operator's "
        "approval (approve), or is refused (refuse).")
    max_per_site_per_day: int = Field(2, ge=1, le=1000, description="Requests one site may make in 24 hours.")


def unshown(value: str) -> str:
    """What in ``value`` is not shown as written ("" when nothing is): the first control
    character (a line break, an escape, a direction override) and where it is."""
    bad = _UNSHOWN.search(value)
    if bad is None:
        return ""
    return (f"holds the control character U+{ord(bad.group()):04X} at {bad.start()}: one line of text, "
            "without control characters, is allowed")


def check_text(name: str, value: str, most: int) -> str:
    """``value``, a note or reason people read (in a terminal too), when it is at most ``most``
    characters shown as written; raises InvalidArgument naming ``name`` and what is wrong."""
    if len(value) > most:
        raise InvalidArgument(f"{name}: {len(value)} characters, at most {most}")
    if problem := unshown(value):
        raise InvalidArgument(f"{name}: {problem}")
    return value


def _checked(model: type[BaseModel], doc: Any, block: str) -> dict[str, Any]:
    try:
        checked: dict[str, Any] = model.model_validate(doc).model_dump(mode="json")
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in (block, *first["loc"]) if p != "[key]")
        raise InvalidArgument(f"{where}: {first['msg']}") from None
    return checked


def check_releases(doc: Any) -> dict[str, Any]:
    """The release policy with its defaults filled in; raises InvalidArgument naming the field."""
    return _checked(ReleasePolicy, doc, "releases")


def check_site_requests(doc: Any) -> dict[str, Any]:
    """The site-request policy with its defaults filled in; raises InvalidArgument naming the field."""
    return _checked(SiteRequestPolicy, doc, "site_requests")


def channel_policy(releases: dict[str, Any], federation_id: str, channel: str) -> ChannelPolicy:
    """The policy of one of the federation's channels; raises ChannelNotFound naming it."""
    found = (releases or {}).get("channels", {}).get(channel)
    if found is None:
        known = ", ".join(sorted((releases or {}).get("channels", {}))) or "none"
        raise ChannelNotFound(
            f"channel {channel!r} is not a release channel of federation {federation_id!r} (its channels: {known})"
        )
    return ChannelPolicy.model_validate(found)


def site_request_policy(site_requests: dict[str, Any]) -> SiteRequestPolicy:
    """The federation's site-request policy (its defaults when it has none)."""
    return SiteRequestPolicy.model_validate(site_requests or {})
