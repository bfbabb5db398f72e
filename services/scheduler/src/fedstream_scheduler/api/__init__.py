"""The REST admin API (FastAPI), versioned under /api/v1.

Every endpoint but health takes a bearer token. A token belongs to one tenant with one role
(viewer < operator < admin) and sees that tenant's resources only: anything of another tenant
is simply not found (404). Errors are application/problem+json with a stable ``code``.
One router per resource translates; the logic is the tenant's services' (AdminServices).
"""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fedstream.errors import FedstreamError
from fedstream_scheduler.admin import AdminServices
from fedstream_scheduler.api import (
    agents,
    audit,
    console,
    enrollment_tokens,
    federations,
    lineage,
    models,
    releases,
    runs,
    tokens,
    whoami,
)
from fedstream_scheduler.api import schemas as s
from fedstream_scheduler.api.deps import PROBLEM_RESPONSES, problem, problem_of
from fedstream_scheduler.api.guard import RequestGuard
from fedstream_scheduler.settings import ApiSettings

log = logging.getLogger(__name__)


async def _fedstream_error(request: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, FedstreamError)
    return problem_of(e)


async def _invalid(request: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, RequestValidationError)
    first = e.errors()[0]
    where = ".".join(str(p) for p in first["loc"] if p != "body") or "request"
    return problem(400, "invalid_argument", f"{where}: {first['msg']}")


async def _http(request: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
    return problem(e.status_code, code, str(e.detail), dict(e.headers) if e.headers else None)  # Allow on 405


async def _unexpected(request: Request, e: Exception) -> JSONResponse:
    """Anything else is a bug or unreadable state: logged in full, answered without internals."""
    log.error("unexpected error in %s %s", request.method, request.url.path, exc_info=e)
    return problem(500, "internal", "internal error")


async def health() -> s.Health:
    return s.Health(status="ok")


def build_api(admins: dict[str, AdminServices], settings: ApiSettings | None = None) -> FastAPI:
    """The API over each served tenant's services (one tenant per scheduler install, usually),
    with the request limits of ``settings`` (the defaults when None)."""
    settings = settings or ApiSettings()
    app = FastAPI(
        title="fedstream admin API",
        version="1",
        description="Federations, runs, agents and tokens of a fedstream tenant. Bearer tokens; "
        "errors are application/problem+json with a stable code.",
        responses=PROBLEM_RESPONSES,
    )
    app.state.tenants = admins
    app.add_middleware(RequestGuard, tenants=admins, max_body_bytes=settings.max_body_bytes,
                       max_json_depth=settings.max_json_depth)
    app.add_exception_handler(FedstreamError, _fedstream_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
    app.add_api_route("/api/v1/health", health, methods=["GET"], tags=["health"])
    for module in (federations, runs, models, lineage, releases, agents, enrollment_tokens, tokens, audit, whoami,
                   console):
        app.include_router(module.router)
    return app
