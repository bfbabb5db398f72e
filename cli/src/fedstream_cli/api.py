"""The REST admin API as the CLI reaches it: credentials, the client, the options every REST command shares.

Credentials come from flags (--api, --token), else the environment (FEDSTREAM_API,
FEDSTREAM_TOKEN), else the file `fedstream login` writes ($FEDSTREAM_CONFIG, default
~/.config/fedstream/credentials.json, readable by its owner only).
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ERRORS_EXIT = 1
API_ENV = "FEDSTREAM_API"
TOKEN_ENV = "FEDSTREAM_TOKEN"


def config_path() -> Path:
    """Where `fedstream login` keeps the API URL and token."""
    return Path(os.environ.get("FEDSTREAM_CONFIG") or Path.home() / ".config" / "fedstream" / "credentials.json")


class ApiError(Exception):
    """The admin API refused a call (``status``: its HTTP status) or could not be reached
    (``status`` 0); the message is for the operator."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def _problem(r: httpx.Response) -> ApiError:
    try:
        body = r.json()
    except ValueError:
        return ApiError(f"HTTP {r.status_code}: {r.text[:200]}", r.status_code)
    return ApiError(f"{body.get('code', r.status_code)}: {body.get('detail', r.text)}", r.status_code)


class Client:
    """A tenant's admin API under ``/api/v1`` with a bearer token."""

    def __init__(self, api: str, token: str) -> None:
        self.api = api.rstrip("/")
        if not self.api.endswith("/api/v1"):
            self.api += "/api/v1"
        self.http = httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def call(self, method: str, path: str, **kw: Any) -> Any:
        """The decoded JSON body (None when empty); raises ApiError on a 4xx/5xx or no connection."""
        try:
            r = self.http.request(method, self.api + path, **kw)
        except httpx.HTTPError as e:
            raise ApiError(f"cannot reach the admin API at {self.api}: {e}") from None
        if r.status_code >= 400:
            raise _problem(r)
        return r.json() if r.content else None

    def pages(self, path: str) -> list[Any]:
        """Every item of a paginated listing."""
        items: list[Any] = []
        token = ""
        sep = "&" if "?" in path else "?"
        while True:
            page = self.call("GET", f"{path}{sep}limit=500&page_token={token}")
            items += page["items"]
            token = page["next_page_token"]
            if not token:
                return items

    @contextmanager
    def stream(self, path: str) -> Iterator[httpx.Response]:
        """A streamed GET; raises ApiError when the API refuses it or the connection breaks."""
        try:
            with self.http.stream("GET", self.api + path) as r:
                if r.status_code >= 400:
                    r.read()
                    raise _problem(r)
                yield r
        except httpx.HTTPError as e:
            raise ApiError(f"download failed: {e}") from None


def client_from(args: argparse.Namespace) -> Client:
    """The client the command's --api/--token, the environment or the saved login name."""
    saved: dict[str, str] = {}
    path = config_path()
    if path.exists():
        saved = json.loads(path.read_text())
    api = args.api or os.environ.get(API_ENV) or saved.get("api")
    token = args.token or os.environ.get(TOKEN_ENV) or saved.get("token")
    if not api or not token:
        raise SystemExit("no admin API credentials: run `fedstream login --api URL --token TOKEN` "
                         f"(or set {API_ENV} and {TOKEN_ENV})")
    return Client(api, token)


def save_login(api: str, token: str) -> Path:
    """Writes the credentials file, readable by its owner only; returns its path."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"api": api, "token": token}, f)
    return path


def rest_options() -> argparse.ArgumentParser:
    """The options of every REST command: where the API is, the token, how results print."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("admin API")
    group.add_argument("--api", default="", metavar="URL",
                       help=f"admin API URL (default: ${API_ENV}, else the saved login)")
    group.add_argument("--token", default="",
                       help=f"bearer token (default: ${TOKEN_ENV}, else the saved login)")
    group.add_argument("--format", choices=["table", "json"], default="table",
                       help="how results print: a table for people (default), or JSON")
    return common


# What a terminal obeys rather than shows (control characters but line breaks and tabs, DEL, C1)
# and the bidirectional overrides: values that sites and operators chose (metric names, notes,
# reasons) must not rewrite the screen of whoever reads them.
_UNSHOWN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def shown(text: str) -> str:
    """``text`` with every character a terminal would obey instead of show as "?"."""
    return _UNSHOWN.sub("?", text)


def emit(args: argparse.Namespace, data: Any, lines: list[str]) -> None:
    """Prints ``data`` as JSON with --format json (escaped), else the human ``lines`` (``shown``)."""
    if args.format == "json":
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(shown("\n".join(lines)))


def list_command(args: argparse.Namespace, path: str, header: str, row: Callable[[Any], str]) -> int:
    """Prints every item of a listing: a table of ``header`` and a ``row`` each, or JSON."""
    items = client_from(args).pages(path)
    emit(args, items, [header, *map(row, items)])
    return 0
