"""What the admin API checks before any route sees a request with a body: a valid bearer token
and a declared size within ``api.max_body_bytes`` before one byte of the body is read, then the
body read up to that limit at most and its JSON nesting within ``api.max_json_depth`` before it
is parsed, and parsed off the event loop (one at a time), which the scheduler's gRPC services
share. Refusals are problem+json; the connection is closed, so an unread body is dropped."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fedstream.errors import BodyTooLarge, FedstreamError, InvalidArgument
from fedstream.metrics import LIMIT_HITS
from fedstream_scheduler.admin import AdminServices
from fedstream_scheduler.api.deps import PRINCIPAL, authenticate, problem_of

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")
_INNERMOST = re.compile(rb"\[\]|\{\}")
# Where the guard leaves a body's parsed JSON, in the ASGI scope's state.
PARSED = "fedstream_parsed_json"
_UNPARSED = object()


def json_deeper_than(body: bytes, limit: int) -> bool:
    """Whether the JSON in ``body`` nests arrays and objects more than ``limit`` levels deep.
    Each level is one pass of a regular expression (C speed) over the body's brackets, outside
    strings, that removes the innermost pairs. Malformed JSON is left to the parser."""
    brackets = _NOT_BRACKET.sub(b"", _STRING.sub(b"", body))
    for _ in range(limit):
        if not brackets:
            return False
        brackets = _INNERMOST.sub(b"", brackets)
    return _INNERMOST.search(brackets) is not None


def _parse(body: bytes, max_depth: int) -> Any:
    """Runs in the parser's thread. Parsing holds the interpreter (the loop's thread waits for
    it), so the thread then rests as long as it worked: however many bodies queue up, the loop
    gets at least half of the interpreter's time."""
    start = time.perf_counter()
    try:
        if json_deeper_than(body, max_depth):
            raise InvalidArgument(f"the body's JSON nests deeper than api.max_json_depth ({max_depth} levels)")
        return json.loads(body)
    except ValueError:
        return _UNPARSED
    finally:
        time.sleep(time.perf_counter() - start)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


class RequestGuard:
    """A pure ASGI middleware in front of the whole API (FastAPI reads and parses a body
    before it runs a route's dependencies, so the token is checked here, first)."""

    def __init__(self, app: ASGIApp, *, tenants: dict[str, AdminServices], max_body_bytes: int,
                 max_json_depth: int) -> None:
        self.app = app
        self.tenants = tenants
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth
        # One parse at a time, off the loop: the loop waits for the interpreter at most one
        # parse of a body of max_body_bytes between two of its turns, however many arrive.
        self._parser = ThreadPoolExecutor(1, thread_name_prefix="api-json")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        length = _header(scope, b"content-length") if scope["type"] == "http" else None
        chunked = scope["type"] == "http" and _header(scope, b"transfer-encoding") is not None
        if not chunked and length in (None, b"0"):
            await self.app(scope, receive, send)
            return
        try:
            if length is not None and int(length) > self.max_body_bytes:
                raise self._too_large(scope, f"{int(length)} bytes (its Content-Length)")
            auth = _header(scope, b"authorization") or b""
            scheme, _, token = auth.decode("latin-1").partition(" ")
            scope.setdefault("state", {})[PRINCIPAL] = authenticate(
                self.tenants, token.strip() if scheme.lower() == "bearer" else None
            )
            body = await self._read(scope, receive)
            if body is None:
                return  # the client went away
            scope["state"][PARSED] = await self._parse(scope, body)
        except FedstreamError as e:
            await problem_of(e, {"Connection": "close"})(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, scope: Scope, receive: Receive) -> bytes | None:
        """The body, or None if the client disconnected; raises BodyTooLarge as soon as what
        arrived passes the limit (the rest is not read)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise self._too_large(scope, "longer")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _parse(self, scope: Scope, body: bytes) -> Any:
        """The body's JSON (_UNPARSED when it is not JSON: the route answers as it would),
        checked and parsed in the parser's thread; raises InvalidArgument when too deep."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._parser, _parse, body, self.max_json_depth)
        except InvalidArgument:
            self._hit(scope, "max_json_depth")
            raise

    def _too_large(self, scope: Scope, what: str) -> BodyTooLarge:
        self._hit(scope, "max_body_bytes")
        return BodyTooLarge(f"the request body is {what} than api.max_body_bytes ({self.max_body_bytes} bytes)"
                            if what == "longer" else
                            f"the request body is {what}, over api.max_body_bytes ({self.max_body_bytes} bytes)")

    def _hit(self, scope: Scope, limit: str) -> None:
        """Counts a refusal, under the token's tenant (or the only tenant served, before the token
        is known)."""
        found = scope.get("state", {}).get(PRINCIPAL)
        if found:
            tenant = found[0].tenant
        else:
            tenant = next(iter(self.tenants)) if len(self.tenants) == 1 else "unknown"
        LIMIT_HITS.labels(tenant, "scheduler", limit).inc()


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body already read, then defers to the server's."""
    pending = [body]

    async def replay() -> Message:
        if pending:
            return {"type": "http.request", "body": pending.pop(), "more_body": False}
        return await receive()

    return replay


class _ParsedRequest(Request):
    async def json(self) -> Any:
        parsed = self.scope.get("state", {}).get(PARSED, _UNPARSED)
        return await super().json() if parsed is _UNPARSED else parsed


class ParsedRoute(APIRoute):
    """A route that takes its body's JSON as the guard parsed it (off the loop), instead of
    parsing it again on the loop."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def parsed(request: Request) -> Response:
            return await handler(_ParsedRequest(request.scope, request.receive))

        return parsed
