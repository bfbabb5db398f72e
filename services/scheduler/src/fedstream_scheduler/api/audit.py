"""The audit log of operator actions: /api/v1/audit (operators and admins; viewers are refused,
since it names the tenant's tokens and who holds them)."""

from typing import Annotated

from fastapi import APIRouter, Query

from fedstream.state import AuditAction
from fedstream_scheduler.api import schemas as s
from fedstream_scheduler.api.deps import Limit, Operator, PageToken
from fedstream_scheduler.api.guard import ParsedRoute

router = APIRouter(prefix="/api/v1/audit", tags=["audit"], route_class=ParsedRoute)

ACTIONS = "|".join(a.value.replace(".", r"\.") for a in AuditAction)


@router.get("")
async def list_audit(
    admin: Operator, limit: Limit = 50, page_token: PageToken = "",
    action: Annotated[str, Query(pattern=f"^({ACTIONS})?$", description="Only this action, e.g. run.cancel.")] = "",
    actor: Annotated[str, Query(max_length=300, description="Only this actor, e.g. token/tok-1a2b3c4d5e6f.")] = "",
) -> s.Page[s.AuditEntry]:
    """The tenant's operator actions, oldest first, from after ``page_token``."""
    entries = admin.state.list_audit(int(page_token or "0"), limit + 1, action, actor)  # one more: is there a next?
    entries, nxt = entries[:limit], (str(entries[limit - 1].seq) if len(entries) > limit else None)
    return s.Page[s.AuditEntry](
        items=[s.AuditEntry(**vars(e)) for e in entries], next_page_token=nxt,
    )
