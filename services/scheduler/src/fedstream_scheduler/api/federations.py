"""Federations: /api/v1/federations."""

import json

from fastapi import APIRouter, Response

from fedstream.state import AuditAction, FederationRecord
from fedstream_scheduler.admin import AdminServices
from fedstream_scheduler.api import schemas as s
from fedstream_scheduler.api.deps import Admin, FederationId, Limit, PageToken, Viewer, Who, paginate
from fedstream_scheduler.api.guard import ParsedRoute
from fedstream_scheduler.cron import next_slot, schedule_problem
from fedstream_scheduler.privacy_ledger import federation_privacy
from fedstream_scheduler.site_policy import ReleasePolicy, SiteRequestPolicy

router = APIRouter(prefix="/api/v1/federations", tags=["federations"], route_class=ParsedRoute)


def schedule_body(schedule: dict[str, str], now: float) -> s.ScheduleState | None:
    if not schedule:
        return None
    broken = schedule_problem(schedule, now)
    return s.ScheduleState(**schedule, broken=broken or None,  # type: ignore[arg-type]
                           next_unix=None if broken else next_slot(schedule, now))


def federation_body(rec: FederationRecord, latest: str, admin: AdminServices) -> s.Federation:
    return s.Federation(
        federation_id=rec.federation_id, description=rec.description, spec=rec.spec,  # type: ignore[arg-type]
        schedule=schedule_body(rec.schedule, admin.clock()),
        created_unix=rec.created_unix, updated_unix=rec.updated_unix, latest_version=latest,
        releases=ReleasePolicy.model_validate(rec.releases or {}),
        site_requests=SiteRequestPolicy.model_validate(rec.site_requests or {}),
    )


@router.post("", status_code=201)
async def create_federation(body: s.FederationCreate, admin: Admin, who: Who) -> s.Federation:
    rec = admin.federations.create(
        body.federation_id, body.spec.model_dump(), body.description,
        body.schedule.model_dump() if body.schedule else None,
        body.releases.model_dump(mode="json") if body.releases else None,
        body.site_requests.model_dump(mode="json") if body.site_requests else None,
    )
    admin.audit.record(who, AuditAction.FEDERATION_CREATE, f"federation/{rec.federation_id}")
    return federation_body(rec, "", admin)


@router.get("")
async def list_federations(admin: Viewer, limit: Limit = 50, page_token: PageToken = "") -> s.Page[s.Federation]:
    items, nxt = paginate(admin.state.list_federations(), limit, page_token)
    return s.Page[s.Federation](
        items=[federation_body(f, admin.federations.latest_version(f.federation_id), admin) for f in items],
        next_page_token=nxt,
    )


@router.get("/{federation_id}")
async def get_federation(federation_id: FederationId, admin: Viewer) -> s.Federation:
    rec = admin.state.get_federation(federation_id)
    return federation_body(rec, admin.federations.latest_version(federation_id), admin)


@router.get("/{federation_id}/privacy")
async def get_federation_privacy(federation_id: FederationId, admin: Viewer) -> s.PrivacyReport:
    """The differential privacy the federation's runs have spent: every charged training round
    with the ledger's epsilon after it, and the total against the budget it has now (a round is
    charged when it opens; a failed round stays charged)."""
    return s.PrivacyReport(**federation_privacy(admin.state, federation_id))


@router.patch("/{federation_id}")
async def update_federation(
    federation_id: FederationId, body: s.FederationUpdate, admin: Admin, who: Who
) -> s.Federation:
    """Changes a federation: its description, its run spec (a JSON merge patch, RFC 7386: nested
    blocks merge field by field, null deletes a field; the result is validated whole, and a
    spec that does not validate changes nothing), its schedule (merged field by field),
    `clear_schedule`, or its release and site-request policies (JSON merge patches, validated whole).
    A change of its differential privacy (a budget raised mid-way, a delta changed) is audited with
    the settings before and after."""
    before = admin.state.get_federation(federation_id).spec.get("privacy") if body.spec is not None else None
    rec = admin.federations.update(
        federation_id, spec=body.spec, description=body.description,
        schedule=body.schedule.model_dump() if body.schedule else None, clear_schedule=body.clear_schedule,
        releases=body.releases, site_requests=body.site_requests,
    )
    # What the request changes: a clear_schedule of false changes nothing.
    changed = ", ".join(sorted(k for k, v in body.model_dump(exclude_unset=True).items()
                               if k != "clear_schedule" or v))
    privacy = {} if before == rec.spec.get("privacy") or body.spec is None else {
        "privacy": f"{json.dumps(before, sort_keys=True)} -> {json.dumps(rec.spec.get('privacy'), sort_keys=True)}"}
    admin.audit.record(who, AuditAction.FEDERATION_UPDATE, f"federation/{federation_id}", fields=changed, **privacy)
    return federation_body(rec, admin.federations.latest_version(federation_id), admin)


@router.delete("/{federation_id}", status_code=204)
async def delete_federation(federation_id: FederationId, admin: Admin, who: Who) -> Response:
    admin.federations.delete(federation_id)
    admin.audit.record(who, AuditAction.FEDERATION_DELETE, f"federation/{federation_id}")
    return Response(status_code=204)
