"""The web console, served by the admin API's own app: / redirects to /console/, which serves
the console's static assets with a strict Content-Security-Policy. The assets themselves are
public (they hold no data); every API call they make carries the operator's bearer token."""

from typing import Annotated

from fastapi import APIRouter, Header, Path, Response
from fastapi.responses import RedirectResponse

from fedstream_scheduler.console import SECURITY_HEADERS, assets

router = APIRouter(include_in_schema=False)

AssetName = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9-]{0,63}\.(html|js|css|svg)$")]


def asset_response(name: str, if_none_match: str | None) -> Response:
    """The asset ``name`` (304 when the browser's copy is current); a 404 for any other name."""
    asset = assets().get(name)
    if asset is None:
        return Response(f"no console asset {name!r}\n", status_code=404, media_type="text/plain; charset=utf-8",
                        headers=SECURITY_HEADERS)
    headers = {**SECURITY_HEADERS, "ETag": asset.etag}
    if if_none_match == asset.etag:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/console/", status_code=307)


@router.get("/console")
async def console_without_slash() -> RedirectResponse:
    return RedirectResponse("/console/", status_code=307)


@router.get("/console/")
async def index(if_none_match: Annotated[str | None, Header()] = None) -> Response:
    return asset_response("index.html", if_none_match)


@router.get("/console/{name}")
async def asset(name: AssetName, if_none_match: Annotated[str | None, Header()] = None) -> Response:
    return asset_response(name, if_none_match)
