"""Server-side knowledge distillation on the aggregator over real gRPC: the committed version is
the FedPav average distilled from the participants' uploaded models on the public set (checked
against the task's own distillation of the same inputs), and every bad plan is refused."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import grpc
import pytest
import torch

from fedstream.errors import ModelNotFound
from fedstream.grpcutil import channel
from fedstream.state import MemoryStateStore
from fedstream.tensors import FlatBuffer
from fedstream.v1 import aggregator_pb2_grpc as pb_grpc
from fedstream.v1 import round_pb2
from fedstream_aggregator.distill import Distiller
from fedstream_aggregator.server import build_server
from fedstream_aggregator.service import AggregatorService
from fedstream_tasks import get_task
from fedstream_tasks.reid.data import SiteSpec, generate_sites
from fedstream_tasks.torchio import buffers_of, layout_of, state_of
from fedstream_testing.support import plan, wait_terminal
from fedstream_testing.support import upload as upload_model

TASK = "fedreid-tiny"
RUN = "reid"
BASE = f"{RUN}/000000"
# This module's uploads: PyTorch state dicts to its run, in 64 KiB chunks.
upload = partial(upload_model, run_id=RUN, chunk_bytes=1 << 16, timeout=60)


@pytest.fixture(scope="module")
def public(tmp_path_factory) -> Path:
    return generate_sites(tmp_path_factory.mktemp("reid"), seed=1, sites=(SiteSpec("a", 3, 2),), public_images=40)[1]


def shared_state(seed: int, noise: float = 0.0) -> dict[str, torch.Tensor]:
    task = get_task(TASK)
    state = {k: v for k, v in task.build_model(0).state_dict().items() if task.is_shared(k)}
    gen = torch.Generator().manual_seed(seed)
    return {k: v + noise * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v.clone()
            for k, v in state.items()}


def store_state(store, version: str, state: dict[str, torch.Tensor]) -> None:
    layout = layout_of(state)
    with store.writer(version, layout, {}) as w:
        for buf in buffers_of(layout, state):
            w.write(buf)
        w.commit()


def serve(tmp_path, model_store, distiller):
    service = AggregatorService(MemoryStateStore("t1"), model_store, tmp_path / "spool", chunk_bytes=1 << 16,
                                distiller=distiller)
    server = build_server(service, "127.0.0.1", 0, max_workers=8)
    return server, channel(f"127.0.0.1:{server.port}")


def distill_plan(participants, **fields):
    p = plan(RUN, 1, participants, base=BASE)
    p.strategy.name = "fedpav"
    p.strategy.params.update({"distill_every": 1})
    p.task = TASK
    p.distill = True
    for k, v in fields.items():
        setattr(p, k, v)
    return p


def test_round_commits_the_distilled_average(tmp_path, model_store, public):
    store_state(model_store, BASE, shared_state(0))
    teachers = {"a": (shared_state(1, 0.02), 30), "b": (shared_state(2, 0.02), 10)}
    server, ch = serve(tmp_path, model_store, Distiller(public, "cpu"))
    try:
        control = pb_grpc.AggregatorControlStub(ch)
        control.OpenRound(distill_plan(list(teachers)), timeout=10)
        for agent, (state, n) in teachers.items():
            upload(ch, agent, state, n)
        event = wait_terminal(control, RUN, 1)
        assert event.state == round_pb2.ROUND_STATE_COMMITTED, event.reason
        assert event.metrics["distill_teachers"] == 2 and event.metrics["distill_images"] == 40
        assert event.metrics["distill_mse_after"] < event.metrics["distill_mse_before"]
        with model_store.open(event.version) as reader:
            got = FlatBuffer(reader.layout)
            for chunk in reader.iter_chunks(1 << 20):
                got.write(chunk.offset, chunk.data)
        # The teachers were kept for the distillation only.
        for agent in teachers:
            with pytest.raises(ModelNotFound):
                model_store.open_update(RUN, 1, agent)
    finally:
        ch.close()
        server.stop(0)

    # The same distillation by the task itself, of the example-weighted mean of the same models.
    task = get_task(TASK)
    mean = {}
    for name, ref in teachers["a"][0].items():
        acc = sum(s[name].to(torch.float64) * n for s, n in teachers.values()) / 40
        mean[name] = acc.to(ref.dtype) if ref.is_floating_point() else torch.round(acc).to(ref.dtype)
    expected, _ = task.distill(mean, [s for s, _ in teachers.values()], task.load_public(public), 5e-4,
                               torch.device("cpu"))
    got_state = state_of(got)
    assert set(got_state) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(got_state[name], value, rtol=1e-4, atol=1e-5)
    # Distillation moved the model off the plain average.
    moved = max(float((got_state[k].double() - mean[k].double()).abs().max()) for k in mean if mean[k].is_floating_point())
    assert moved > 1e-6


@pytest.mark.parametrize(
    ("fields", "code", "message"),
    [
        ({"compression": "int8"}, grpc.StatusCode.INVALID_ARGUMENT, "uncompressed updates"),
        ({"task": ""}, grpc.StatusCode.INVALID_ARGUMENT, "needs the run's task"),
        ({"task": "digits"}, grpc.StatusCode.INVALID_ARGUMENT, "task 'digits' does not support"),
        ({"task": "no-such-task"}, grpc.StatusCode.INVALID_ARGUMENT, "no-such-task"),
        ({"kind": round_pb2.ROUND_KIND_EVALUATE}, grpc.StatusCode.INVALID_ARGUMENT, "training rounds"),
    ],
)
def test_bad_distillation_plans_are_refused(tmp_path, model_store, public, fields, code, message):
    store_state(model_store, BASE, shared_state(0))
    server, ch = serve(tmp_path, model_store, Distiller(public, "cpu"))
    try:
        with pytest.raises(grpc.RpcError) as e:
            pb_grpc.AggregatorControlStub(ch).OpenRound(distill_plan(["a"], **fields), timeout=10)
        assert e.value.code() == code
        assert message in e.value.details()
    finally:
        ch.close()
        server.stop(0)


def test_an_aggregator_without_a_public_set_refuses_distillation(tmp_path, model_store):
    store_state(model_store, BASE, shared_state(0))
    server, ch = serve(tmp_path, model_store, None)
    try:
        control = pb_grpc.AggregatorControlStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            control.OpenRound(distill_plan(["a"]), timeout=10)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "FEDSTREAM_AGGREGATOR_DISTILL__PUBLIC_DATA" in e.value.details()
        # Nothing was opened: the same round without distillation opens and runs.
        p = distill_plan(["a"], distill=False)
        control.OpenRound(p, timeout=10)
        upload(ch, "a", shared_state(3, 0.01), 5)
        assert wait_terminal(control, RUN, 1).state == round_pb2.ROUND_STATE_COMMITTED
    finally:
        ch.close()
        server.stop(0)


def test_a_teacher_that_is_not_the_tasks_model_fails_the_round_with_a_reason(tmp_path, model_store, public):
    # A base model that is not fedreid-tiny's: uploads match it, distillation cannot use them.
    state = {"w": torch.zeros(4, 3)}
    store_state(model_store, BASE, state)
    server, ch = serve(tmp_path, model_store, Distiller(public, "cpu"))
    try:
        control = pb_grpc.AggregatorControlStub(ch)
        control.OpenRound(distill_plan(["a"]), timeout=10)
        upload(ch, "a", {"w": torch.ones(4, 3)}, 5)
        event = wait_terminal(control, RUN, 1)
        assert event.state == round_pb2.ROUND_STATE_FAILED
        assert "distillation refused the model" in event.reason and "missing" in event.reason
        assert model_store.latest(RUN) == BASE
    finally:
        ch.close()
        server.stop(0)


def test_public_set_errors_are_named(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        Distiller(tmp_path / "absent", "cpu")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images")
    with pytest.raises(ValueError, match="holds 0 images"):
        get_task(TASK).load_public(tmp_path / "empty")
