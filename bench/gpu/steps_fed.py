"""The pack's federated steps: FedVision and FedReID through the real services (aggregator,
scheduler and agents as processes on this machine, sharing its GPU), the single-process
simulation of the same FedReID training, and the no-op round of a large model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from common import NO_CUDA, SYNTH_REID, Preset, Recorder, median_after_first, report_metric, round_seconds

from fedstream.transfer import download_model
from fedstream.v1 import round_pb2, scheduler_pb2, scheduler_pb2_grpc
from fedstream_tasks import get_task
from fedstream_tasks.base import SiteDataSettings, Task, TrainParams
from fedstream_tasks.torchio import state_of
from fedstream_testing.local import LocalFederation

TRAIN, EVALUATE = round_pb2.ROUND_KIND_TRAIN, round_pb2.ROUND_KIND_EVALUATE
REID_LR = 0.05


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def follow(fed: LocalFederation, sched: str, spec: Any, run_id: str, on_update: Callable[[Any], None]) -> Any:
    """Starts the run and follows it to its end, handing every update to ``on_update`` (figures
    are recorded as rounds commit, so a step stopped at its cap keeps them)."""
    runs = scheduler_pb2_grpc.RunServiceStub(fed.channel(sched))
    run = runs.StartRun(scheduler_pb2.StartRunRequest(spec=spec, run_id=run_id), timeout=30)
    for run in runs.WatchRun(scheduler_pb2.GetRunRequest(run_id=run_id)):
        fed.check_alive()
        on_update(run)
    if run.state != scheduler_pb2.RUN_STATE_SUCCEEDED:
        raise RuntimeError(f"run {run_id} ended {scheduler_pb2.RunState.Name(run.state)}: {run.reason}")
    return run


def start_sites(fed: LocalFederation, task: str, sites: list[Path], aggregator: dict[str, str]) -> tuple[str, str]:
    """Aggregator, scheduler and one agent per site, each agent on ``device=auto``; the
    aggregator's and the scheduler's addresses."""
    agg = fed.start_aggregator({"LOG__LEVEL": "WARNING", **aggregator})
    sched = fed.start_scheduler(agg, {"HEARTBEAT_INTERVAL_S": "1", "LOG__LEVEL": "WARNING"})
    threads = max(1, (os.cpu_count() or 1) // len(sites))
    for site in sites:
        fed.start_agent(site.name, sched, 0, 1, {"TASKS": f'["{task}"]', "DATA__PATH": str(site),
                                                 "CPU_THREADS": str(threads), "LOG__LEVEL": "WARNING"})
    return agg, sched


def training_figures(run: Any, epochs: int) -> dict[str, Any]:
    """Seconds per training round, per local epoch, images per second (all agents together) and
    the agents' peak GPU memory, from the reports of committed training rounds."""
    seconds = round_seconds(run, TRAIN)
    train_s = report_metric(run, TRAIN, "train_seconds")
    seen = report_metric(run, TRAIN, "examples_seen")
    per_epoch = [s / epochs for r in train_s for s in r.values()]
    rates = [sum(seen[i][a] for a in r) / max(r.values()) for i, r in enumerate(train_s) if r]
    peaks = [p for r in report_metric(run, TRAIN, "gpu_peak_bytes") for p in r.values()]
    return {
        "rounds_committed": len(seconds),
        "round_seconds": [round(s, 2) for s in seconds],
        "seconds_per_round": round(median_after_first(seconds), 3) if seconds else None,
        "seconds_per_local_epoch": round(median_after_first(per_epoch), 3) if per_epoch else None,
        "images_per_second": round(median_after_first(rates), 1) if rates else None,
        "agent_peak_gpu_mib": round(max(peaks) / 2**20, 1) if peaks else None,
    }


