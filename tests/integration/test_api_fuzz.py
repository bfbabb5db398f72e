"""The admin API's contract fuzzed: schemathesis generates requests from the committed OpenAPI
document (docs/openapi.json) and sends them over real HTTP to the API on a real Redis; every
response must match its documented status, content type and schema, and none may be a 500."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from fedstream.state.redis import RedisStateStore, connect
from fedstream.store import LocalModelStore
from fedstream_scheduler.admin import AdminServices
from fedstream_scheduler.aggregator_client import AggregatorClient
from fedstream_scheduler.api import build_api
from fedstream_scheduler.api.server import ApiServer
from fedstream_scheduler.service import SchedulerService
from fedstream_scheduler.settings import SchedulerSettings
from fedstream_testing.support import LoopThread

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
schema = schemathesis.openapi.from_dict(json.loads(DOC.read_text()))
# Schema-valid requests, every check on. (Malformed requests are the explicit bad-input tests'
# business, tests/integration/test_admin_api.py: unknown query parameters, for one, are
# ignored by design, as most HTTP APIs do.)
schema.config.generation.update(modes=[schemathesis.GenerationMode.POSITIVE], deterministic=True)
TOKEN = "fuzzing-bootstrap-token-0123456789"


@pytest.fixture(scope="module")
def base_url(redis_server, tmp_path_factory) -> Iterator[str]:
    loop = LoopThread()
    settings = SchedulerSettings(aggregator_endpoint="127.0.0.1:1")
    holder: dict[str, AdminServices] = {}

    async def build() -> ApiServer:
        service = SchedulerService(RedisStateStore(connect(redis_server.url), "fuzz"),
                                   AggregatorClient("127.0.0.1:1"), settings)
        admin = AdminServices(service, LocalModelStore(tmp_path_factory.mktemp("fuzz-models"), "fuzz"))
        admin.tokens.ensure_bootstrap(TOKEN)
        admin.federations.create("fed", {"task": "digits", "min_agents": 100, "wait_for_agents_s": 600}, "", None)
        holder["admin"] = admin
        server = ApiServer(build_api({"fuzz": admin}), "127.0.0.1", 0)
        await server.start()
        return server

    server = loop.run(build())
    yield f"http://127.0.0.1:{server.port}"
    admin = holder["admin"]
    for run in admin.state.list_runs():
        if run.state == "running":
            loop.run(admin.runs.cancel_run(run.run_id))
    loop.run(admin.scheduler.close())
    loop.run(server.stop())
    loop.close()


@schema.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented(case, base_url):
    # A federation's spec has rules across fields (an evaluate_only run needs its version,
    # min_updates within the agents, a strategy's own parameters) that a JSON schema cannot
    # state: such a request is refused with 400 and a message naming the field, which is right.
    excluded = [positive_data_acceptance] if case.path.startswith("/api/v1/federations") and case.method in ("POST", "PATCH") else []
    case.call_and_validate(base_url=base_url, headers={"Authorization": f"Bearer {TOKEN}"}, excluded_checks=excluded)


@schema.parametrize()
@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
def test_without_a_token_every_operation_but_health_is_401(case, base_url):
    response = case.call(base_url=base_url)
    if case.path == "/api/v1/health":
        assert response.status_code == 200
    else:
        assert response.status_code in (401, 400), response.text  # 400: a malformed request is refused first
        assert "application/problem+json" in response.headers["content-type"]
