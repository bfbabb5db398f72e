"""What every router of the admin API shares: bearer authentication by role, the tenant it
resolves to, pagination, problem+json bodies and the annotated parameters."""

# No ``from __future__ import annotations``: FastAPI reads the annotations at run time.
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Path, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from fedstream import ids
from fedstream.errors import FedstreamError, InvalidArgument, PermissionDenied, Unauthenticated, Unavailable
from fedstream_scheduler.admin import AdminServices
from fedstream_scheduler.api import schemas as s
from fedstream_scheduler.audit import Actor
from fedstream_scheduler.tokens import Principal

T = TypeVar("T")
PROBLEM_TYPE = "https://fedstream.dev/problems/"
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": s.Problem, "content": {"application/problem+json": {}}, "description": HTTPStatus(code).phrase}
    for code in (400, 401, 403, 404, 409, 503)
}

bearer = HTTPBearer(auto_error=False, description="A token of the tenant (fst_...).")
# Where the request guard leaves the (services, principal) it authenticated, in the ASGI scope's state.
PRINCIPAL = "fedstream_principal"


def problem(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = s.Problem(type=PROBLEM_TYPE + code, title=HTTPStatus(status).phrase, status=status, detail=detail, code=code)
    return JSONResponse(body.model_dump(), status_code=status, media_type="application/problem+json", headers=headers)


def problem_of(e: FedstreamError, headers: dict[str, str] | None = None) -> JSONResponse:
    """The problem+json answer to a catalog error (a bearer challenge with Unauthenticated)."""
    if isinstance(e, Unauthenticated):
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    elif isinstance(e, Unavailable):
        headers = {**(headers or {}), "Retry-After": "1"}
    return problem(int(e.http_status), e.code, e.public, headers)


def paginate(items: Sequence[T], limit: int, page_token: str) -> tuple[list[T], str | None]:
    """One page of ``items`` and the token of the next (None on the last page)."""
    try:
        start = int(page_token or "0")
        if start < 0:
            raise ValueError
    except ValueError:
        raise InvalidArgument(f"page_token: {page_token!r} is not a token this API handed out") from None
    end = start + limit
    return list(items[start:end]), (str(end) if end < len(items) else None)


def tenants_of(request: Request) -> dict[str, AdminServices]:
    """The served tenants' services, by tenant (set by build_api)."""
    tenants: dict[str, AdminServices] = request.app.state.tenants
    return tenants


def authenticate(tenants: dict[str, AdminServices], secret: str | None) -> tuple[AdminServices, Principal]:
    """The services of the tenant whose token ``secret`` is, and its principal; raises
    Unauthenticated when there is no token or it is unknown or revoked."""
    if not secret:
        raise Unauthenticated("a bearer token is required")
    if not all(admin.live for admin in tenants.values()):
        raise Unavailable("the scheduler is starting (its state store not reached yet): try again shortly")
    for admin in tenants.values():
        who = admin.tokens.authenticate(secret)
        if who is not None:
            return admin, who
    raise Unauthenticated("unknown or revoked token")


def role(needed: str) -> Callable[..., Awaitable[AdminServices]]:
    """A dependency: the services of the bearer token's tenant, when its role is ``needed`` or
    above. Raises Unauthenticated or PermissionDenied."""

    async def check(
        request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> AdminServices:
        found = request.scope.get("state", {}).get(PRINCIPAL)  # a request with a body: checked already
        admin, who = found or authenticate(tenants_of(request), creds.credentials if creds else None)
        if not who.allows(needed):
            raise PermissionDenied(f"this needs the {needed} role; the token is {who.role}")
        request.scope.setdefault("state", {})[PRINCIPAL] = (admin, who)
        return admin

    return check


async def actor_of(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Actor:
    """Who makes the request, for the audit log: its token (the role check authenticated it)."""
    found = request.scope.get("state", {}).get(PRINCIPAL)
    _, who = found or authenticate(tenants_of(request), creds.credentials if creds else None)
    return Actor("token", who.token_id, who.name, who.role)


Viewer = Annotated[AdminServices, Depends(role("viewer"))]
Operator = Annotated[AdminServices, Depends(role("operator"))]
Admin = Annotated[AdminServices, Depends(role("admin"))]
# Declared after the role: the token's actor, for the audit log.
Who = Annotated[Actor, Depends(actor_of)]
Limit = Annotated[int, Query(ge=1, le=500, description="Items per page.")]
PageToken = Annotated[str, Query(max_length=12, pattern="^[0-9]*$", description="next_page_token of the previous page.")]
FederationId = Annotated[str, Path(pattern=s.FEDERATION_ID, description="A federation's id."),
                         s.checked(ids.check_federation_id)]
RunId = Annotated[str, Path(pattern=s.RUN_ID, description="A run's id."), s.checked(ids.check_run_id)]
Number = Annotated[str, Path(pattern="^[0-9]{6}$", description="The round that committed the version, 6 digits.")]
AgentId = Annotated[str, Path(pattern=f"^{ids.AGENT_ID}$", description="An agent's id."),
                    s.checked(ids.check_agent_id)]
TokenId = Annotated[str, Path(min_length=1, max_length=64, description="A token's id.")]