def fedvision(rec: Recorder, preset: Preset, workdir: Path, _data: Path) -> None:
    from fedvision import union

    from fedstream_tasks.detection.data import SHAPES, VOC_NAMES, generate_sites

    started = time.perf_counter()
    names = VOC_NAMES if preset.vision_task == "fedvision" else SHAPES
    sites = generate_sites(workdir / "data", seed=0, size=preset.vision_size, scale=preset.vision_scale, names=names)
    task = get_task(preset.vision_task)
    heldout = union([task.load_heldout(SiteDataSettings(path=s)) for s in sites])
    rec.figure("data", {"seconds": round(time.perf_counter() - started, 1), "heldout_images": len(heldout.targets),
                        "train_images": sum(task.num_examples(task.load_site(SiteDataSettings(path=s))) for s in sites)})
    spec = scheduler_pb2.RunSpec(
        task=task.name, rounds=preset.vision_rounds, min_agents=len(sites), round_timeout_s=600,
        wait_for_agents_s=300, evaluate_every=preset.vision_rounds,
        training=round_pb2.TrainingConfig(local_epochs=preset.vision_epochs, batch_size=preset.vision_batch,
                                          learning_rate=0.05, seed=0))
    with LocalFederation(workdir / "services") as fed:
        agg, sched = start_sites(fed, task.name, sites, {})
        run = follow(fed, sched, spec, "fedvision",
                     lambda r: rec.figure("federation", training_figures(r, preset.vision_epochs)))
        model = task.build_model(0)
        model.load_state_dict(state_of(download_model(fed.channel(agg), run.run_id, run.latest_version).buffer))
    evaluation = [r for r in run.rounds if r.kind == EVALUATE]
    if evaluation:
        rec.figure("federated_evaluation", {rep.agent_id: round(rep.metrics["map50"], 4)
                                            for rep in evaluation[-1].reports})
    union_map = task.evaluate(model, heldout, device())
    rec.figure("union_map50", round(union_map["map50"], 4))
    rec.figure("union_map", round(union_map["map"], 4))
    rec.check("three agents trained every round", all(len(r.reports) == len(sites) for r in run.rounds
                                                      if r.kind == TRAIN and r.state == round_pb2.ROUND_STATE_COMMITTED))
    rec.finish()



def reid_data(rec: Recorder, preset: Preset, workdir: Path, data: Path) -> None:
    """Runs the synthetic benchmark's generator (--seed 0) and reads its output with the
    project's Market-1501 loader; the dry preset keeps a few training identities per site and
    a few public images."""
    if not SYNTH_REID.is_file():
        rec.finish("failed", f"generator not found at {SYNTH_REID} (set FEDSTREAM_SYNTH_REID)")
        return
    raw = data / "reid-raw"
    started = time.perf_counter()
    subprocess.run([sys.executable, str(SYNTH_REID), "--out", str(raw), "--seed", "0"], check=True,
                   stdout=subprocess.DEVNULL, timeout=600)
    rec.figure("generator_seconds", round(time.perf_counter() - started, 1))
    sites = sorted(d for d in raw.iterdir() if (d / "bounding_box_train").is_dir())
    if preset.reid_identities is not None:
        sites = [subset(site, data / "reid-sites" / site.name, preset.reid_identities) for site in sites]
    task = get_task(preset.reid_task)
    counts = {}
    for site in sites:
        settings = SiteDataSettings(path=site)
        train, heldout = task.load_site(settings), task.load_heldout(settings)
        counts[site.name] = {"train_images": task.num_examples(train), "identities": int(train.labels.max()) + 1,
                             "query": len(heldout.query.labels), "gallery": len(heldout.gallery.labels)}
    public = raw / "public" / "images"
    if preset.reid_identities is not None:
        public = link_first(public, data / "reid-public", 8 * preset.reid_identities)
    rec.figure("sites", counts)
    rec.figure("public_images", len(task.load_public(public)))
    (data / "reid.json").write_text(json.dumps({"sites": [str(s) for s in sites], "public": str(public)}))
    rec.check("four sites siteA..siteD", [s.name for s in sites] == ["siteA", "siteB", "siteC", "siteD"])
    rec.finish()


def subset(site: Path, out: Path, identities: int) -> Path:
    """A site with only its first ``identities`` training identities (links, not copies)."""
    train = out / "bounding_box_train"
    train.mkdir(parents=True, exist_ok=True)
    keep = sorted({p.name[:4] for p in (site / "bounding_box_train").iterdir()})[:identities]
    for p in (site / "bounding_box_train").iterdir():
        if p.name[:4] in keep:
            (train / p.name).symlink_to(p)
    for split in ("query", "bounding_box_test"):
        (out / split).symlink_to(site / split, target_is_directory=True)
    return out


def link_first(source: Path, out: Path, count: int) -> Path:
    """A directory of links to the first ``count`` files of ``source``."""
    out.mkdir(parents=True, exist_ok=True)
    for p in sorted(source.iterdir())[:count]:
        (out / p.name).symlink_to(p)
    return out


def reid_sites(data: Path) -> tuple[list[Path], Path]:
    layout = json.loads((data / "reid.json").read_text())
    return [Path(s) for s in layout["sites"]], Path(layout["public"])


