"""The CUDA path: an agent left on ``device=auto`` picks the GPU, a training step of the digits,
detection and re-ID tasks runs under float16 autocast with the gradient scaler, and what the
agent sends is float32 on the CPU and bit-identical to the model it trained."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from common import NO_CUDA, Preset, Recorder

from fedstream.tensors import FlatBuffer
from fedstream.v1 import round_pb2, scheduler_pb2
from fedstream_agent.agent import Agent
from fedstream_agent.settings import AgentSettings, AgentTlsSettings
from fedstream_tasks import get_task
from fedstream_tasks.base import SiteDataSettings, Task, TrainParams
from fedstream_tasks.torchio import buffers_of, layout_of, state_of


class ScalerSpy(torch.amp.GradScaler):
    """torch's GradScaler, counting the optimizer steps it takes."""

    steps = 0

    def step(self, optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
        ScalerSpy.steps += 1
        return super().step(optimizer, *args, **kwargs)


def site_data(task_name: str, preset: Preset, workdir: Path) -> SiteDataSettings:
    """A small site of the task's own generated data (digits: its bundled set)."""
    if task_name == "digits":
        return SiteDataSettings(site_index=0, num_sites=4 if preset.name == "gpu" else 16)
    if task_name.startswith("fedvision"):
        from fedstream_tasks.detection.data import DEFAULT_SITES, SHAPES, VOC_NAMES, generate_site

        names = VOC_NAMES if task_name == "fedvision" else SHAPES
        domain = dataclasses.replace(DEFAULT_SITES[0], images=24)
        generate_site(workdir / "vision", domain, seed=0, size=preset.vision_size, names=names)
        return SiteDataSettings(path=workdir / "vision")
    from fedstream_tasks.reid.data import SiteSpec, generate_sites

    task = get_task(task_name)
    config = task.config  # type: ignore[attr-defined]
    sites, _ = generate_sites(workdir / "reid", seed=0, sites=(SiteSpec("site", 8, 2),), height=config.height,
                              width=config.width, public_images=4)
    return SiteDataSettings(path=sites[0])


def first_layer_dtype(model: torch.nn.Module, run: Any) -> torch.dtype | None:
    """The output dtype of the model's first convolution or linear layer during ``run()``."""
    seen: list[torch.dtype] = []
    layer = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear))
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype) if not seen else None)
    try:
        run()
    finally:
        handle.remove()
    return seen[0] if seen else None


def sent_matches(agent: Agent, task: Task, model: torch.nn.Module) -> tuple[bool, bool, int]:
    """What the agent sends for a plain (not partial) update, decoded as a receiver decodes it:
    (every floating tensor float32 on the CPU, bit-identical to the trained model, bytes)."""
    assignment = scheduler_pb2.Assignment(run_id="pack", round=1, kind=round_pb2.ROUND_KIND_TRAIN)
    state = agent._outgoing(task, assignment, model)
    layout = layout_of(state)
    buffer = FlatBuffer(layout)
    offset = 0
    for view in buffers_of(layout, state):
        buffer.write(offset, view)
        offset += len(view)
    received = state_of(buffer)
    trained = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    fp32 = all(v.device.type == "cpu" and (v.dtype == torch.float32 or not v.is_floating_point())
               for v in received.values())
    identical = received.keys() == trained.keys() and all(
        received[k].dtype == trained[k].dtype and torch.equal(received[k], trained[k]) for k in trained)
    return fp32, identical, layout.total_bytes


def one_task(rec: Recorder, name: str, preset: Preset, workdir: Path) -> None:
    data_settings = site_data(name, preset, workdir / name)
    agent = Agent(AgentSettings(agent_id=f"pack-{name}", tasks=[name], data=data_settings,
                                tls=AgentTlsSettings(insecure_plaintext=True)))
    cuda = torch.cuda.is_available()
    rec.check(f"{name}: agent picks CUDA by itself",
              agent.device.type == "cuda" if cuda else None, str(agent.device) if cuda else NO_CUDA)
    task = get_task(name)
    data = task.load_site(data_settings)
    model = task.build_model(0)
    params = TrainParams(local_epochs=1, batch_size=16, learning_rate=0.01, seed=0,
                         mixed_precision=agent.settings.mixed_precision)
    ScalerSpy.steps = 0
    original, torch.amp.GradScaler = torch.amp.GradScaler, ScalerSpy  # type: ignore[misc]
    result: list[Any] = []
    try:
        dtype = first_layer_dtype(model, lambda: result.append(task.train(model, data, params, agent.device)))
    finally:
        torch.amp.GradScaler = original  # type: ignore[misc]
    metrics = result[0].metrics
    rec.check(f"{name}: float16 autocast", dtype == torch.float16 if cuda else None,
              f"first layer's output {dtype}" if cuda else NO_CUDA)
    rec.check(f"{name}: gradient scaler", ScalerSpy.steps > 0 if cuda else None,
              f"{ScalerSpy.steps} scaled optimizer steps" if cuda else NO_CUDA)
    peak = metrics.get("gpu_peak_bytes")
    rec.check(f"{name}: peak GPU memory reported", peak is not None if cuda else None,
              f"{(peak or 0) / 2**20:.0f} MiB" if cuda else NO_CUDA)
    fp32, identical, size = sent_matches(agent, task, model)
    rec.check(f"{name}: sent model float32 on the CPU", fp32)
    rec.check(f"{name}: sent model bit-identical to the trained one", identical, f"{size} bytes")
    rec.figure(name, {"device": str(agent.device), "train_seconds": metrics["train_seconds"],
                      "examples": metrics["examples_seen"], "train_loss": metrics["train_loss"],
                      "gpu_peak_mib": None if peak is None else peak / 2**20, "model_bytes": size})


def cuda_path(rec: Recorder, preset: Preset, workdir: Path) -> None:
    for name in ("digits", preset.vision_task, preset.reid_task):
        one_task(rec, name, preset, workdir)
    if torch.cuda.is_available():
        rec.finish()
        return
    failed = [n for n, c in rec.checks.items() if c["status"] == "failed"]
    rec.finish("failed" if failed else "skipped",
               f"checks failed: {', '.join(failed)}" if failed else f"{NO_CUDA} (its CPU parts ran and passed)")
