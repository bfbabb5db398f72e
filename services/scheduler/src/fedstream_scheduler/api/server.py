"""Serves the admin API with uvicorn inside the scheduler's own asyncio loop (the run drivers
and the API share the loop, as the gRPC servicers do)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator

import uvicorn
from fastapi import FastAPI

from fedstream.startup import bind_error


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The scheduler's main handles SIGTERM/SIGINT for every server it runs.
        yield


class ApiServer:
    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self._server = _Server(uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                                              lifespan="off"))
        self._task: asyncio.Task[None] | None = None
        self.host = host
        self.port = port

    async def start(self, timeout: float = 10.0) -> int:
        """Binds and starts serving; returns the bound port. Raises StartupError naming
        ``api.port`` when the port cannot be bound."""
        # Bound here rather than by uvicorn, which would log the error and exit the process.
        try:
            sock = socket.create_server((self.host, self.port), family=socket.AF_INET6 if ":" in self.host
                                        else socket.AF_INET, backlog=2048)
        except OSError as e:
            raise bind_error("api.port", self.host, self.port, e) from e
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        deadline = asyncio.get_running_loop().time() + timeout
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise bind_error("api.port", self.host, self.port, "the admin API stopped at start")
            if asyncio.get_running_loop().time() > deadline:
                raise bind_error("api.port", self.host, self.port, "the admin API did not start in time")
            await asyncio.sleep(0.01)
        self.port = sock.getsockname()[1]
        return self.port

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._task, 5)
