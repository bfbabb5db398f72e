"""Models: a federation's models, and each version's description, download and pin."""

from collections.abc import Iterator

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from fedstream.ids import parse_version
from fedstream.safetensors_io import encode_header
from fedstream.state import AuditAction
from fedstream.store import ModelVersion
from fedstream_scheduler.api import schemas as s
from fedstream_scheduler.api.deps import (
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

router = APIRouter(tags=["models"], route_class=ParsedRoute)


def model_body(info: ModelVersion, pinned: bool) -> s.Model:
    run_id, rnd = parse_version(info.version)
    return s.Model(
        version=info.version, run_id=run_id, round=rnd, created_unix=info.created_unix,
        size_bytes=len(encode_header(info.layout, info.metadata)) + info.layout.total_bytes,
        sha256=info.sha256, pinned=pinned, metadata=info.metadata,
        tensors=[s.TensorInfo(name=t.name, dtype=t.dtype, shape=list(t.shape)) for t in info.layout.tensors],
    )


@router.get("/api/v1/federations/{federation_id}/models")
async def list_models(
    federation_id: FederationId, admin: Viewer, limit: Limit = 50, page_token: PageToken = ""
) -> s.Page[s.Model]:
    items, nxt = paginate(admin.models.list(federation_id), limit, page_token)
    return s.Page[s.Model](items=[model_body(i, p) for i, p in items], next_page_token=nxt)


@router.get("/api/v1/models/{run_id}/{number}")
async def get_model(run_id: RunId, number: Number, admin: Viewer) -> s.Model:
    return model_body(*admin.models.info(f"{run_id}/{number}"))


@router.get(
    "/api/v1/models/{run_id}/{number}/download", response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "The safetensors file."}},
)
async def download_model(run_id: RunId, number: Number, admin: Viewer) -> StreamingResponse:
    reader = admin.models.open(f"{run_id}/{number}")
    header = encode_header(reader.info.layout, reader.info.metadata)

    def body() -> Iterator[bytes]:
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


@router.post("/api/v1/models/{run_id}/{number}/pin")
async def pin_model(run_id: RunId, number: Number, admin: Operator, who: Who) -> s.Model:
    body = model_body(*admin.models.pin(f"{run_id}/{number}", True))
    admin.audit.record(who, AuditAction.MODEL_PIN, f"model/{run_id}/{number}")
    return body


@router.post("/api/v1/models/{run_id}/{number}/unpin")
async def unpin_model(run_id: RunId, number: Number, admin: Operator, who: Who) -> s.Model:
    """Lets retention delete the version again; 409 while a release channel points at it."""
    admin.releases.check_unpin(f"{run_id}/{number}")
    body = model_body(*admin.models.pin(f"{run_id}/{number}", False))
    admin.audit.record(who, AuditAction.MODEL_UNPIN, f"model/{run_id}/{number}")
    return body
