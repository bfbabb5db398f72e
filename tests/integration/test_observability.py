"""Alerting rules checked by promtool; every metric that a rule, a dashboard or docs/metrics.md
names exists in the services' exposition, and every exposed metric is documented."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import fedstream.metrics
import fedstream_agent.metrics
import fedstream_aggregator.metrics
import fedstream_scheduler.metrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "fedstream-rules.yml"
DASHBOARDS = sorted((ROOT / "deploy" / "grafana").glob("*.json"))
NAME = re.compile(r"\b((?:fedstream[_:]|process_)[a-zA-Z0-9_:]+|up)\b")
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
            "gauge": ("",), "summary": ("", "_count", "_sum"), "info": ("_info",)}


def exposed() -> dict[str, str]:
    """Every series name the services expose -> its family's name."""
    assert fedstream.metrics and fedstream_agent.metrics and fedstream_aggregator.metrics and fedstream_scheduler.metrics
    names = {}
    for family in REGISTRY.collect():
        for suffix in SUFFIXES.get(family.type, ("",)):
            names[family.name + suffix] = family.name
        for sample in family.samples:
            names[sample.name] = family.name
    return names


def recorded() -> set[str]:
    rules = yaml.safe_load(RULES.read_text())
    return {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}


def expressions() -> list[tuple[str, str]]:
    out = []
    rules = yaml.safe_load(RULES.read_text())
    out += [(f"rule {r.get('record') or r.get('alert')}", r["expr"]) for g in rules["groups"] for r in g["rules"]]
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        out += [(f"{path.name}: {p['title']}", t["expr"]) for p in board["panels"] for t in p["targets"]]
        out += [(f"{path.name}: variable {v['name']}", v["query"]) for v in board["templating"]["list"]
                if v["type"] == "query"]
    return out


def test_rules_pass_promtool_and_their_unit_tests():
    assert shutil.which("promtool"), "promtool is missing: make test installs Debian's prometheus"
    check = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    tests = subprocess.run(["promtool", "test", "rules", "fedstream-rules.test.yml"], cwd=RULES.parent,
                           capture_output=True, text=True, timeout=60)
    assert tests.returncode == 0, tests.stdout + tests.stderr


def test_every_metric_in_rules_and_dashboards_is_exposed():
    known = set(exposed()) | recorded() | {"up"}
    missing = [(where, name) for where, expr in expressions() for name in NAME.findall(expr) if name not in known]
    assert not missing, missing
    assert len(DASHBOARDS) == 2 and len(expressions()) > 30


def test_dashboards_are_well_formed():
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        assert board["uid"].startswith("fedstream-") and board["panels"]
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), path.name
        for p in board["panels"]:
            assert p["datasource"]["uid"] == "${datasource}" and p["targets"], (path.name, p["title"])


def test_every_exposed_fedstream_metric_is_documented_with_its_labels():
    doc = (ROOT / "docs" / "metrics.md").read_text()
    families = {f for f in set(exposed().values()) if f.startswith("fedstream_")}
    for family in REGISTRY.collect():
        if family.name not in families:
            continue
        shown = family.name + ("_total" if family.type == "counter" else "")
        assert f"`{shown}`" in doc, f"{shown} is not in docs/metrics.md"
    for forbidden in ("agent_id", "run_id", "round"):
        for family in REGISTRY.collect():
            if family.name in families:
                for metric in (REGISTRY._names_to_collectors.get(family.name + s) for s in ("", "_total")):
                    if metric is not None:
                        assert forbidden not in getattr(metric, "_labelnames", ()), (family.name, forbidden)


def test_a_model_store_operation_is_measured_with_its_tenant_and_backend(tmp_path):
    from fedstream.store import LocalModelStore

    labels = {"tenant": "measured", "backend": "local", "operation": "versions"}
    before = REGISTRY.get_sample_value("fedstream_store_operation_seconds_count", labels) or 0.0

    LocalModelStore(tmp_path, tenant="measured").versions("run")

    assert REGISTRY.get_sample_value("fedstream_store_operation_seconds_count", labels) == before + 1
