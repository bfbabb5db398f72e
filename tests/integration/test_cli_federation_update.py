"""`fedstream federations update` against a real admin API on loopback: the flags given change
the federation's spec field by field (a JSON merge patch), nested blocks included, and
--synchronous removes the asynchronous block."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from fedstream.state import MemoryStateStore
from fedstream.store import LocalModelStore
from fedstream_cli import main
from fedstream_scheduler.admin import AdminServices
from fedstream_scheduler.aggregator_client import AggregatorClient
from fedstream_scheduler.api import build_api
from fedstream_scheduler.api.server import ApiServer
from fedstream_scheduler.service import SchedulerService
from fedstream_scheduler.settings import SchedulerSettings
from fedstream_testing.support import LoopThread

TOKEN = "cli-update-bootstrap-token-0123456789"


@pytest.fixture
def api_url(tmp_path) -> Iterator[str]:
    loop = LoopThread()

    async def build() -> ApiServer:
        service = SchedulerService(MemoryStateStore("cli"), AggregatorClient("127.0.0.1:1"),
                                   SchedulerSettings(aggregator_endpoint="127.0.0.1:1"))
        admin = AdminServices(service, LocalModelStore(tmp_path / "models", "cli"))
        admin.tokens.ensure_bootstrap(TOKEN)
        server = ApiServer(build_api({"cli": admin}), "127.0.0.1", 0)
        await server.start()
        return server

    server = loop.run(build())
    yield f"http://127.0.0.1:{server.port}/api/v1"
    loop.run(server.stop())
    loop.close()


def test_update_flags_change_nested_settings_field_by_field(api_url, capsys, monkeypatch):
    monkeypatch.setenv("FEDSTREAM_CONFIG", "/nonexistent/credentials.json")

    def cli(*args: str) -> dict:
        capsys.readouterr()
        assert main([*args, "--api", api_url, "--token", TOKEN, "--format", "json"]) == 0, capsys.readouterr().err
        return json.loads(capsys.readouterr().out)["spec"]

    cli("federations", "create", "fed", "--task", "digits", "--prefer-fast", "--fairness-floor", "0.2",
        "--epochs", "2", "--lr", "0.1")
    floor = cli("federations", "update", "fed", "--fairness-floor", "0.3")
    rate = cli("federations", "update", "fed", "--lr", "0.05")
    cli("federations", "update", "fed", "--no-prefer-fast", "--async-buffer-size", "2", "--async-concurrency", "3",
        "--staleness", "hinge", "--staleness-a", "1", "--staleness-b", "2")
    sloped = cli("federations", "update", "fed", "--staleness-a", "3")
    synchronous = cli("federations", "update", "fed", "--synchronous")

    assert floor["selection"] == {"prefer_fast": True, "fairness_floor": 0.3}
    assert rate["training"]["local_epochs"] == 2 and rate["training"]["learning_rate"] == 0.05
    assert sloped["asynchronous"]["staleness"] == {"function": "hinge", "a": 3.0, "b": 2.0}
    assert sloped["asynchronous"]["buffer_size"] == 2 and sloped["selection"]["fairness_floor"] == 0.3
    assert synchronous["asynchronous"] is None and synchronous["training"]["local_epochs"] == 2
