"""What the GPU pack's steps share: the presets (sizes and time caps), the step result each step
writes as it goes, and small helpers over finished runs."""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
# The synthetic re-ID benchmark's generator lives beside the repository (never copied into it);
# FEDSTREAM_SYNTH_REID names another copy (the device machine gets the repository alone).
SYNTH_REID = Path(os.environ.get("FEDSTREAM_SYNTH_REID", ROOT.parent / "shared" / "data" / "gen_synth_reid.py"))
NO_CUDA = "no CUDA device"


@dataclass(frozen=True)
class Preset:
    """Sizes of every step, and each step's time cap in seconds."""

    name: str
    vision_task: str
    vision_size: int
    vision_scale: float
    vision_rounds: int
    vision_epochs: int
    vision_batch: int
    reid_task: str
    reid_rounds: int
    reid_batch: int
    # Training identities kept per site (None: all), query/gallery kept whole.
    reid_identities: int | None
    variant_rounds: int
    sim_rounds: int
    noop_bytes: int
    noop_agents: int
    noop_rounds: int
    caps: dict[str, int] = field(default_factory=dict)
    # The whole pack's wall-time budget: later steps get what is left.
    budget_s: int = 570


STEPS = ("cuda-path", "fedvision", "reid-data", "fedreid", "reid-simulation", "noop-1gib",
         "fedreid-cosine", "fedreid-distill")

PRESETS = {
    # One modern data-centre GPU, everything within 10 minutes.
    "gpu": Preset(
        name="gpu", vision_task="fedvision", vision_size=416, vision_scale=1.0, vision_rounds=3,
        vision_epochs=1, vision_batch=16, reid_task="fedreid", reid_rounds=12, reid_batch=32,
        reid_identities=None, variant_rounds=4, sim_rounds=3, noop_bytes=1 << 30, noop_agents=3,
        noop_rounds=3,
        caps={"cuda-path": 90, "fedvision": 150, "reid-data": 60, "fedreid": 240, "reid-simulation": 90,
              "noop-1gib": 120, "fedreid-cosine": 90, "fedreid-distill": 90},
        budget_s=570,
    ),
    # The CPU dry run: every step at the smallest sizes (make test runs it).
    "dry": Preset(
        name="dry", vision_task="fedvision-tiny", vision_size=64, vision_scale=0.1, vision_rounds=1,
        vision_epochs=1, vision_batch=8, reid_task="fedreid-tiny", reid_rounds=2, reid_batch=16,
        reid_identities=4, variant_rounds=1, sim_rounds=1, noop_bytes=4 << 20, noop_agents=2,
        noop_rounds=2,
        caps={"cuda-path": 60, "fedvision": 60, "reid-data": 60, "fedreid": 60, "reid-simulation": 30,
              "noop-1gib": 40, "fedreid-cosine": 50, "fedreid-distill": 50},
        budget_s=300,
    ),
}


class Recorder:
    """A step's result file, rewritten whole after every change, so that a step killed at its
    cap still leaves the figures it had."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.status = "failed"
        self.reason = "did not finish"
        self.figures: dict[str, Any] = {}
        self.checks: dict[str, dict[str, str]] = {}
        self.save()

    def figure(self, name: str, value: Any) -> None:
        self.figures[name] = value
        self.save()

    def check(self, name: str, ok: bool | None, detail: str = "") -> bool:
        """Records a check: True passed, False failed, None skipped (``detail`` says why)."""
        status = "skipped" if ok is None else ("passed" if ok else "failed")
        self.checks[name] = {"status": status, "detail": detail}
        self.save()
        return bool(ok)

    def finish(self, status: str | None = None, reason: str = "") -> None:
        """Passed unless a check failed, or ``status`` as given."""
        failed = [n for n, c in self.checks.items() if c["status"] == "failed"]
        self.status = status or ("failed" if failed else "passed")
        self.reason = reason or (f"checks failed: {', '.join(failed)}" if failed else "")
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"status": self.status, "reason": self.reason, "figures": self.figures,
                                   "checks": self.checks}, indent=1))
        tmp.replace(self.path)


def round_seconds(run: Any, kind: int) -> list[float]:
    """Wall seconds of each committed round of that kind (fedstream.v1 Run)."""
    from fedstream.v1 import round_pb2

    return [r.finished_unix - r.started_unix for r in run.rounds
            if r.kind == kind and r.state == round_pb2.ROUND_STATE_COMMITTED]


def median_after_first(values: list[float]) -> float:
    """The median leaving out the first value (it pays for start-up) when there are others."""
    rest = values[1:] or values
    return statistics.median(rest) if rest else float("nan")


def report_metric(run: Any, kind: int, name: str) -> list[dict[str, float]]:
    """Per committed round of that kind: agent id -> that metric of its report."""
    from fedstream.v1 import round_pb2

    return [{rep.agent_id: rep.metrics[name] for rep in r.reports if name in rep.metrics}
            for r in run.rounds if r.kind == kind and r.state == round_pb2.ROUND_STATE_COMMITTED]


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())
