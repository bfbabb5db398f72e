"""Serves the admin API with uvicorn inside the scheduler's own asyncio loop (the run drivers
and the API share the loop, as the gRPC servicers do)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator

import uvicorn
from fastapi import FastAPI


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
        self.port = 0

    async def start(self, timeout: float = 10.0) -> int:
        """Binds and starts serving; returns the bound port. Raises OSError when it cannot bind."""
        self._task = asyncio.create_task(self._server.serve())
        deadline = asyncio.get_running_loop().time() + timeout
        while not self._server.started:
            if self._task.done():
                self._task.result()  # uvicorn logs bind errors and exits the task
                raise OSError("the admin API could not bind its port")
            if asyncio.get_running_loop().time() > deadline:
                raise OSError("the admin API did not start in time")
            await asyncio.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._task, 5)
