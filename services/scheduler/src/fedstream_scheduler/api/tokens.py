"""API tokens: /api/v1/tokens (admins only)."""

from fastapi import APIRouter, Response

from fedstream.state import AuditAction, TokenRecord
from fedstream_scheduler.api import schemas as s
from fedstream_scheduler.api.deps import Admin, Limit, PageToken, TokenId, Who, paginate
from fedstream_scheduler.api.guard import ParsedRoute

router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"], route_class=ParsedRoute)


def token_body(t: TokenRecord) -> s.Token:
    return s.Token(token_id=t.token_id, role=t.role, name=t.name, created_unix=t.created_unix)  # type: ignore[arg-type]


@router.post("", status_code=201)
async def create_token(body: s.TokenCreate, admin: Admin, who: Who) -> s.TokenCreated:
    rec, secret = admin.tokens.create(body.role, body.name)
    admin.audit.record(who, AuditAction.TOKEN_CREATE, f"token/{rec.token_id}", role=rec.role, name=rec.name)
    return s.TokenCreated(**token_body(rec).model_dump(), token=secret)


@router.get("")
async def list_tokens(admin: Admin, limit: Limit = 50, page_token: PageToken = "") -> s.Page[s.Token]:
    items, nxt = paginate(admin.state.list_tokens(), limit, page_token)
    return s.Page[s.Token](items=[token_body(t) for t in items], next_page_token=nxt)


@router.delete("/{token_id}", status_code=204)
async def delete_token(token_id: TokenId, admin: Admin, who: Who) -> Response:
    admin.state.delete_token(token_id)
    admin.audit.record(who, AuditAction.TOKEN_DELETE, f"token/{token_id}")
    return Response(status_code=204)
