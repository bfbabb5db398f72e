"""Lineage walks that a viewer's token may ask for read up to thousands of versions from the
model store: the admin API does that work beside the event loop that every other request (and,
in the scheduler, every agent) shares, so one long walk holds up no one else."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from fedstream.state import MemoryStateStore, RunRecord
from fedstream.store import LocalModelStore
from fedstream_scheduler.admin import AdminServices
from fedstream_scheduler.aggregator_client import AggregatorClient
from fedstream_scheduler.api import build_api
from fedstream_scheduler.api.server import ApiServer
from fedstream_scheduler.service import SchedulerService
from fedstream_scheduler.settings import SchedulerSettings
from fedstream_testing.helpers import random_model, store_model
from fedstream_testing.support import LoopThread

VERSIONS = 40
READ_S = 0.08  # what one read of a lineage costs from a distant object store


class DistantStore(LocalModelStore):
    """A local store whose lineage reads take as long as an object store's across a network."""

    def lineage(self, version: str) -> dict[str, Any]:
        time.sleep(READ_S)
        return super().lineage(version)


@dataclass
class Served:
    base: str
    token: str


@pytest.fixture
def served(tmp_path) -> Iterator[Served]:
    loop = LoopThread()
    state, store = MemoryStateStore("t1"), DistantStore(tmp_path / "models", "t1")
    state.create_run(RunRecord("chain", {}, state="succeeded", federation="", created_unix=1.0))
    for n in range(1, VERSIONS + 1):
        version = f"chain/{n:06d}"
        store_model(store, version, random_model(n))
        store.put_lineage(version, {"schema_version": 1, "version": version, "run_id": "chain", "round": n,
                                    "kind": "train", "parents": [f"chain/{n - 1:06d}"] if n > 1 else []})
    holder: dict[str, AdminServices] = {}

    async def build() -> ApiServer:
        service = SchedulerService(state, AggregatorClient("127.0.0.1:1"), SchedulerSettings(aggregator_endpoint="127.0.0.1:1"))
        holder["admin"] = AdminServices(service, store)
        server = ApiServer(build_api({"t1": holder["admin"]}), "127.0.0.1", 0)
        await server.start()
        return server

    server = loop.run(build())
    _, token = holder["admin"].tokens.create("viewer", "viewer")
    yield Served(f"http://127.0.0.1:{server.port}/api/v1", token)
    loop.run(holder["admin"].scheduler.close())
    loop.run(server.stop())
    loop.close()


@pytest.mark.parametrize("walk", [f"/lineage/between?from=chain/000001&to=chain/{VERSIONS:06d}",
                                  f"/models/chain/{VERSIONS:06d}/lineage/graph?depth=20"])
def test_a_long_lineage_walk_holds_up_no_other_request(served, walk):
    headers = {"Authorization": f"Bearer {served.token}"}
    answers: dict[str, httpx.Response] = {}
    walker = threading.Thread(target=lambda: answers.setdefault("walk", httpx.get(
        served.base + walk, headers=headers, timeout=60)))
    walker.start()
    time.sleep(0.3)  # the walk is under way: VERSIONS reads of READ_S take 3 s
    started = time.monotonic()
    quick = httpx.get(served.base + "/whoami", headers=headers, timeout=60)
    waited = time.monotonic() - started
    walker.join()

    assert quick.status_code == 200 and answers["walk"].status_code == 200, answers["walk"].text
    assert answers["walk"].elapsed.total_seconds() > 2.0  # the walk did take long
    assert waited < 1.0, f"whoami waited {waited:.2f} s for the walk"
