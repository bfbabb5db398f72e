"""The shape of the workspace: generated code is fresh, services install only what they need."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_generated_code_is_not_stale(tmp_path):
    protos = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "proto").rglob("*.proto"))
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", "proto", f"--python_out={tmp_path}",
         f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", *protos],
        cwd=ROOT, check=True,
    )
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    committed = ROOT / "core" / "src"
    assert generated, "protoc produced nothing"
    for rel in generated:
        assert (committed / rel).read_text() == (tmp_path / rel).read_text(), f"{rel} is stale: run make proto"
    on_disk = sorted(p.relative_to(committed) for p in (committed / "fedstream" / "v1").glob("*_pb2*.py*"))
    assert on_disk == generated, "generated files without a proto: run make proto"


PACKAGES = {  # distribution folder -> its top-level package
    "core": "fedstream",
    "tasks": "fedstream_tasks",
    "cli": "fedstream_cli",
    "testing": "fedstream_testing",
    "services/scheduler": "fedstream_scheduler",
    "services/aggregator": "fedstream_aggregator",
    "services/client-agent": "fedstream_agent",
}


def dependencies(folder: str) -> list[str]:
    return tomllib.loads((ROOT / folder / "pyproject.toml").read_text())["project"]["dependencies"]


@pytest.mark.parametrize("module", [
    "fedstream_scheduler.main", "fedstream_aggregator.main", "fedstream_cli", "fedstream_testing.local",
    "fedstream_testing.servers", "fedstream_testing.sim_agent", "fedstream_testing.helpers",
    "fedstream_testing.support", "fedstream_tasks",
])
def test_importing_does_not_pull_in_torch(module):
    code = f"import sys, {module}; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# Runs a module's entry point as an install without the tasks' distribution (and so without
# PyTorch) would: importing either fails.
WITHOUT_TASKS = """
import importlib.abc, runpy, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "fedstream_tasks"):
            raise ImportError(f"{name} is not installed")
sys.meta_path.insert(0, Absent())
sys.argv = [sys.argv[1], "--help"]
runpy.run_module(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("module", ["fedstream_scheduler", "fedstream_aggregator"])
def test_the_control_plane_starts_without_the_tasks_installed(module):
    done = subprocess.run([sys.executable, "-c", WITHOUT_TASKS, module], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "usage" in done.stdout


@pytest.mark.parametrize("folder", ["core", "cli", "services/scheduler", "services/aggregator"])
def test_control_plane_does_not_declare_torch(folder):
    deps = " ".join(dependencies(folder))
    assert "torch" not in deps and "fedstream-tasks" not in deps


def test_tasks_pin_torch_and_the_agent_takes_them():
    assert "torch==2.13.0" in dependencies("tasks")
    assert "fedstream-tasks" in dependencies("services/client-agent")


@pytest.mark.parametrize("folder, package", PACKAGES.items())
def test_each_distribution_holds_one_package(folder, package):
    assert sorted(p.name for p in (ROOT / folder / "src").iterdir() if not p.name.endswith(".egg-info")) == [package]


def test_the_core_does_not_import_the_packages_built_on_it():
    core = ROOT / "core" / "src" / "fedstream"
    others = [p for p in PACKAGES.values() if p != "fedstream"]
    for path in core.rglob("*.py"):
        text = path.read_text()
        assert not any(f"import {p}" in text or f"from {p}" in text for p in others), path


def test_no_service_imports_the_cli_or_the_testing_support():
    for folder in ("services/scheduler", "services/aggregator", "services/client-agent", "tasks"):
        for path in (ROOT / folder / "src").rglob("*.py"):
            text = path.read_text()
            assert "fedstream_cli" not in text and "fedstream_testing" not in text, path


@pytest.mark.parametrize("command", ["fedstream", "fedstream-scheduler", "fedstream-aggregator", "fedstream-agent"])
def test_entry_points_have_help(command):
    result = subprocess.run([str(BIN / command), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "usage:" in result.stdout


@pytest.mark.parametrize(
    "command, env, message",
    [
        ("fedstream-scheduler", {"FEDSTREAM_SCHEDULER_GRPC__PORT": "99999"}, "FEDSTREAM_SCHEDULER_GRPC__PORT=99999: "),
        ("fedstream-aggregator", {"FEDSTREAM_AGGREGATOR_CHUNKS__CHUNK_BYTES": "0"}, "FEDSTREAM_AGGREGATOR_CHUNKS__CHUNK_BYTES=0: "),
        ("fedstream-agent", {"FEDSTREAM_AGENT_DEVICE": "tpu"}, "FEDSTREAM_AGENT_DEVICE=tpu: "),
    ],
)
def test_bad_settings_exit_with_a_numbered_code_and_name_the_variable(command, env, message):
    import os

    result = subprocess.run([str(BIN / command)], capture_output=True, text=True, timeout=60, env={**os.environ, **env})
    assert result.returncode == 2
    assert message in result.stderr


def test_committed_openapi_document_is_current():
    from fedstream_scheduler.api.openapi import document

    committed = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
    assert committed.read_text() == document(), "docs/openapi.json is stale: run make openapi"


def test_make_test_fast_runs_the_unit_tier():
    done = subprocess.run(["make", "-n", "test-fast"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "-m pytest -q tests/unit" in done.stdout
