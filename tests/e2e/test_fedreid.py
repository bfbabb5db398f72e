"""FedReID through the services at CI size: three sites of very different sizes with disjoint
identities, FedPav with cosine-distance weights and server-side distillation every second
round, then a federated evaluation round by the Market-1501 protocol. No site's classifier
ever leaves it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from fedstream_tasks.reid.data import SiteSpec, generate_sites
from fedstream_testing.helpers import run_script as run
from fedstream_testing.local import LocalFederation

TASK = "fedreid-tiny"


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    specs = (SiteSpec("big", 18, 3), SiteSpec("mid", 9, 2), SiteSpec("small", 6, 2, 1))
    return generate_sites(tmp_path_factory.mktemp("fedreid"), seed=4, sites=specs)


def test_fedpav_with_cosine_weights_and_distillation_through_the_services(sites, tmp_path, monkeypatch):
    sites, public = sites
    with LocalFederation(tmp_path / "services") as fed:
        monkeypatch.setenv("FEDSTREAM_IDENTITY", str(fed.pki / "operator"))
        agg = fed.start_aggregator({"DISTILL__PUBLIC_DATA": str(public), "DISTILL__DEVICE": "cpu"})
        sched = fed.start_scheduler(agg, {"HEARTBEAT_INTERVAL_S": "0.5"})
        for site in sites:
            fed.start_agent(site.name, sched, 0, 1, {
                "TASKS": f'["{TASK}"]', "DATA__PATH": str(site), "DEVICE": "cpu", "CPU_THREADS": "1",
            })
        started = run("fedstream", "grpc", "run-start", "--scheduler", sched, "--task", TASK, "--rounds", "2",
                      "--min-agents", "3", "--epochs", "1", "--batch-size", "16", "--strategy", "fedpav",
                      "--strategy-param", "weights=cosine", "--strategy-param", "distill_every=2", "--evaluate-every", "2", "--round-timeout", "180",
                      "--run-id", "reid", "--follow")
        assert started.returncode == 0, started.stdout + started.stderr + fed.tail("scheduler") + fed.tail("big")
        assert "round 3 (evaluation of reid/000002): map" in started.stdout
        got = json.loads(run("fedstream", "grpc", "run-get", "reid", "--scheduler", sched).stdout)
        fed.check_alive()

    for rnd in got["rounds"][1:3]:
        assert {r["agent_id"] for r in rnd["reports"]} == {"big", "mid", "small"}
        assert all(r["metrics"]["cosine_distance"] > 0 for r in rnd["reports"])
    # Distillation ends the second training round only; its embedding error falls.
    assert not any(k.startswith("distill") for k in got["rounds"][1].get("metrics", {}))
    figures = got["rounds"][2]["metrics"]
    assert figures["distill_teachers"] == 3 and figures["distill_images"] > 0
    assert figures["distill_mse_after"] < figures["distill_mse_before"]
    evaluation = got["rounds"][-1]
    assert {"rank1", "rank5", "rank10", "map"} <= set(evaluation["metrics"])
    # Training images 12 x 3 x 2, 6 x 2 x 2, 4 x 2 x 1: the sites differ in size.
    examples = {r["agent_id"]: int(r["num_examples"]) for r in got["rounds"][1]["reports"]}
    assert examples == {"big": 72, "mid": 24, "small": 8}
    # The global model holds the shared backbone and bottleneck only, BatchNorm statistics in.
    with safe_open(tmp_path / "services" / "models" / "default" / "runs" / "reid" / "000002.safetensors", "pt") as f:
        names = set(f.keys())
    assert not any(n.startswith("classifier.") for n in names)
    assert "bottleneck.1.running_mean" in names and "bottleneck.0.weight" in names


def test_benchmark_command_on_a_data_directory(tmp_path):
    """bench/fedreid.py on sites in their published layout (here generated), as a user with the
    real data sets runs it: the table and the PNG are written into its work directory, and the
    published ones in docs/ are left alone (only --write-docs replaces them)."""
    data = tmp_path / "data"
    assert run("fedstream", "data", "generate-reid", "--out", str(data), "--scale", "0.5", "--public-images", "16").returncode == 0
    root = Path(__file__).resolve().parents[2]
    bench = root / "bench" / "fedreid.py"
    published = {p: p.read_bytes() for p in (root / "docs" / "fedreid-benchmark.md", root / "docs" / "fedreid-rank1.png")}
    done = subprocess.run(
        [sys.executable, str(bench), "--data", str(data), "--rounds", "2", "--last", "2",
         "--configs", "local only,FedPav + KD", "--workdir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| local only |" in done.stdout and "| FedPav + KD |" in done.stdout
    assert f"--data {data}" in done.stdout
    for site in ("market", "duke", "cuhk", "viper"):
        assert f"{site} R1 / mAP" in done.stdout
    assert (tmp_path / "out" / "fedreid-rank1.png").read_bytes()[:4] == b"\x89PNG"
    assert "| FedPav + KD |" in (tmp_path / "out" / "fedreid-benchmark.md").read_text()
    assert all(p.read_bytes() == before for p, before in published.items())
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = subprocess.run([sys.executable, str(bench), "--data", str(empty)], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "holds no site in the Market-1501 layout" in refused.stderr
