"""Model lineage and model cards: a version's lineage, its graph, the path between two versions,
and its card (Markdown or JSON)."""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from fedstream import ids
from fedstream_scheduler.api import schemas as s
from fedstream_scheduler.api import schemas_lineage as sl
from fedstream_scheduler.api.deps import Number, RunId, Viewer
from fedstream_scheduler.api.guard import ParsedRoute
from fedstream_scheduler.lineage import MAX_GRAPH_DEPTH, LineageService

router = APIRouter(tags=["lineage"], route_class=ParsedRoute)

Ancestor = Annotated[str, Query(alias="from", pattern=s.VERSION, description="The older version, RUN/NNNNNN."),
                     s.checked(ids.parse_version)]
Descendant = Annotated[str, Query(alias="to", pattern=s.VERSION, description="The newer version, RUN/NNNNNN."),
                       s.checked(ids.parse_version)]
CARD_RESPONSES: dict[int | str, dict[str, Any]] = {200: {
    "content": {"application/json": {}, "text/markdown": {}},
    "description": "The model card: JSON, or Markdown with every value escaped.",
}}


def lineage_of(admin: Viewer) -> LineageService:
    return LineageService(admin.state, admin.models)


@router.get("/api/v1/models/{run_id}/{number}/lineage")
async def get_lineage(run_id: RunId, number: Number, admin: Viewer) -> sl.Lineage:
    return sl.Lineage.model_validate(lineage_of(admin).document(f"{run_id}/{number}"))


@router.get("/api/v1/models/{run_id}/{number}/lineage/graph")
async def get_lineage_graph(
    run_id: RunId, number: Number, admin: Viewer,
    depth: Annotated[int, Query(ge=1, le=MAX_GRAPH_DEPTH, description="Steps up and down from the version.")] = 3,
) -> sl.LineageGraph:
    # Up to MAX_VISITED reads of the model store: in a worker thread, never on the event loop
    # that the scheduler's agents and every other request share.
    graph = await run_in_threadpool(lineage_of(admin).graph, f"{run_id}/{number}", depth)
    return sl.LineageGraph.model_validate(graph)


@router.get("/api/v1/lineage/between")
async def get_lineage_between(admin: Viewer, ancestor: Ancestor, descendant: Descendant) -> sl.LineagePath:
    path = await run_in_threadpool(lineage_of(admin).between, ancestor, descendant)  # as the graph
    return sl.LineagePath.model_validate(path)


@router.get("/api/v1/models/{run_id}/{number}/card", response_model=None, responses=CARD_RESPONSES)
async def get_card(
    run_id: RunId, number: Number, admin: Viewer,
    format: Annotated[Literal["json", "markdown"], Query(description="json, or markdown (text/markdown).")] = "json",
) -> Response:
    markdown, card = lineage_of(admin).card(f"{run_id}/{number}")
    if format == "markdown":
        return Response(markdown, media_type="text/markdown; charset=utf-8")
    return JSONResponse(card)
