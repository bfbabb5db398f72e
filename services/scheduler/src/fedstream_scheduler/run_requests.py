"""Runs that a federation's sites ask for through their agents: started at once, kept for an
operator's decision, or refused, as the federation's ``site_requests`` policy says, at most
``max_per_site_per_day`` per site. Requests and decisions are audited."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable
from datetime import UTC, datetime

from fedstream.errors import AgentNotFound, PermissionDenied, RateLimited, RequestDecided, RequestsRefused
from fedstream.state import AuditAction, RunRequestRecord, StateStore
from fedstream.state.documents import QuotaFull
from fedstream_scheduler.audit import Actor, Auditor
from fedstream_scheduler.federations import FederationService
from fedstream_scheduler.site_policy import DAY_S, site_request_policy

MAX_REASON = 500
PENDING, STARTED, DENIED = "pending", "started", "denied"


def agent_actor(agent_id: str) -> Actor:
    """An agent acting through its certificate, as the audit log names it: agent/<id>."""
    return Actor("agent", agent_id, agent_id, "agent")


def check_member(state: StateStore, federations: FederationService, federation_id: str, agent_id: str) -> None:
    """Raises FederationNotFound, or PermissionDenied unless the agent belongs to the federation:
    enabled and offering its task (or any task), or one of its runs' participants."""
    fed = state.get_federation(federation_id)
    try:
        agent = state.get_agent(agent_id)
    except AgentNotFound:
        agent = None
    if agent is not None and not agent.disabled and (not agent.tasks or fed.spec.get("task") in agent.tasks):
        return
    for run in federations.runs_of(federation_id):
        if any(agent_id in rnd.participants for rnd in state.list_rounds(run.run_id)):
            return
    raise PermissionDenied(f"agent {agent_id!r} does not belong to federation {federation_id!r} "
                           f"(it offers no task {fed.spec.get('task')!r} and took part in none of its runs)")


class RunRequestService:
    """Site-requested runs of one tenant's federations."""

    def __init__(self, state: StateStore, federations: FederationService, audit: Auditor,
                 clock: Callable[[], float]) -> None:
        self.state = state
        self.federations = federations
        self.audit = audit
        self.clock = clock

    def request(self, federation_id: str, agent_id: str, reason: str) -> RunRequestRecord:
        """An agent's request; raises FederationNotFound, PermissionDenied (not a member),
        RequestsRefused (the policy refuses), RateLimited (naming when a slot frees), or
        InvalidArgument from starting the run."""
        check_member(self.state, self.federations, federation_id, agent_id)
        policy = site_request_policy(self.state.get_federation(federation_id).site_requests)
        if policy.mode == "refuse":
            raise RequestsRefused(f"federation {federation_id!r} refuses site-requested runs "
                                  "(its policy site_requests.mode is refuse)")
        now = self.clock()
        try:
            self.state.take_quota_slot(f"run_request:{federation_id}:{agent_id}", now,
                                       policy.max_per_site_per_day, DAY_S)
        except QuotaFull as e:
            at = datetime.fromtimestamp(e.frees_unix, UTC).isoformat(timespec="seconds")
            raise RateLimited(
                f"agent {agent_id!r} made {policy.max_per_site_per_day} run requests of federation "
                f"{federation_id!r} within 24 hours (site_requests.max_per_site_per_day); the next is "
                f"allowed at {at} (in {max(0.0, e.frees_unix - now):.0f} s)"
            ) from None
        rec = RunRequestRecord(f"req-{secrets.token_hex(6)}", federation_id, agent_id, reason, PENDING, now)
        self.state.create_run_request(rec)
        self.audit.record(agent_actor(agent_id), AuditAction.RUN_REQUEST, f"run_request/{rec.request_id}",
                          federation=federation_id, mode=policy.mode)
        if policy.mode == "auto":
            return self._start(rec.request_id, "policy/auto", agent_actor(agent_id))
        return rec

    def _claim(self, request_id: str, decided_by: str, state: str, deny_reason: str = "") -> RunRequestRecord:
        def decide(rec: RunRequestRecord) -> RunRequestRecord:
            if rec.state != PENDING:
                raise RequestDecided(f"run request {rec.request_id} is {rec.state} already")
            run_id = rec.request_id if state == STARTED else ""
            return dataclasses.replace(rec, state=state, decided_unix=self.clock(), decided_by=decided_by,
                                       run_id=run_id, deny_reason=deny_reason)

        return self.state.update_run_request(request_id, decide)

    def _start(self, request_id: str, decided_by: str, by: Actor) -> RunRequestRecord:
        rec = self._claim(request_id, decided_by, STARTED)
        try:
            self.federations.start_run(rec.federation_id, rec.run_id, trigger="site_request", by=by)
        except Exception:
            self.state.update_run_request(request_id, lambda r: dataclasses.replace(
                r, state=PENDING, decided_unix=0.0, decided_by="", run_id=""))
            raise
        return rec

    def approve(self, request_id: str, by: Actor) -> RunRequestRecord:
        """An operator starts the requested run; raises RunRequestNotFound or RequestDecided."""
        rec = self._start(request_id, by.label, by)
        self.audit.record(by, AuditAction.RUN_REQUEST_APPROVE, f"run_request/{request_id}", run=rec.run_id)
        return rec

    def deny(self, request_id: str, reason: str, by: Actor) -> RunRequestRecord:
        """An operator refuses the request; raises RunRequestNotFound or RequestDecided."""
        rec = self._claim(request_id, by.label, DENIED, reason)
        self.audit.record(by, AuditAction.RUN_REQUEST_DENY, f"run_request/{request_id}", reason=reason)
        return rec

    def list(self, federation_id: str) -> list[RunRequestRecord]:
        """The federation's requests, oldest first; raises FederationNotFound."""
        self.state.get_federation(federation_id)
        return self.state.list_run_requests(federation_id)
