"""Releases of a federation's model versions to named channels: an operator proposes a version,
admins (and, when the channel's policy asks, the sites that trained it) approve, and once the
approvals are in the channel points at the version, the channel's previous release is
superseded and the version is pinned. Every step is audited."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable
from typing import Any

from fedstream.errors import (
    AlreadyApproved,
    AlreadyExists,
    FailedPrecondition,
    FedstreamError,
    MetricBelowThreshold,
    ModelNotFound,
    NotFound,
    PermissionDenied,
    ReleaseDecided,
)
from fedstream.ids import parse_version
from fedstream.state import AuditAction, ReleaseRecord, StateStore
from fedstream_scheduler.audit import Actor, Auditor
from fedstream_scheduler.model_catalog import ModelCatalog
from fedstream_scheduler.site_policy import ChannelPolicy, channel_policy

PROPOSED, RELEASED, REJECTED, SUPERSEDED = "proposed", "released", "rejected", "superseded"
STATES = (PROPOSED, RELEASED, REJECTED, SUPERSEDED)


def counts(rec: ReleaseRecord) -> tuple[int, int]:
    """(admin approvals, site approvals) the release has."""
    admins = sum(1 for a in rec.approvals if a["kind"] == "admin")
    return admins, len(rec.approvals) - admins


def complete(rec: ReleaseRecord) -> bool:
    admins, sites = counts(rec)
    return admins >= int(rec.needed.get("admins", 1)) and sites >= int(rec.needed.get("sites", 0))


def order(rec: ReleaseRecord) -> tuple[float, float, str]:
    """Which of a channel's releases is the later: released later, then proposed later."""
    return rec.decided_unix, rec.proposed_unix, rec.release_id


def metric_values(catalog: ModelCatalog, state: StateStore, version: str, metric: str) -> list[float]:
    """Every value of ``metric`` recorded for the version: its federated evaluations', then the
    metrics of the round that committed it."""
    values: list[float] = []
    store = catalog.store
    if store is not None:
        for record in store.evaluations(version).values():
            value = record.get("metrics", {}).get(metric)
            if isinstance(value, int | float):
                values.append(float(value))
    run_id, _ = parse_version(version)
    for rnd in state.list_rounds(run_id):
        if rnd.version == version and metric in rnd.metrics:
            values.append(float(rnd.metrics[metric]))
    return values


