"""Runs and their rounds: /api/v1/runs, and starting a federation's run."""

from typing import Annotated, Any

from fastapi import APIRouter, Query

from fedstream.rounds import RoundKind, RoundState, RunState, combine_metrics
from fedstream.state import RoundRecord, RunRecord
from fedstream_scheduler.api import schemas as s
from fedstream_scheduler.api.deps import (
    FederationId,
    Limit,
    Operator,
    PageToken,
    RunId,
    Viewer,
    Who,
    paginate,
)
from fedstream_scheduler.api.guard import ParsedRoute
from fedstream_scheduler.privacy_ledger import round_epsilons

router = APIRouter(tags=["runs"], route_class=ParsedRoute)

RUN_STATES = "|".join(RunState)
ROUND_STATES = "|".join(RoundState)


def run_body(rec: RunRecord, rounds: list[RoundRecord] | None = None) -> dict[str, Any]:
    return {
        "run_id": rec.run_id, "federation": rec.federation, "state": rec.state.value, "reason": rec.reason,
        "trigger": rec.trigger, "started_by": rec.started_by, "latest_version": rec.latest_version, "created_unix": rec.created_unix,
        "finished_unix": rec.finished_unix, "spec": rec.spec,
        "rounds_committed": sum(r.kind == RoundKind.TRAIN and r.state == RoundState.COMMITTED for r in rounds or []),
    }


def round_body(r: RoundRecord, epsilons: dict[int, float] | None = None) -> s.Round:
    return s.Round(
        round=r.round, kind=r.kind.value, state=r.state.value, participants=r.participants,
        stragglers=r.stragglers, updates=len(r.reports), base_version=r.base_version, version=r.version,
        reason=r.reason, started_unix=r.started_unix, finished_unix=r.finished_unix,
        duration_s=(r.finished_unix - r.started_unix) if r.finished_unix else None,
        bytes_received=sum(x.bytes_received for x in r.reports),
        metrics=r.metrics,
        update_metrics=combine_metrics(r.reports),
        epsilon=(epsilons or {}).get(r.round),
    )


@router.post("/api/v1/federations/{federation_id}/runs", status_code=201)
async def start_run(federation_id: FederationId, body: s.RunStart, admin: Operator, who: Who) -> s.Run:
    rec = admin.federations.start_run(federation_id, body.run_id, body.initial_version, by=who)
    return s.Run(**run_body(rec, []))


@router.get("/api/v1/runs")
async def list_runs(
    admin: Viewer, limit: Limit = 50, page_token: PageToken = "",
    federation: Annotated[str, Query(max_length=63, description="Only this federation's runs.")] = "",
    state: Annotated[str, Query(pattern=f"^({RUN_STATES})?$", description="Only runs in this state.")] = "",
) -> s.Page[s.Run]:
    items, nxt = paginate(admin.runs.list_runs(federation, state), limit, page_token)
    return s.Page[s.Run](
        items=[s.Run(**run_body(r, admin.state.list_rounds(r.run_id))) for r in items], next_page_token=nxt
    )


@router.get("/api/v1/runs/{run_id}")
async def get_run(run_id: RunId, admin: Viewer) -> s.RunDetail:
    run, rounds = admin.runs.get_run(run_id)
    epsilons = round_epsilons(admin.state, run)
    return s.RunDetail(**run_body(run, rounds), rounds=[round_body(r, epsilons) for r in rounds])


@router.get("/api/v1/runs/{run_id}/rounds")
async def list_rounds(
    run_id: RunId, admin: Viewer, limit: Limit = 50, page_token: PageToken = "",
    state: Annotated[str, Query(pattern=f"^({ROUND_STATES})?$", description="Only rounds in this state.")] = "",
) -> s.Page[s.Round]:
    run, rounds = admin.runs.get_run(run_id)
    items, nxt = paginate([r for r in rounds if not state or r.state == state], limit, page_token)
    epsilons = round_epsilons(admin.state, run)
    return s.Page[s.Round](items=[round_body(r, epsilons) for r in items], next_page_token=nxt)


@router.post("/api/v1/runs/{run_id}/cancel")
async def cancel_run(run_id: RunId, admin: Operator, who: Who) -> s.Run:
    """Cancels the run: its unfinished round is abandoned on the aggregator (nothing of it is
    committed after the cancel) and recorded as cancelled; its agents stop its work."""
    rec = await admin.runs.cancel_run(run_id, by=who)
    return s.Run(**run_body(rec, admin.state.list_rounds(run_id)))
