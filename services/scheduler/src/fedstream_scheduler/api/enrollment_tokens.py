"""Enrollment tokens: /api/v1/enrollment-tokens, one-time tokens with which agents enroll."""

from fastapi import APIRouter, Response

from fedstream.state import AuditAction, EnrollmentTokenRecord
from fedstream_scheduler.api import schemas as s
from fedstream_scheduler.api.deps import Limit, Operator, PageToken, TokenId, Who, paginate
from fedstream_scheduler.api.guard import ParsedRoute

router = APIRouter(prefix="/api/v1/enrollment-tokens", tags=["enrollment"], route_class=ParsedRoute)


def enrollment_body(t: EnrollmentTokenRecord) -> s.EnrollmentToken:
    return s.EnrollmentToken(token_id=t.token_id, agent_id=t.agent_id, name=t.name,
                             created_unix=t.created_unix, expires_unix=t.expires_unix)


@router.post("", status_code=201)
async def create_enrollment_token(
    body: s.EnrollmentTokenCreate, admin: Operator, who: Who
) -> s.EnrollmentTokenCreated:
    """A one-time token with which an agent enrolls (gets its first certificate)."""
    rec, secret = admin.enrollment.create_token(body.agent_id, body.ttl_s, body.name)
    admin.audit.record(who, AuditAction.ENROLLMENT_TOKEN_CREATE, f"enrollment_token/{rec.token_id}",
                       agent_id=rec.agent_id or "any")
    return s.EnrollmentTokenCreated(**enrollment_body(rec).model_dump(), token=secret)


@router.get("")
async def list_enrollment_tokens(
    admin: Operator, limit: Limit = 50, page_token: PageToken = ""
) -> s.Page[s.EnrollmentToken]:
    """Tokens not used yet and not expired."""
    items, nxt = paginate(admin.enrollment.list_tokens(), limit, page_token)
    return s.Page[s.EnrollmentToken](items=[enrollment_body(t) for t in items], next_page_token=nxt)


@router.delete("/{token_id}", status_code=204)
async def delete_enrollment_token(token_id: TokenId, admin: Operator, who: Who) -> Response:
    admin.enrollment.delete_token(token_id)
    admin.audit.record(who, AuditAction.ENROLLMENT_TOKEN_DELETE, f"enrollment_token/{token_id}")
    return Response(status_code=204)
