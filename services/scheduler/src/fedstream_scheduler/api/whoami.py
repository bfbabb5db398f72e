"""Who a token is: /api/v1/whoami, for any valid token."""

from fastapi import APIRouter

from fedstream_scheduler.api.deps import Viewer, Who
from fedstream_scheduler.api.guard import ParsedRoute
from fedstream_scheduler.api.schemas_console import WhoAmI

router = APIRouter(prefix="/api/v1/whoami", tags=["tokens"], route_class=ParsedRoute)


@router.get("")
async def whoami(admin: Viewer, who: Who) -> WhoAmI:
    """The token's id, name, role and tenant."""
    return WhoAmI.model_validate({"token_id": who.id, "name": who.name, "role": who.role, "tenant": admin.tenant})
