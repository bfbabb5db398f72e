"""The GPU validation pack's dry run: every step at the smallest sizes on this machine's CPU, so
that the pack a GPU session runs in one command cannot rot between those sessions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
STEPS = ["cuda-path", "fedvision", "reid-data", "fedreid", "reid-simulation", "noop-1gib",
         "fedreid-cosine", "fedreid-distill"]
CUDA_ONLY_CHECKS = ("agent picks CUDA by itself", "float16 autocast", "gradient scaler", "peak GPU memory reported")


@pytest.mark.timeout(600)
def test_dry_run_records_every_step(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu" / "run.sh"), str(out), "--dry-run",
                           "--workdir", str(tmp_path / "work")],
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=590)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [line.split(":")[0] for line in done.stdout.splitlines() if line.startswith("[")] == [
        f"[{i}/{len(STEPS)}] {name}" for i, name in enumerate(STEPS, 1)]

    report = json.loads((out / "results.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == STEPS and report["preset"] == "dry"
    cuda = torch.cuda.is_available()
    for name, step in steps.items():
        expected = "passed" if cuda or name != "cuda-path" else "skipped"
        assert step["status"] == expected, (name, step)
        assert all(c["status"] in ("passed", "skipped") for c in step["checks"].values()), (name, step["checks"])
    if not cuda:
        assert "no CUDA device" in steps["cuda-path"]["reason"]
        for name, check in steps["cuda-path"]["checks"].items():
            cuda_only = name.endswith(CUDA_ONLY_CHECKS)
            assert check == ({"status": "skipped", "detail": "no CUDA device"} if cuda_only
                             else {"status": "passed", "detail": check["detail"]}), name
        assert steps["noop-1gib"]["checks"]["agents hold the model on the GPU"]["status"] == "skipped"
    # The figures each step exists for.
    assert steps["fedvision"]["figures"]["federation"]["seconds_per_round"] > 0
    assert 0 <= steps["fedvision"]["figures"]["union_map50"] <= 1
    assert set(steps["reid-data"]["figures"]["sites"]) == {"siteA", "siteB", "siteC", "siteD"}
    evaluations = steps["fedreid"]["figures"]["rank1_map_per_site"]
    assert len(evaluations) == 2 and all(set(e) == {"siteA", "siteB", "siteC", "siteD"} for e in evaluations)
    assert steps["reid-simulation"]["figures"]["services_over_simulation"] > 0
    assert steps["noop-1gib"]["figures"]["seconds_per_round"] > 0

    markdown = (out / "results.md").read_text()
    for name, step in steps.items():
        assert f"| {name} | {step['status']} |" in markdown