def evaluations(run: Any) -> list[dict[str, list[float]]]:
    """Per evaluation round: site -> [Rank-1, mAP] on the site's own query/gallery."""
    return [{rep.agent_id: [round(rep.metrics["rank1"], 4), round(rep.metrics["map"], 4)] for rep in r.reports}
            for r in run.rounds if r.kind == EVALUATE and r.state == round_pb2.ROUND_STATE_COMMITTED]


def fedreid_run(rec: Recorder, preset: Preset, workdir: Path, data: Path, params: dict[str, Any], rounds: int) -> None:
    """FedPav with ``params`` through the services, evaluated on every site after every round."""
    sites, public = reid_sites(data)
    task = preset.reid_task
    aggregator = ({"DISTILL__PUBLIC_DATA": str(public), "DISTILL__DEVICE": device().type}
                  if "distill_every" in params else {})
    strategy = round_pb2.StrategySpec(name="fedpav")
    strategy.params.update(params)
    spec = scheduler_pb2.RunSpec(
        task=task, rounds=rounds, min_agents=len(sites), round_timeout_s=600, wait_for_agents_s=300,
        evaluate_every=1, strategy=strategy,
        training=round_pb2.TrainingConfig(local_epochs=1, batch_size=preset.reid_batch, learning_rate=REID_LR, seed=0))

    def record(run: Any) -> None:
        rec.figure("federation", training_figures(run, 1))
        rec.figure("evaluation_seconds", [round(s, 2) for s in round_seconds(run, EVALUATE)])
        rec.figure("rank1_map_per_site", evaluations(run))

    with LocalFederation(workdir / "services") as fed:
        _, sched = start_sites(fed, task, sites, aggregator)
        run = follow(fed, sched, spec, "fedreid", record)
    record(run)
    evals = evaluations(run)
    rising = {s: [evals[0][s][0], evals[-1][s][0]] for s in evals[-1]} if evals else {}
    rec.figure("rank1_first_last_evaluation", rising)
    rec.check(f"{rounds} training rounds committed", len(round_seconds(run, TRAIN)) == rounds)
    rec.check("every site evaluated after every round", len(evals) == rounds and all(len(e) == len(sites) for e in evals))
    if "distill_every" in params:
        distilled = [r.metrics for r in run.rounds if r.kind == TRAIN and "distill_teachers" in r.metrics]
        rec.check("server-side distillation ran every round", len(distilled) == rounds)
    rec.finish()


def fedreid(rec: Recorder, preset: Preset, workdir: Path, data: Path) -> None:
    fedreid_run(rec, preset, workdir, data, {"weights": "examples"}, preset.reid_rounds)


def fedreid_cosine(rec: Recorder, preset: Preset, workdir: Path, data: Path) -> None:
    fedreid_run(rec, preset, workdir, data, {"weights": "cosine"}, preset.variant_rounds)


def fedreid_distill(rec: Recorder, preset: Preset, workdir: Path, data: Path) -> None:
    fedreid_run(rec, preset, workdir, data, {"weights": "examples", "distill_every": 1}, preset.variant_rounds)


def simulate_round(tasks: dict[str, Task], data: dict[str, Any], models: dict[str, torch.nn.Module],
                   shared: dict[str, torch.Tensor], params: TrainParams, round_: int) -> dict[str, torch.Tensor]:
    """One FedPav round in this process: each site loads the shared tensors into its own model
    (its private classifier kept), trains as its agent would, and the shared tensors are
    averaged weighted by examples; returns them (on the CPU, as the aggregator holds them)."""
    dev = device()
    total: dict[str, torch.Tensor] = {}
    weights = 0
    for site, task in tasks.items():
        model = models[site]
        model.load_state_dict(shared, strict=False)
        seed = zlib.crc32(f"{params.seed}:{round_}:{site}".encode())
        result = task.train(model, data[site], TrainParams(params.local_epochs, params.batch_size,
                                                           params.learning_rate, seed), dev)
        n = result.num_examples
        weights += n
        for k, v in model.state_dict().items():
            if k in shared:
                value = v.detach().cpu()
                total[k] = total.get(k, torch.zeros_like(value, dtype=torch.float64)) + value.double() * n
    return {k: (v / weights).to(shared[k].dtype) for k, v in total.items()}


