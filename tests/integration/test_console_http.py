"""The web console as the admin API serves it, over real HTTP: / leads to it, its assets come
with a strict Content-Security-Policy and no cookie, any name outside them is refused, and
/api/v1/whoami tells each token its role."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from fedstream.state import MemoryStateStore
from fedstream.store import LocalModelStore
from fedstream_scheduler.admin import AdminServices
from fedstream_scheduler.aggregator_client import AggregatorClient
from fedstream_scheduler.api import build_api
from fedstream_scheduler.api.server import ApiServer
from fedstream_scheduler.console import assets
from fedstream_scheduler.service import SchedulerService
from fedstream_scheduler.settings import SchedulerSettings
from fedstream_testing.support import LoopThread

ADMIN = "console-bootstrap-token-0123456789"


@dataclass
class Served:
    base: str
    tokens: dict[str, str]
    admin: AdminServices


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    loop = LoopThread()
    settings = SchedulerSettings(aggregator_endpoint="127.0.0.1:1")
    holder: dict[str, AdminServices] = {}

    async def build() -> ApiServer:
        service = SchedulerService(MemoryStateStore("console"), AggregatorClient("127.0.0.1:1"), settings)
        admin = AdminServices(service, LocalModelStore(tmp_path_factory.mktemp("console-models"), "console"))
        admin.tokens.ensure_bootstrap(ADMIN)
        holder["admin"] = admin
        server = ApiServer(build_api({"console": admin}), "127.0.0.1", 0)
        await server.start()
        return server

    server = loop.run(build())
    admin = holder["admin"]
    tokens = {"admin": ADMIN} | {role: admin.tokens.create(role, f"{role} <b>desk</b>")[1] for role in ("viewer", "operator")}
    yield Served(f"http://127.0.0.1:{server.port}", tokens, admin)
    loop.run(admin.scheduler.close())
    loop.run(server.stop())
    loop.close()


def get(served: Served, path: str, token: str | None = None, **headers: str) -> httpx.Response:
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.get(served.base + path, headers=headers, timeout=10)


def test_the_root_and_the_bare_path_lead_to_the_console(served):
    for path in ("/", "/console"):
        reply = get(served, path)
        assert reply.status_code == 307 and reply.headers["location"] == "/console/"


def test_the_console_and_everything_it_loads_come_with_the_policy(served):
    index = get(served, "/console/")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    names = re.findall(r'(?:src|href)="([^"#]+)"', index.text)
    names += [m for a in assets().values() if a.name.endswith(".js") for m in re.findall(r'from "\./([^"]+)"', a.body.decode())]
    for reply in [index, *(get(served, f"/console/{n}") for n in set(names))]:
        assert reply.status_code == 200, reply.url
        csp = reply.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert reply.headers["x-content-type-options"] == "nosniff"
        assert "set-cookie" not in reply.headers
    assert get(served, "/console/app.js").headers["content-type"].startswith("text/javascript")
    assert get(served, "/console/favicon.svg").headers["content-type"] == "image/svg+xml"


def test_an_unchanged_asset_is_not_sent_again(served):
    first = get(served, "/console/app.js")
    again = get(served, "/console/app.js", **{"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and not again.content


@pytest.mark.parametrize("path", ["/console/nothing.js", "/console/..%2fapi.py", "/console/__init__.py",
                                  "/console/APP.JS", "/console/%2e%2e/api/v1/whoami"])
def test_only_the_console_assets_are_served(served, path):
    reply = get(served, path)
    assert reply.status_code in (400, 404), reply.text
    assert "import" not in reply.text  # no Python source


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
def test_whoami_names_the_token_and_its_role(served, role):
    reply = get(served, "/api/v1/whoami", served.tokens[role])
    assert reply.status_code == 200
    body = reply.json()
    assert body["role"] == role and body["tenant"] == "console" and body["token_id"]
    if role != "admin":
        assert body["name"] == f"{role} <b>desk</b>"  # as given: the console shows it as text


@pytest.mark.parametrize("token", [None, "fst_not-a-token-anyone-made"])
def test_whoami_refuses_no_token_or_an_unknown_one(served, token):
    reply = get(served, "/api/v1/whoami", token)
    assert reply.status_code == 401 and reply.headers["www-authenticate"] == "Bearer"
    assert reply.json()["code"] == "unauthenticated"


def test_a_federation_says_when_its_schedule_fires_next(served):
    made = httpx.post(served.base + "/api/v1/federations", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10, json={
        "federation_id": "nightly", "spec": {"task": "digits", "min_agents": 100},
        "schedule": {"cron": "0 2 * * *", "timezone": "UTC"},
    })
    assert made.status_code == 201, made.text
    schedule = made.json()["schedule"]
    assert time.time() < schedule["next_unix"] <= time.time() + 86400
    assert schedule["next_unix"] % 86400 == 2 * 3600  # 02:00 UTC
    unscheduled = httpx.post(served.base + "/api/v1/federations", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10,
                             json={"federation_id": "on-request", "spec": {"task": "digits"}})
    assert unscheduled.json()["schedule"] is None
