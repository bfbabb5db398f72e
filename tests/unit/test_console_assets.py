"""The web console's assets as shipped: every file a page loads is package data, no script or
style is inline, and no module puts text on the page as HTML."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch

from fedstream_agent.provenance import capabilities
from fedstream_scheduler.console import CONTENT_SECURITY_POLICY, assets
from fedstream_scheduler.cron import next_slot

ROOT = Path(__file__).resolve().parents[2]
IMPORT = re.compile(r"""^\s*import\s[^;]*?from\s+"\./([^"]+)";""", re.M | re.S)
# Ways to turn a string into markup or code: none may appear in the console's scripts.
UNSAFE_JS = ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
             "setTimeout(\"", "srcdoc", "DOMParser", "createContextualFragment")


def test_the_console_has_its_pages_and_every_module_they_import():
    found = assets()
    assert {"index.html", "app.js", "api.js", "dom.js", "console.css", "favicon.svg"} <= set(found)
    index = found["index.html"].body.decode()
    for ref in re.findall(r'(?:src|href)="([^"#]+)"', index):
        assert ref in found, f"index.html loads {ref}, which the package does not have"
    for name, asset in found.items():
        if name.endswith(".js"):
            for imported in IMPORT.findall(asset.body.decode()):
                assert imported in found, f"{name} imports {imported}, which the package does not have"


def test_every_asset_is_declared_package_data():
    """The wheel carries exactly what the pyproject's package-data globs match."""
    data = tomllib.loads((ROOT / "services/scheduler/pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    globs = data["fedstream_scheduler"]
    for name in assets():
        assert any(fnmatch.fnmatch(f"console/{name}", g) for g in globs), f"{name} is not package data"


@pytest.mark.parametrize("name", [n for n in assets() if n.endswith(".js")])
def test_no_script_puts_text_on_the_page_as_markup(name):
    code = assets()[name].body.decode()
    for unsafe in UNSAFE_JS:
        assert unsafe not in code, f"{name} uses {unsafe}"
    assert not re.search(r"""setAttribute\(\s*["']on""", code), f"{name} sets an event handler attribute"


def test_nothing_inline_and_nothing_from_elsewhere():
    index = assets()["index.html"].body.decode()
    assert not re.search(r"<script(?![^>]*\bsrc=)", index), "an inline script"
    assert "<style" not in index and " style=" not in index, "inline style"
    assert not re.search(r"\son[a-z]+=", index), "an inline event handler"
    for asset in assets().values():
        text = asset.body.decode()
        assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text.replace("http://www.w3.org/2000/svg", "")), \
            f"{asset.name} refers to another site"
    assert "@import" not in assets()["console.css"].body.decode()


def test_the_policy_allows_only_the_scheduler_itself():
    directives = dict(d.strip().split(" ", 1) for d in CONTENT_SECURITY_POLICY.split(";"))
    assert directives["default-src"] == "'self'" and directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'" and directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY


def test_next_slot_is_the_next_match_in_the_schedules_time_zone():
    now = datetime(2026, 3, 10, 12, 0, tzinfo=UTC).timestamp()
    assert next_slot({"cron": "0 2 * * *", "timezone": "UTC"}, now) == datetime(2026, 3, 11, 2, 0, tzinfo=UTC).timestamp()
    # 02:00 in Paris is 01:00 UTC in March (before summer time).
    paris = next_slot({"cron": "0 2 * * *", "timezone": "Europe/Paris"}, now)
    assert paris == datetime(2026, 3, 11, 1, 0, tzinfo=UTC).timestamp()
    assert next_slot({"cron": "0 2 * * *"}, paris) == datetime(2026, 3, 11, 2, 0, tzinfo=UTC).timestamp()


def test_agents_report_their_versions():
    caps = capabilities(torch.device("cpu"))
    assert caps.agent_version and caps.torch_version == str(torch.__version__)


def test_links_lead_only_to_the_console_itself():
    """dom.js's guard on href (a JavaScript regular expression that Python reads alike) takes the
    console's own pages and refuses what leads to another site or runs script."""
    dom = assets()["dom.js"].body.decode()
    found = re.search(r'key === "href" && !/(.+?)/\.test', dom)
    assert found, "dom.js no longer guards href"
    guard = re.compile(found.group(1))
    for own in ("#/runs/r1", "/api/v1/models/r/000001/download", "blob:https://x/1"):
        assert guard.search(own), own
    for other in ("//evil.example/x", "/\\evil.example", "https://evil.example", "javascript:alert(1)",
                  "data:text/html,x", " /x"):
        assert not guard.search(other), other
