"""Releases, channels and site-requested runs: /api/v1/federations/{id}/releases, /channels,
/run-requests, /api/v1/releases/{id} and /api/v1/run-requests/{id}; a version's export archive,
/api/v1/models/{run}/{n}/export."""

import dataclasses
from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import StreamingResponse

from fedstream.state import ReleaseRecord, RunRequestRecord
from fedstream_scheduler.api import schemas as s
from fedstream_scheduler.api import schemas_releases as r
from fedstream_scheduler.api.deps import (
    Admin,
    FederationId,
    Limit,
    Number,
    Operator,
    PageToken,
    RunId,
    Viewer,
    Who,
    paginate,
)
from fedstream_scheduler.api.guard import ParsedRoute
from fedstream_scheduler.export import build_export
from fedstream_scheduler.site_policy import CHANNEL

router = APIRouter(tags=["releases"], route_class=ParsedRoute)

ReleaseId = Annotated[str, Path(pattern="^rel-[0-9a-f]{12}$", description="A release's id.")]
RequestId = Annotated[str, Path(pattern="^req-[0-9a-f]{12}$", description="A run request's id.")]
ChannelFilter = Annotated[str, Query(pattern=f"^$|{CHANNEL}", description="Only this channel's releases.")]
StateFilter = Annotated[str, Query(pattern="^(|proposed|released|rejected|superseded)$",
                                   description="Only releases in this state.")]


def release_body(rec: ReleaseRecord) -> r.Release:
    return r.Release.model_validate(dataclasses.asdict(rec))


def request_body(rec: RunRequestRecord) -> r.RunRequest:
    return r.RunRequest.model_validate(dataclasses.asdict(rec))


@router.post("/api/v1/federations/{federation_id}/releases", status_code=201)
async def propose_release(federation_id: FederationId, body: r.ReleasePropose, admin: Operator, who: Who) -> r.Release:
    """Proposes a version of one of the federation's runs for a channel of its release policy;
    409 when the channel requires a metric the version does not reach."""
    return release_body(admin.releases.propose(federation_id, body.channel, body.version, body.note, who))


@router.get("/api/v1/federations/{federation_id}/releases")
async def list_releases(federation_id: FederationId, admin: Viewer, channel: ChannelFilter = "",
                        state: StateFilter = "", limit: Limit = 50, page_token: PageToken = "") -> s.Page[r.Release]:
    items, nxt = paginate(admin.releases.list(federation_id, channel, state), limit, page_token)
    return s.Page[r.Release](items=[release_body(x) for x in items], next_page_token=nxt)


@router.get("/api/v1/federations/{federation_id}/channels")
async def list_channels(federation_id: FederationId, admin: Viewer) -> dict[str, str]:
    """Each release channel of the federation with the version it points at (empty before its
    first release)."""
    return {name: rec.version if rec else "" for name, rec in sorted(admin.releases.channels(federation_id).items())}


@router.get("/api/v1/releases/{release_id}")
async def get_release(release_id: ReleaseId, admin: Viewer) -> r.Release:
    return release_body(admin.state.get_release(release_id))


@router.post("/api/v1/releases/{release_id}/approve")
async def approve_release(release_id: ReleaseId, admin: Admin, who: Who) -> r.Release:
    """An admin's approval (the proposer's token does not count: 403; twice: 409). The approval
    that completes the counts releases the version."""
    return release_body(admin.releases.approve(release_id, who))


@router.post("/api/v1/releases/{release_id}/reject")
async def reject_release(release_id: ReleaseId, body: r.ReleaseReject, admin: Admin, who: Who) -> r.Release:
    return release_body(admin.releases.reject(release_id, body.reason, who))


@router.get("/api/v1/federations/{federation_id}/run-requests")
async def list_run_requests(federation_id: FederationId, admin: Viewer, limit: Limit = 50,
                            page_token: PageToken = "") -> s.Page[r.RunRequest]:
    items, nxt = paginate(admin.run_requests.list(federation_id), limit, page_token)
    return s.Page[r.RunRequest](items=[request_body(x) for x in items], next_page_token=nxt)


@router.post("/api/v1/run-requests/{request_id}/approve")
async def approve_run_request(request_id: RequestId, admin: Operator, who: Who) -> r.RunRequest:
    """Starts the requested run (as the federation's run now does)."""
    return request_body(admin.run_requests.approve(request_id, who))


@router.post("/api/v1/run-requests/{request_id}/deny")
async def deny_run_request(request_id: RequestId, body: r.RunRequestDeny, admin: Operator, who: Who) -> r.RunRequest:
    return request_body(admin.run_requests.deny(request_id, body.reason, who))


@router.get(
    "/api/v1/models/{run_id}/{number}/export", response_class=StreamingResponse, tags=["models"],
    responses={200: {"content": {"application/x-tar": {}}, "description": "The archive (tar)."}},
)
async def export_model(run_id: RunId, number: Number, admin: Viewer) -> StreamingResponse:
    """The version as a self-describing tar: model.safetensors, lineage.json, card.md, card.json and
    MANIFEST.json (last: each member's SHA-256 and size, the data's SHA-256, its releases)."""
    export = build_export(admin, f"{run_id}/{number}")
    return StreamingResponse(export.stream(), media_type="application/x-tar", headers={
        "Content-Disposition": f'attachment; filename="{run_id}-{number}.tar"',
        "X-Fedstream-Sha256": export.reader.info.sha256,
    })
