"""The REST admin API (FastAPI), versioned under /api/v1.

Every endpoint but health takes a bearer token. A token belongs to one tenant with one role
(viewer < operator < admin) and sees that tenant's resources only: anything of another tenant
is simply not found (404). Errors are application/problem+json with a stable ``code``.
Routers translate; the logic is AdminService's.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations at run time,
# and the dependency aliases are local to build_api.
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from fedstream.errors import FedstreamError, InvalidArgument, PermissionDenied, Unauthenticated
from fedstream.safetensors_io import encode_header
from fedstream.state import (
    AgentRecord,
    EnrollmentTokenRecord,
    FederationRecord,
    RoundRecord,
    RunRecord,
    TokenRecord,
)
from fedstream.store import ModelVersion
from fedstream.store.base import parse_version
from fedstream_scheduler.admin import AdminService, Principal
from fedstream_scheduler.api import schemas as s

T = TypeVar("T")
PROBLEM_TYPE = "https://fedstream.dev/problems/"
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": s.Problem, "content": {"application/problem+json": {}}, "description": HTTPStatus(code).phrase}
    for code in (400, 401, 403, 404, 409)
}
RUN_STATES = "running|succeeded|failed|cancelled"
ROUND_STATES = "open|training|aggregating|committed|failed"


def problem(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = s.Problem(type=PROBLEM_TYPE + code, title=HTTPStatus(status).phrase, status=status, detail=detail, code=code)
    return JSONResponse(body.model_dump(), status_code=status, media_type="application/problem+json", headers=headers)


def paginate(items: Sequence[T], limit: int, page_token: str) -> tuple[list[T], str | None]:
    try:
        start = int(page_token or "0")
        if start < 0:
            raise ValueError
    except ValueError:
        raise InvalidArgument(f"page_token: {page_token!r} is not a token this API handed out") from None
    end = start + limit
    return list(items[start:end]), (str(end) if end < len(items) else None)


# Records to bodies.

def federation_body(rec: FederationRecord, latest: str) -> s.Federation:
    return s.Federation(
        federation_id=rec.federation_id, description=rec.description, spec=rec.spec,  # type: ignore[arg-type]
        schedule=s.Schedule(**rec.schedule) if rec.schedule else None,
        created_unix=rec.created_unix, updated_unix=rec.updated_unix, latest_version=latest,
    )


def run_body(rec: RunRecord, rounds: list[RoundRecord] | None = None) -> dict[str, Any]:
    return {
        "run_id": rec.run_id, "federation": rec.federation, "state": rec.state, "reason": rec.reason,
        "trigger": rec.trigger, "latest_version": rec.latest_version, "created_unix": rec.created_unix,
        "finished_unix": rec.finished_unix, "spec": rec.spec,
        "rounds_committed": sum(r.kind == "train" and r.state == "committed" for r in rounds or []),
    }


def round_body(r: RoundRecord) -> s.Round:
    return s.Round(
        round=r.round, kind=r.kind, state=r.state, participants=r.participants,  # type: ignore[arg-type]
        stragglers=r.stragglers, updates=len(r.reports), base_version=r.base_version, version=r.version,
        reason=r.reason, started_unix=r.started_unix, finished_unix=r.finished_unix,
        duration_s=(r.finished_unix - r.started_unix) if r.finished_unix else None,
        bytes_received=sum(int(x.get("bytes_received", 0)) for x in r.reports),
        metrics=r.metrics,
        update_metrics=weighted_metrics(r.reports),
    )


def weighted_metrics(reports: list[dict[str, Any]]) -> dict[str, float]:
    totals: dict[str, float] = {}
    weights: dict[str, float] = {}
    for report in reports:
        n = float(report.get("num_examples", 0) or 0)
        for key, value in (report.get("metrics") or {}).items():
            totals[key] = totals.get(key, 0.0) + n * float(value)
            weights[key] = weights.get(key, 0.0) + n
    return {k: totals[k] / weights[k] for k in totals if weights[k] > 0}


def agent_body(admin: AdminService, a: AgentRecord) -> s.Agent:
    return s.Agent(
        agent_id=a.agent_id, status=admin.agent_status(a), connected=admin.connected(a.agent_id),  # type: ignore[arg-type]
        labels=a.labels, capabilities=a.capabilities, tasks=a.tasks,
        registered_unix=a.registered_unix, last_heartbeat_unix=a.last_heartbeat_unix,
        enrolled_unix=a.enrolled_unix, certificates=len(a.cert_serials),
    )


def model_body(info: ModelVersion, pinned: bool) -> s.Model:
    run_id, rnd = parse_version(info.version)
    return s.Model(
        version=info.version, run_id=run_id, round=rnd, created_unix=info.created_unix,
        size_bytes=len(encode_header(info.layout, info.metadata)) + info.layout.total_bytes,
        sha256=info.sha256, pinned=pinned, metadata=info.metadata,
        tensors=[s.TensorInfo(name=t.name, dtype=t.dtype, shape=list(t.shape)) for t in info.layout.tensors],
    )


def enrollment_body(t: EnrollmentTokenRecord) -> s.EnrollmentToken:
    return s.EnrollmentToken(token_id=t.token_id, agent_id=t.agent_id, name=t.name,
                             created_unix=t.created_unix, expires_unix=t.expires_unix)


def token_body(t: TokenRecord) -> s.Token:
    return s.Token(token_id=t.token_id, role=t.role, name=t.name, created_unix=t.created_unix)  # type: ignore[arg-type]


def build_api(admins: dict[str, AdminService]) -> FastAPI:
    """The API over each served tenant's AdminService (one per scheduler install, usually)."""
    app = FastAPI(
        title="fedstream admin API",
        version="1",
        description="Federations, runs, agents and tokens of a fedstream tenant. Bearer tokens; "
        "errors are application/problem+json with a stable code.",
        responses=PROBLEM_RESPONSES,
    )
    bearer = HTTPBearer(auto_error=False, description="A token of the tenant (fst_...).")

    @app.exception_handler(FedstreamError)
    async def _fedstream_error(request: Request, e: FedstreamError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(e, Unauthenticated) else None
        return problem(int(e.http_status), e.code, e.public, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if p != "body") or "request"
        return problem(400, "invalid_argument", f"{where}: {first['msg']}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return problem(e.status_code, code, str(e.detail), dict(e.headers) if e.headers else None)  # Allow on 405

    def role(needed: str) -> Callable[..., Awaitable[tuple[AdminService, Principal]]]:
        async def check(
            creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        ) -> tuple[AdminService, Principal]:
            if creds is None:
                raise Unauthenticated("a bearer token is required")
            for admin in admins.values():
                who = admin.authenticate(creds.credentials)
                if who is not None:
                    break
            else:
                raise Unauthenticated("unknown or revoked token")
            if not who.allows(needed):
                raise PermissionDenied(f"this needs the {needed} role; the token is {who.role}")
            return admin, who

        return check

    Viewer = Annotated[tuple[AdminService, Principal], Depends(role("viewer"))]
    Operator = Annotated[tuple[AdminService, Principal], Depends(role("operator"))]
    Admin = Annotated[tuple[AdminService, Principal], Depends(role("admin"))]
    Limit = Annotated[int, Query(ge=1, le=500, description="Items per page.")]
    PageToken = Annotated[str, Query(max_length=12, pattern="^[0-9]*$", description="next_page_token of the previous page.")]
    FederationId = Annotated[str, Path(pattern=s.FEDERATION_ID, description="A federation's id.")]
    RunId = Annotated[str, Path(pattern=s.RUN_ID, description="A run's id.")]
    Number = Annotated[str, Path(pattern="^[0-9]{6}$", description="The round that committed the version, 6 digits.")]
    AgentId = Annotated[str, Path(min_length=1, max_length=128, description="An agent's id.")]
    TokenId = Annotated[str, Path(min_length=1, max_length=64, description="A token's id.")]

    @app.get("/api/v1/health", tags=["health"])
    async def health() -> s.Health:
        return s.Health(status="ok")

    # Federations.

    @app.post("/api/v1/federations", status_code=201, tags=["federations"])
    async def create_federation(body: s.FederationCreate, auth: Admin) -> s.Federation:
        admin, _ = auth
        rec = admin.create_federation(
            body.federation_id, body.spec.model_dump(), body.description,
            body.schedule.model_dump() if body.schedule else None,
        )
        return federation_body(rec, "")

    @app.get("/api/v1/federations", tags=["federations"])
    async def list_federations(auth: Viewer, limit: Limit = 50, page_token: PageToken = "") -> s.Page[s.Federation]:
        admin, _ = auth
        items, nxt = paginate(admin.list_federations(), limit, page_token)
        return s.Page[s.Federation](
            items=[federation_body(f, admin.latest_version(f.federation_id)) for f in items], next_page_token=nxt
        )

    @app.get("/api/v1/federations/{federation_id}", tags=["federations"])
    async def get_federation(federation_id: FederationId, auth: Viewer) -> s.Federation:
        admin, _ = auth
        return federation_body(admin.get_federation(federation_id), admin.latest_version(federation_id))

    @app.patch("/api/v1/federations/{federation_id}", tags=["federations"])
    async def update_federation(federation_id: FederationId, body: s.FederationUpdate, auth: Admin) -> s.Federation:
        admin, _ = auth
        rec = admin.update_federation(
            federation_id, spec=body.spec, description=body.description,
            schedule=body.schedule.model_dump() if body.schedule else None, clear_schedule=body.clear_schedule,
        )
        return federation_body(rec, admin.latest_version(federation_id))

    @app.delete("/api/v1/federations/{federation_id}", status_code=204, tags=["federations"])
    async def delete_federation(federation_id: FederationId, auth: Admin) -> Response:
        admin, _ = auth
        admin.delete_federation(federation_id)
        return Response(status_code=204)

    @app.post("/api/v1/federations/{federation_id}/runs", status_code=201, tags=["runs"])
    async def start_run(federation_id: FederationId, body: s.RunStart, auth: Operator) -> s.Run:
        admin, _ = auth
        rec = admin.start_run(federation_id, body.run_id, body.initial_version)
        return s.Run(**run_body(rec, []))

    # Models.

    @app.get("/api/v1/federations/{federation_id}/models", tags=["models"])
    async def list_models(federation_id: FederationId, auth: Viewer, limit: Limit = 50, page_token: PageToken = "") -> s.Page[s.Model]:
        admin, _ = auth
        items, nxt = paginate(admin.list_models(federation_id), limit, page_token)
        return s.Page[s.Model](items=[model_body(i, p) for i, p in items], next_page_token=nxt)

    @app.get("/api/v1/models/{run_id}/{number}", tags=["models"])
    async def get_model(run_id: RunId, number: Number, auth: Viewer) -> s.Model:
        admin, _ = auth
        return model_body(*admin.model_info(f"{run_id}/{number}"))

    @app.get(
        "/api/v1/models/{run_id}/{number}/download", tags=["models"], response_class=StreamingResponse,
        responses={200: {"content": {"application/octet-stream": {}}, "description": "The safetensors file."}},
    )
    async def download_model(run_id: RunId, number: Number, auth: Viewer) -> StreamingResponse:
        admin, _ = auth
        reader = admin.open_model(f"{run_id}/{number}")
        header = encode_header(reader.info.layout, reader.info.metadata)

        def body() -> Any:
            with reader:
                yield header
                for chunk in reader.iter_chunks(1 << 20):
                    yield bytes(chunk.data)

        filename = f"{run_id}-{number}.safetensors"
        return StreamingResponse(body(), media_type="application/octet-stream", headers={
            "Content-Length": str(len(header) + reader.info.layout.total_bytes),
            "Content-Disposition": f'attachment; filename="{filename}"',
            "X-Fedstream-Sha256": reader.info.sha256,
        })

    @app.post("/api/v1/models/{run_id}/{number}/pin", tags=["models"])
    async def pin_model(run_id: RunId, number: Number, auth: Operator) -> s.Model:
        admin, _ = auth
        return model_body(*admin.pin(f"{run_id}/{number}", True))

    @app.post("/api/v1/models/{run_id}/{number}/unpin", tags=["models"])
    async def unpin_model(run_id: RunId, number: Number, auth: Operator) -> s.Model:
        admin, _ = auth
        return model_body(*admin.pin(f"{run_id}/{number}", False))

    # Runs.

    @app.get("/api/v1/runs", tags=["runs"])
    async def list_runs(
        auth: Viewer, limit: Limit = 50, page_token: PageToken = "",
        federation: Annotated[str, Query(max_length=63, description="Only this federation's runs.")] = "",
        state: Annotated[str, Query(pattern=f"^({RUN_STATES})?$", description="Only runs in this state.")] = "",
    ) -> s.Page[s.Run]:
        admin, _ = auth
        items, nxt = paginate(admin.list_runs(federation, state), limit, page_token)
        return s.Page[s.Run](
            items=[s.Run(**run_body(r, admin.state.list_rounds(r.run_id))) for r in items], next_page_token=nxt
        )

    @app.get("/api/v1/runs/{run_id}", tags=["runs"])
    async def get_run(run_id: RunId, auth: Viewer) -> s.RunDetail:
        admin, _ = auth
        run, rounds = admin.get_run(run_id)
        return s.RunDetail(**run_body(run, rounds), rounds=[round_body(r) for r in rounds])

    @app.get("/api/v1/runs/{run_id}/rounds", tags=["runs"])
    async def list_rounds(
        run_id: RunId, auth: Viewer, limit: Limit = 50, page_token: PageToken = "",
        state: Annotated[str, Query(pattern=f"^({ROUND_STATES})?$", description="Only rounds in this state.")] = "",
    ) -> s.Page[s.Round]:
        admin, _ = auth
        _, rounds = admin.get_run(run_id)
        items, nxt = paginate([r for r in rounds if not state or r.state == state], limit, page_token)
        return s.Page[s.Round](items=[round_body(r) for r in items], next_page_token=nxt)

    @app.post("/api/v1/runs/{run_id}/cancel", tags=["runs"])
    async def cancel_run(run_id: RunId, auth: Operator) -> s.Run:
        admin, _ = auth
        rec = await admin.cancel_run(run_id)
        return s.Run(**run_body(rec, admin.state.list_rounds(run_id)))

    # Agents.

    @app.get("/api/v1/agents", tags=["agents"])
    async def list_agents(
        auth: Viewer, limit: Limit = 50, page_token: PageToken = "",
        status: Annotated[str, Query(pattern="^(alive|stale|disabled)?$", description="Only agents in this status.")] = "",
    ) -> s.Page[s.Agent]:
        admin, _ = auth
        items, nxt = paginate(admin.list_agents(status), limit, page_token)
        return s.Page[s.Agent](items=[agent_body(admin, a) for a in items], next_page_token=nxt)

    @app.get("/api/v1/agents/{agent_id}", tags=["agents"])
    async def get_agent(agent_id: AgentId, auth: Viewer) -> s.Agent:
        admin, _ = auth
        return agent_body(admin, admin.get_agent(agent_id))

    @app.post("/api/v1/agents/{agent_id}/disable", tags=["agents"])
    async def disable_agent(agent_id: AgentId, auth: Operator) -> s.Agent:
        admin, _ = auth
        return agent_body(admin, admin.set_agent_disabled(agent_id, True))

    @app.post("/api/v1/agents/{agent_id}/enable", tags=["agents"])
    async def enable_agent(agent_id: AgentId, auth: Operator) -> s.Agent:
        admin, _ = auth
        return agent_body(admin, admin.set_agent_disabled(agent_id, False))

    @app.delete("/api/v1/agents/{agent_id}", status_code=204, tags=["agents"])
    async def delete_agent(agent_id: AgentId, auth: Operator) -> Response:
        """Forgets the agent and revokes its certificates: its next call is refused and its
        open stream closed. It needs a new enrollment token to come back."""
        admin, _ = auth
        admin.delete_agent(agent_id)
        return Response(status_code=204)

    # Enrollment tokens.

    @app.post("/api/v1/enrollment-tokens", status_code=201, tags=["enrollment"])
    async def create_enrollment_token(body: s.EnrollmentTokenCreate, auth: Operator) -> s.EnrollmentTokenCreated:
        """A one-time token with which an agent enrolls (gets its first certificate)."""
        admin, _ = auth
        rec, secret = admin.create_enrollment_token(body.agent_id, body.ttl_s, body.name)
        return s.EnrollmentTokenCreated(**enrollment_body(rec).model_dump(), token=secret)

    @app.get("/api/v1/enrollment-tokens", tags=["enrollment"])
    async def list_enrollment_tokens(
        auth: Operator, limit: Limit = 50, page_token: PageToken = ""
    ) -> s.Page[s.EnrollmentToken]:
        """Tokens not used yet and not expired."""
        admin, _ = auth
        items, nxt = paginate(admin.list_enrollment_tokens(), limit, page_token)
        return s.Page[s.EnrollmentToken](items=[enrollment_body(t) for t in items], next_page_token=nxt)

    @app.delete("/api/v1/enrollment-tokens/{token_id}", status_code=204, tags=["enrollment"])
    async def delete_enrollment_token(token_id: TokenId, auth: Operator) -> Response:
        admin, _ = auth
        admin.delete_enrollment_token(token_id)
        return Response(status_code=204)

    # Tokens.

    @app.post("/api/v1/tokens", status_code=201, tags=["tokens"])
    async def create_token(body: s.TokenCreate, auth: Admin) -> s.TokenCreated:
        admin, _ = auth
        rec, secret = admin.create_token(body.role, body.name)
        return s.TokenCreated(**token_body(rec).model_dump(), token=secret)

    @app.get("/api/v1/tokens", tags=["tokens"])
    async def list_tokens(auth: Admin, limit: Limit = 50, page_token: PageToken = "") -> s.Page[s.Token]:
        admin, _ = auth
        items, nxt = paginate(admin.list_tokens(), limit, page_token)
        return s.Page[s.Token](items=[token_body(t) for t in items], next_page_token=nxt)

    @app.delete("/api/v1/tokens/{token_id}", status_code=204, tags=["tokens"])
    async def delete_token(token_id: TokenId, auth: Admin) -> Response:
        admin, _ = auth
        admin.delete_token(token_id)
        return Response(status_code=204)

    return app