class ReleaseService:
    """Proposes, approves, rejects and lists one tenant's releases."""

    def __init__(self, state: StateStore, models: ModelCatalog, audit: Auditor, clock: Callable[[], float]) -> None:
        self.state = state
        self.models = models
        self.audit = audit
        self.clock = clock

    def _check_version(self, federation_id: str, version: str) -> None:
        """Raises ModelNotFound unless one of the federation's runs made the (stored) version."""
        run_id, _ = parse_version(version)
        try:
            run = self.state.get_run(run_id)
        except FedstreamError:
            run = None
        if run is None or run.federation != federation_id:
            raise ModelNotFound(f"model {version} is not a version of federation {federation_id!r}")
        self.models.info(version)

    def _check_metric(self, policy: ChannelPolicy, channel: str, version: str) -> None:
        if policy.require is None:
            return
        metric, least = policy.require.metric, policy.require.min
        values = metric_values(self.models, self.state, version, metric)
        if not values:
            raise MetricBelowThreshold(
                f"channel {channel!r} requires {metric} >= {least:g}: version {version} has no evaluation of {metric}"
            )
        if max(values) < least:
            raise MetricBelowThreshold(
                f"channel {channel!r} requires {metric} >= {least:g}: version {version} has {metric} {max(values):g}"
            )

    def propose(self, federation_id: str, channel: str, version: str, note: str, by: Actor) -> ReleaseRecord:
        """A new proposed release; raises FederationNotFound, ChannelNotFound, ModelNotFound,
        MetricBelowThreshold, or AlreadyExists when the version is proposed for the channel already."""
        fed = self.state.get_federation(federation_id)
        policy = channel_policy(fed.releases, federation_id, channel)
        self._check_version(federation_id, version)
        self._check_metric(policy, channel, version)
        for other in self.state.list_releases(federation_id):
            if other.channel == channel and other.version == version and other.state == PROPOSED:
                raise AlreadyExists(f"version {version} is proposed for channel {channel!r} already "
                                    f"(release {other.release_id})")
        needed = {"admins": policy.admin_approvals, "sites": policy.site_approvals,
                  "require": policy.require.model_dump() if policy.require else None}
        rec = ReleaseRecord(f"rel-{secrets.token_hex(6)}", federation_id, channel, version, PROPOSED, by.label,
                            self.clock(), note, [], needed)
        self.state.create_release(rec)
        self.audit.record(by, AuditAction.RELEASE_PROPOSE, f"release/{rec.release_id}",
                          federation=federation_id, channel=channel, version=version)
        return rec

    def _keep(self, rec: ReleaseRecord, approval: dict[str, Any]) -> None:
        """Pins the version when ``approval`` would release it, before the release changes, so
        that a version retention deleted meanwhile is never released: raises FailedPrecondition
        then (the approval is not recorded)."""
        if rec.state != PROPOSED or any(a["kind"] == approval["kind"] and a["id"] == approval["id"]
                                        for a in rec.approvals):
            return
        if not complete(dataclasses.replace(rec, approvals=[*rec.approvals, approval])):
            return
        try:
            self.models.pin(rec.version, True)
        except ModelNotFound:
            raise FailedPrecondition(f"version {rec.version} of release {rec.release_id} is no longer stored "
                                     "(deleted by retention?): reject the release") from None

    def _approve(self, rec: ReleaseRecord, approval: dict[str, Any]) -> tuple[ReleaseRecord, bool]:
        """Adds an approval atomically; returns the release and whether this approval released it."""
        self._keep(rec, approval)
        now = self.clock()
        published: list[bool] = []

        def add(rec: ReleaseRecord) -> ReleaseRecord:
            if rec.state != PROPOSED:
                raise ReleaseDecided(f"release {rec.release_id} is {rec.state}: it takes no approval")
            if any(a["kind"] == approval["kind"] and a["id"] == approval["id"] for a in rec.approvals):
                raise AlreadyApproved(f"{approval['kind']} {approval['id']} approved release {rec.release_id} already")
            rec = dataclasses.replace(rec, approvals=[*rec.approvals, {**approval, "unix": now}])
            published.clear()
            if complete(rec):
                published.append(True)
                rec = dataclasses.replace(rec, state=RELEASED, decided_unix=now)
            return rec

        rec = self.state.update_release(rec.release_id, add)
        return rec, bool(published)

    def approve(self, release_id: str, by: Actor) -> ReleaseRecord:
        """An admin's approval; raises ReleaseNotFound, PermissionDenied for the proposer's own
        token, AlreadyApproved, or ReleaseDecided once it is no longer proposed."""
        rec = self.state.get_release(release_id)
        if by.label == rec.proposed_by:
            raise PermissionDenied(f"{by.label} proposed release {release_id}: another admin must approve it")
        rec, published = self._approve(rec, {"kind": "admin", "id": by.label, "name": by.name})
        self.audit.record(by, AuditAction.RELEASE_APPROVE, f"release/{release_id}", kind="admin")
        return self._publish(rec, by) if published else rec

    def participants(self, version: str) -> set[str]:
        """The agents whose updates counted in the rounds of the version's run up to the version."""
        run_id, number = parse_version(version)
        return {rep.agent_id for rnd in self.state.list_rounds(run_id) if rnd.round <= number for rep in rnd.reports}

    def approve_site(self, release_id: str, agent_id: str) -> ReleaseRecord:
        """A site's approval through its agent; raises PermissionDenied when the agent took no
        part in the version, AlreadyApproved, ReleaseDecided or ReleaseNotFound."""
        rec = self.state.get_release(release_id)
        if agent_id not in self.participants(rec.version):
            raise PermissionDenied(f"agent {agent_id!r} took no part in {rec.version}: only its sites approve "
                                   f"release {release_id}")
        rec, published = self._approve(rec, {"kind": "site", "id": agent_id, "name": agent_id})
        by = Actor("agent", agent_id, agent_id, "agent")
        self.audit.record(by, AuditAction.RELEASE_APPROVE, f"release/{release_id}", kind="site")
        return self._publish(rec, by) if published else rec

    def _publish(self, rec: ReleaseRecord, by: Actor) -> ReleaseRecord:
        """The channel now points at the release: the version is pinned (kept from retention) and
        the channel's earlier releases are superseded. Of two releases published at once, the
        later (``order``) stays, whichever finishes first: the earlier is superseded by it."""
        self.models.pin(rec.version, True)
        self.audit.record(by, AuditAction.RELEASE_PUBLISH, f"release/{rec.release_id}",
                          channel=rec.channel, version=rec.version)
        others = [o for o in self.state.list_releases(rec.federation_id)
                  if o.channel == rec.channel and o.state == RELEASED and o.release_id != rec.release_id]
        for other in others:
            if order(other) < order(rec):
                self._supersede(other, rec)
        later = [o for o in others if order(o) > order(rec)]
        return self._supersede(rec, max(later, key=order)) if later else rec

    def _supersede(self, old: ReleaseRecord, new: ReleaseRecord) -> ReleaseRecord:
        return self.state.update_release(old.release_id, lambda o: dataclasses.replace(
            o, state=SUPERSEDED, reason=f"superseded by {new.release_id} ({new.version})",
        ) if o.state == RELEASED else o)

    def reject(self, release_id: str, reason: str, by: Actor) -> ReleaseRecord:
        """An admin ends a proposed release; raises ReleaseNotFound or ReleaseDecided."""

        def end(rec: ReleaseRecord) -> ReleaseRecord:
            if rec.state != PROPOSED:
                raise ReleaseDecided(f"release {rec.release_id} is {rec.state}: it cannot be rejected")
            return dataclasses.replace(rec, state=REJECTED, decided_unix=self.clock(), reason=reason)

        rec = self.state.update_release(release_id, end)
        self.audit.record(by, AuditAction.RELEASE_REJECT, f"release/{release_id}", reason=reason)
        return rec

    def list(self, federation_id: str, channel: str = "", state: str = "") -> list[ReleaseRecord]:
        """The federation's releases, oldest first; raises FederationNotFound."""
        self.state.get_federation(federation_id)
        return [r for r in self.state.list_releases(federation_id)
                if (not channel or r.channel == channel) and (not state or r.state == state)]

    def channels(self, federation_id: str) -> dict[str, ReleaseRecord | None]:
        """Each channel of the federation's policy with its current release (None: none yet)."""
        fed = self.state.get_federation(federation_id)
        current: dict[str, ReleaseRecord | None] = {name: None for name in fed.releases.get("channels", {})}
        for rec in self.state.list_releases(federation_id):
            best = current.get(rec.channel)
            if rec.channel in current and rec.state == RELEASED and (best is None or order(rec) > order(best)):
                current[rec.channel] = rec
        return current

    def check_unpin(self, version: str) -> None:
        """Raises FailedPrecondition while a release channel points at the version: unpinned,
        retention could delete what the channel's sites install."""
        try:
            run = self.state.get_run(parse_version(version)[0])
            current = self.channels(run.federation) if run.federation else {}
        except FedstreamError:
            return  # not one of the tenant's versions, or its federation is gone: nothing released
        for channel, rec in sorted(current.items()):
            if rec is not None and rec.version == version:
                raise FailedPrecondition(f"model {version} is the current release of channel {channel!r} "
                                         f"(release {rec.release_id}): release another version first")

    def current(self, federation_id: str, channel: str) -> ReleaseRecord:
        """The channel's current release; raises ChannelNotFound, or NotFound when nothing is released."""
        fed = self.state.get_federation(federation_id)
        channel_policy(fed.releases, federation_id, channel)
        rec = self.channels(federation_id).get(channel)
        if rec is None:
            raise NotFound(f"channel {channel!r} of federation {federation_id!r} has no released version yet")
        return rec
