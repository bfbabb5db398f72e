"""End to end: the three services as separate processes, driven through the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from safetensors.torch import load_file

from fedstream.state import SQLiteStateStore
from fedstream.store import LocalModelStore
from fedstream_tasks.digits import DigitsCNN
from fedstream_testing.local import LocalFederation

BIN = Path(sys.executable).parent


def fedstream(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "fedstream"), *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def federation(tmp_path, monkeypatch):
    with LocalFederation(tmp_path) as procs:
        monkeypatch.setenv("FEDSTREAM_IDENTITY", str(procs.pki / "operator"))  # the CLI's operator certificate
        agg_addr = procs.start_aggregator()
        sched_addr = procs.start_scheduler(agg_addr, {"HEARTBEAT_INTERVAL_S": "0.5"})
        for i in range(2):
            procs.start_agent(f"site-{i}", sched_addr, i, 2, {"DEVICE": "cpu", "CPU_THREADS": "1"})
        yield procs, sched_addr, agg_addr


def test_two_agents_two_rounds_through_separate_processes(federation, tmp_path):
    procs, sched_addr, agg_addr = federation

    started = fedstream("grpc", "run-start", "--scheduler", sched_addr, "--task", "digits", "--rounds", "2", "--min-agents", "2",
                        "--epochs", "1", "--round-timeout", "120", "--run-id", "e2e", "--follow")
    out = tmp_path / "model.safetensors"
    downloaded = fedstream("grpc", "model-download", "e2e", "--aggregator", agg_addr, "-o", str(out))
    got = fedstream("grpc", "run-get", "e2e", "--scheduler", sched_addr)

    assert started.returncode == 0, started.stdout + started.stderr + procs.tail("aggregator") + procs.tail("scheduler")
    assert "round 2/2: committed e2e/000002" in started.stdout
    assert "run e2e succeeded" in started.stdout
    assert downloaded.returncode == 0, downloaded.stderr
    model = DigitsCNN()
    model.load_state_dict(load_file(out))  # a standard safetensors file, loaded without pickle
    assert '"latest_version": "e2e/000002"' in got.stdout
    procs.check_alive()


def test_federated_evaluation_rounds(federation, tmp_path):
    """Evaluation rounds after training rounds, and a run that only evaluates a version: each
    agent evaluates on its held-out split; the metrics are combined by example count and
    recorded with the version."""
    procs, sched_addr, _agg_addr = federation

    trained = fedstream("grpc", "run-start", "--scheduler", sched_addr, "--task", "digits", "--rounds", "2", "--min-agents", "2",
                        "--evaluate-every", "1", "--round-timeout", "120", "--run-id", "ev", "--follow")
    assert trained.returncode == 0, trained.stdout + trained.stderr + procs.tail("scheduler")
    assert "round 1/2: committed ev/000001" in trained.stdout
    assert "round 2 (evaluation of ev/000001): accuracy" in trained.stdout
    assert "round 3 (training 2/2): committed ev/000003" in trained.stdout
    assert "round 4 (evaluation of ev/000003): accuracy" in trained.stdout
    assert "latest model ev/000003" in trained.stdout

    only = fedstream("grpc", "run-start", "--scheduler", sched_addr, "--task", "digits", "--evaluate-only", "--min-agents", "2",
                     "--initial-version", "ev/000003", "--run-id", "ev-only", "--follow")
    assert only.returncode == 0, only.stdout + only.stderr
    got = json.loads(fedstream("grpc", "run-get", "ev-only", "--scheduler", sched_addr).stdout)
    (evaluation,) = got["rounds"]
    assert evaluation["kind"] == "ROUND_KIND_EVALUATE" and evaluation["version"] == "ev/000003"
    reports = evaluation["reports"]
    assert sorted(r["agent_id"] for r in reports) == ["site-0", "site-1"]
    total = sum(int(r["num_examples"]) for r in reports)
    expected = sum(int(r["num_examples"]) * r["metrics"]["accuracy"] for r in reports) / total
    assert evaluation["metrics"]["accuracy"] == pytest.approx(expected)
    assert 0.5 < expected <= 1.0
    records = LocalModelStore(tmp_path / "models", "default").evaluations("ev/000003")
    assert set(records) == {"ev-000004", "ev-only-000001"}
    assert records["ev-only-000001"]["metrics"]["accuracy"] == pytest.approx(expected)
    assert "latest model -" in only.stdout  # an evaluation commits no version

    refused = fedstream("grpc", "run-start", "--scheduler", sched_addr, "--task", "digits", "--evaluate-only")
    assert refused.returncode == 1 and "evaluate_only run needs the initial_version" in refused.stderr


def test_cli_reports_errors_with_their_status(federation):
    _, sched_addr, agg_addr = federation
    missing = fedstream("grpc", "run-get", "nope", "--scheduler", sched_addr)
    no_model = fedstream("grpc", "model-download", "nope", "--aggregator", agg_addr, "-o", "/dev/null")
    assert missing.returncode == 1 and "NOT_FOUND: run 'nope' not found" in missing.stderr
    assert no_model.returncode == 1 and "NOT_FOUND" in no_model.stderr


@pytest.mark.parametrize("leaves", [0, 2], ids=["one-aggregator", "two-leaves"])
def test_demo_runs_and_stops_every_process(tmp_path, leaves):
    result = fedstream("demo", "--agents", "2", "--rounds", "1", "--epochs", "1", "--leaves", str(leaves),
                       "--workdir", str(tmp_path), timeout=300)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "round 1/1: committed" in result.stdout
    if leaves:
        assert "leaf aggregators on" in result.stdout
        for i in range(leaves):  # each leaf folded one agent's update
            assert "update folded" in (tmp_path / f"leaf-{i}.log").read_text()
    assert "held-out accuracy" in result.stdout
    assert "stopped all demo processes" in result.stdout
    assert not _processes_using(tmp_path)
    # The demo ran on the embedded default: its run is in the SQLite file the services shared.
    state = SQLiteStateStore(tmp_path / "state.db")
    (run,) = state.list_runs()
    assert run.state == "succeeded" and run.latest_version.endswith("/000001")
    assert [r.state for r in state.list_rounds(run.run_id)] == ["committed", "committed"]
    state.close()


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_demo_stops_every_process_on_a_signal(tmp_path, sig, code):
    # A shell that starts jobs in the background makes them ignore SIGINT: restore the default,
    # as an interactive terminal has it.
    demo = subprocess.Popen(
        [str(BIN / "fedstream"), "demo", "--agents", "2", "--rounds", "5000", "--workdir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        lines = []
        for line in demo.stdout:
            lines.append(line)
            if "round 1/5000: committed" in line:
                break
        children = psutil.Process(demo.pid).children(recursive=True)
        assert len(children) >= 4, "".join(lines)

        demo.send_signal(sig)
        demo.wait(timeout=60)

        _gone, alive = psutil.wait_procs(children, timeout=15)
        assert alive == []
        assert demo.returncode == code
    finally:
        if demo.poll() is None:
            demo.kill()


def _processes_using(workdir: Path) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline", "environ"]):
        try:
            env = p.info.get("environ") or {}
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            continue
        if any(str(workdir) in v for v in env.values()) and p.pid != os.getpid():
            found.append(p)
    return found


def test_fedpav_keeps_each_sites_classifier_at_home(federation, tmp_path):
    procs, sched_addr, agg_addr = federation

    started = fedstream("grpc", "run-start", "--scheduler", sched_addr, "--task", "digits", "--rounds", "2", "--min-agents", "2",
                        "--epochs", "1", "--run-id", "pav", "--strategy", "fedpav", "--follow")
    out = tmp_path / "pav.safetensors"
    downloaded = fedstream("grpc", "model-download", "pav", "--aggregator", agg_addr, "-o", str(out))

    assert started.returncode == 0, started.stdout + started.stderr + procs.tail("aggregator")
    assert downloaded.returncode == 0, downloaded.stderr
    names = set(load_file(out))
    expected = {n for n in DigitsCNN().state_dict() if not n.startswith("head.3.")}
    assert names == expected  # the backbone, BatchNorm statistics included; no classifier
    assert any(n.endswith("running_mean") for n in names)