def reid_simulation(rec: Recorder, preset: Preset, workdir: Path, data: Path) -> None:
    """The FedReID training of the fedreid step in one process on the same device, no services:
    seconds per round, against the services' figure when that step ran."""
    sites, _ = reid_sites(data)
    tasks = {s.name: get_task(preset.reid_task) for s in sites}
    site_data = {s.name: tasks[s.name].load_site(SiteDataSettings(path=s)) for s in sites}
    models = {name: task.build_model(0) for name, task in tasks.items()}
    first = next(iter(tasks.values()))
    shared = {k: v.detach().cpu().clone() for k, v in models[sites[0].name].state_dict().items() if first.is_shared(k)}
    params = TrainParams(1, preset.reid_batch, REID_LR, 0)
    seconds = []
    for r in range(1, preset.sim_rounds + 1):
        started = time.perf_counter()
        shared = simulate_round(tasks, site_data, models, shared, params, r)
        seconds.append(time.perf_counter() - started)
        rec.figure("round_seconds", [round(s, 2) for s in seconds])
    per_round = median_after_first(seconds)
    rec.figure("seconds_per_round", round(per_round, 3))
    services = workdir.parent / "fedreid" / "result.json"
    if services.is_file():
        figures = json.loads(services.read_text()).get("figures", {}).get("federation", {})
        through = figures.get("seconds_per_round")
        if through:
            rec.figure("services_seconds_per_round", through)
            rec.figure("services_over_simulation", round(through / per_round, 3))
            rec.figure("within_1_5x", through / per_round <= 1.5)
    rec.finish()


class DeviceHolder:
    """The no-op agents' update: the base model copied to the device and held there until the
    next round, then copied back to the host and uploaded unchanged."""

    def __init__(self) -> None:
        self.device = device()
        self.held: dict[str, torch.Tensor] = {}
        self.copy_seconds: list[float] = []

    def update_for(self, agent_id: str) -> Callable[[Any, Any], Any]:
        from fedstream.tensors import FlatBuffer

        def update(base: Any, _assignment: Any) -> Any:
            started = time.perf_counter()
            self.held.pop(agent_id, None)
            on_device = torch.frombuffer(base.data, dtype=torch.uint8).to(self.device, copy=True)
            self.held[agent_id] = on_device
            out = FlatBuffer(base.layout)
            torch.frombuffer(out.data, dtype=torch.uint8).copy_(on_device)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            self.copy_seconds.append(time.perf_counter() - started)
            return out

        return update


def noop(rec: Recorder, preset: Preset, workdir: Path, _data: Path) -> None:
    from run import make_model, store_model

    from fedstream_testing.sim_agent import SimAgent

    layout, arrays = make_model(preset.noop_bytes, tensor_bytes=16 << 20)
    store_model(workdir / "services" / "models", "seed/000000", layout, arrays)
    del arrays
    rec.figure("model_mib", round(layout.total_bytes / 2**20, 1))
    holder = DeviceHolder()
    spec = scheduler_pb2.RunSpec(task="digits", rounds=preset.noop_rounds, min_agents=preset.noop_agents,
                                 round_timeout_s=600, initial_version="seed/000000", wait_for_agents_s=120,
                                 training=round_pb2.TrainingConfig(no_op=True))
    with LocalFederation(workdir / "services") as fed:
        agg = fed.start_aggregator({"LOG__LEVEL": "WARNING"})
        sched = fed.start_scheduler(agg, {"HEARTBEAT_INTERVAL_S": "1", "LOG__LEVEL": "WARNING"})
        agents = [SimAgent(f"agent-{i}", sched, update=holder.update_for(f"agent-{i}"),
                           identity=fed.enroll(sched, f"agent-{i}")).start() for i in range(preset.noop_agents)]
        try:
            run = follow(fed, sched, spec, "noop", lambda r: rec.figure("round_seconds", [
                round(s, 2) for s in round_seconds(r, TRAIN)]))
        finally:
            for agent in agents:
                agent.stop()
    seconds = round_seconds(run, TRAIN)
    rec.figure("agents", preset.noop_agents)
    rec.figure("seconds_per_round", round(median_after_first(seconds), 3))
    rec.figure("host_device_copy_seconds", round(median_after_first(holder.copy_seconds), 3))
    on_gpu = holder.device.type == "cuda"
    rec.check("agents hold the model on the GPU", len(holder.held) == preset.noop_agents if on_gpu else None,
              f"{len(holder.held)} copies on {holder.device}" if on_gpu else NO_CUDA)
    rec.check(f"{preset.noop_rounds} no-op rounds committed", len(seconds) == preset.noop_rounds,
              "; ".join(e for a in agents for e in a.errors))
    rec.finish()
