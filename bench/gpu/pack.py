"""The GPU validation pack: the CUDA path and both seed workloads at full size, each step in a
process of its own with its own time cap, written to OUT/results.json and OUT/results.md.

Steps (docs/gpu.md says what each measures): cuda-path, fedvision, reid-data, fedreid,
reid-simulation, noop-1gib, fedreid-cosine, fedreid-distill. A step that fails, crashes or
passes its cap is recorded as such with the figures it had, and the next one runs; the steps
that need the re-ID data are skipped when it could not be made; a step is skipped when the
pack's wall-time budget has no room left for it.

Usage: python bench/gpu/pack.py OUT [--dry-run] [--steps a,b] [--workdir DIR]
       (--dry-run: every step at the smallest sizes, on whatever device there is)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import PRESETS, ROOT, STEPS

HERE = Path(__file__).resolve().parent
NEEDS_REID_DATA = {"fedreid", "reid-simulation", "fedreid-cosine", "fedreid-distill"}
# Below this many seconds of budget a step is not started.
MIN_STEP_S = 10
ENVIRONMENT = """
import json, platform, torch
gpu = torch.cuda.is_available()
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__,
                  "torch_cuda": torch.version.cuda, "cuda_available": gpu,
                  "gpu": torch.cuda.get_device_name(0) if gpu else None,
                  "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if gpu else None}))
"""


def environment() -> dict[str, Any]:
    """Python, torch, and the GPU's name and driver where there is one."""
    env: dict[str, Any] = {"host_cpus": os.cpu_count()}
    try:
        done = subprocess.run([sys.executable, "-c", ENVIRONMENT], capture_output=True, text=True, timeout=120)
        env.update(json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr[-500:]})
    except (subprocess.TimeoutExpired, json.JSONDecodeError) as e:
        env["error"] = str(e)
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        if smi.returncode == 0 and smi.stdout.strip():
            env["nvidia_smi"] = smi.stdout.strip().splitlines()[0]
            env["driver"] = env["nvidia_smi"].split(",")[-1].strip()
    except (OSError, subprocess.TimeoutExpired):
        env["driver"] = None
    return env


def run_step(name: str, preset: str, cap: float, work: Path) -> dict[str, Any]:
    """Runs one step in a process of its own; on its cap, SIGTERM (it stops its federation),
    then SIGKILL to its process group. Its result file holds whatever it had recorded."""
    workdir = work / name
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "step.log"
    started = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, str(HERE / "step.py"), name, "--preset", preset,
                                 "--workdir", str(workdir), "--data", str(work / "data")],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        timed_out = False
        try:
            proc.wait(timeout=cap)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    seconds = time.perf_counter() - started
    result_file = workdir / "result.json"
    result: dict[str, Any] = (json.loads(result_file.read_text()) if result_file.is_file()
                              else {"status": "failed", "reason": "", "figures": {}, "checks": {}})
    if timed_out:
        result.update(status="failed", reason=f"stopped at its cap of {cap:.0f} s")
    elif proc.returncode != 0 and result["status"] != "failed":
        result.update(status="failed", reason=f"exited with code {proc.returncode}")
    if result["status"] == "failed":
        result["log_tail"] = log.read_text(errors="replace")[-1500:]
    return {"name": name, **result, "seconds": round(seconds, 1), "cap_s": round(cap)}


def skipped(name: str, reason: str) -> dict[str, Any]:
    return {"name": name, "status": "skipped", "reason": reason, "figures": {}, "checks": {}, "seconds": 0.0}


def headline(step: dict[str, Any]) -> str:
    """The step's main figures, for its progress line."""
    f = step["figures"]
    keys = ("seconds_per_round", "seconds_per_local_epoch", "images_per_second", "union_map50",
            "services_over_simulation", "agent_peak_gpu_mib")
    flat = {**f, **f.get("federation", {})}
    return ", ".join(f"{k} {flat[k]}" for k in keys if flat.get(k) is not None)


def markdown(report: dict[str, Any]) -> str:
    """results.md: the environment, a table of the steps, then each step's figures and checks."""
    env = report["environment"]
    lines = [f"# fedstream GPU pack: {report['preset']} preset, {report['date']}", "",
             f"GPU: {env.get('gpu') or 'none'}; driver {env.get('driver') or '-'}; torch {env.get('torch')} "
             f"(CUDA {env.get('torch_cuda') or '-'}); Python {env.get('python')}; {env.get('host_cpus')} CPUs. "
             f"Total {report['total_seconds']:.0f} s.", "",
             "| step | status | seconds | cap (s) | reason |", "| --- | --- | --- | --- | --- |"]
    for s in report["steps"]:
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']:.0f} | {s.get('cap_s', '-')} | {s['reason']} |")
    for s in report["steps"]:
        lines += ["", f"## {s['name']}: {s['status']}", ""]
        lines += [f"- {k}: {json.dumps(v)}" for k, v in s["figures"].items()]
        lines += [f"- check {c['status']}: {k}{' (' + c['detail'] + ')' if c['detail'] else ''}"
                  for k, c in s["checks"].items()]
    return "\n".join(lines) + "\n"


def write(out: Path, report: dict[str, Any]) -> None:
    (out / "results.json").write_text(json.dumps(report, indent=1))
    (out / "results.md").write_text(markdown(report))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="where results.json and results.md go")
    parser.add_argument("--dry-run", action="store_true", help="the smallest sizes (the dry preset)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="gpu")
    parser.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset of: " + ", ".join(STEPS))
    parser.add_argument("--workdir", type=Path, default=None, help="data, logs and models (default: a temporary one)")
    args = parser.parse_args()
    preset = PRESETS["dry" if args.dry_run else args.preset]
    names = [n.strip() for n in args.steps.split(",") if n.strip()]
    unknown = sorted(set(names) - set(STEPS))
    if unknown:
        parser.error(f"unknown steps {unknown}; known: {', '.join(STEPS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fedstream-gpu-pack-"))
    started = time.perf_counter()
    report: dict[str, Any] = {"pack": "fedstream GPU validation pack", "preset": preset.name,
                              "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                              "command": " ".join(sys.argv), "root": str(ROOT), "workdir": str(work),
                              "environment": environment(), "steps": [], "total_seconds": 0.0}
    env = report["environment"]
    print(f"fedstream GPU pack, {preset.name} preset: GPU {env.get('gpu') or 'none'}, torch {env.get('torch')}, "
          f"budget {preset.budget_s} s; workdir {work}", flush=True)
    for i, name in enumerate(names, 1):
        left = preset.budget_s - (time.perf_counter() - started)
        reid = next((s for s in report["steps"] if s["name"] == "reid-data"), None)
        if name in NEEDS_REID_DATA and reid is not None and reid["status"] != "passed":
            step = skipped(name, "needs the re-ID data, which reid-data could not make")
        elif left < MIN_STEP_S:
            step = skipped(name, f"no time left in the pack's budget of {preset.budget_s} s")
        else:
            step = run_step(name, preset.name, min(preset.caps[name], left), work)
        report["steps"].append(step)
        report["total_seconds"] = round(time.perf_counter() - started, 1)
        write(args.out, report)
        detail = step["reason"] or headline(step)
        print(f"[{i}/{len(names)}] {name}: {step['status']} in {step['seconds']:.0f} s"
              f"{' - ' + detail if detail else ''}", flush=True)
    failed = [s["name"] for s in report["steps"] if s["status"] == "failed"]
    print(f"done in {report['total_seconds']:.0f} s: {len(names) - len(failed)} of {len(names)} steps did not fail; "
          f"{args.out / 'results.md'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
