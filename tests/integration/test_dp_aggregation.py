"""Differential privacy on the real aggregator (gRPC on loopback): central mode commits the base
plus the mean of the clipped changes with Gaussian noise of deviation z C / n; local mode
averages the changes uniformly; non-floating tensors keep the base's values; combinations it
cannot work with are refused; a restarted aggregator gives the same clipped sum."""

from __future__ import annotations

import dataclasses
import json
import time
from functools import partial

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY

from fedstream.convert import plan_to_proto
from fedstream.privacy import DPMode, PrivacySpec, SecureAggregationSpec
from fedstream.rounds import RoundKind, RoundPlan
from fedstream.staleness import BufferSpec
from fedstream.state import SQLiteStateStore
from fedstream.tensors import FlatBuffer, iter_chunks
from fedstream.v1 import aggregator_pb2_grpc as pb_grpc
from fedstream.v1 import round_pb2
from fedstream_aggregator.ingest import UpdateHeader
from fedstream_aggregator.service import AggregatorService
from fedstream_testing.helpers import buffers_of, layout_of, store_model
from fedstream_testing.support import upload as upload_model
from fedstream_testing.support import wait_terminal

RUN = "run-dp"
BASE = f"{RUN}/000000"
upload = partial(upload_model, run_id=RUN, chunk_bytes=8192)


def model_of(rng: np.random.Generator, d: int, scale: float = 1.0) -> dict[str, tuple[str, np.ndarray]]:
    return {
        "w": ("float32", (rng.standard_normal(d) * scale).astype(np.float32)),
        "bn.running_mean": ("float32", (rng.standard_normal(8) * scale).astype(np.float32)),
        "bn.num_batches_tracked": ("int64", np.array(int(rng.integers(1, 1000)), dtype=np.int64)),
        "double": ("float64", rng.standard_normal(5) * scale),
    }


def with_norm(change: dict[str, tuple[str, np.ndarray]], norm: float) -> dict[str, tuple[str, np.ndarray]]:
    """The change scaled to L2 norm ``norm`` over its floating tensors."""
    now = np.sqrt(sum(float(np.sum(a.astype(np.float64) ** 2)) for d, a in change.values() if d.startswith("float")))
    return {k: (d, (a * (norm / now)).astype(a.dtype) if d.startswith("float") else a) for k, (d, a) in change.items()}


def private_plan(participants: tuple[str, ...], privacy: PrivacySpec | None, **changes: object) -> RoundPlan:
    p = RoundPlan(RUN, 1, RoundKind.TRAIN, BASE, participants, len(participants), time.time() + 60,
                  privacy=privacy)
    return dataclasses.replace(p, **changes)  # type: ignore[arg-type]


def read(store, version):
    with store.open(version) as reader:
        buf = FlatBuffer(reader.layout)
        for c in reader.iter_chunks():
            buf.write(c.offset, c.data)
    return buf.arrays()


def clipped_mean(changes, clip: float) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for change in changes:
        norm = np.sqrt(sum(float(np.sum(a.astype(np.float64) ** 2)) for d, a in change.values() if d.startswith("float")))
        factor = min(1.0, clip / norm)
        for k, (d, a) in change.items():
            if d.startswith("float"):
                out[k] = out.get(k, 0) + a.astype(np.float64) * factor / len(changes)
    return out


@pytest.fixture
def control(agg_channel):
    return pb_grpc.AggregatorControlStub(agg_channel)


def clipped_count(tenant: str = "t1") -> float:
    return REGISTRY.get_sample_value("fedstream_dp_updates_clipped_total", {"tenant": tenant}) or 0.0


def test_central_mode_commits_the_base_plus_the_mean_of_the_clipped_changes(control, agg_channel, model_store):
    rng = np.random.default_rng(1)
    base = model_of(rng, 1000)
    store_model(model_store, BASE, base)
    clip = 2.0
    changes = {a: with_norm(model_of(rng, 1000), n) for a, n in (("a", 0.5), ("b", 3.0), ("c", 40.0))}
    privacy = PrivacySpec(DPMode.CENTRAL, clip, 1e-9, 10.0, 1e-5)
    clipped_before = clipped_count()
    control.OpenRound(plan_to_proto(private_plan(("a", "b", "c"), privacy, strategy="fedavg")), timeout=5)

    for i, (agent, change) in enumerate(changes.items()):
        upload(agg_channel, agent, change, 10 ** (i + 1))  # example counts do not weigh under privacy
    event = wait_terminal(control, RUN, 1)

    assert event.state == round_pb2.ROUND_STATE_COMMITTED, event.reason
    got, expected = read(model_store, event.version), clipped_mean(changes.values(), clip)
    for name, change in expected.items():
        np.testing.assert_allclose(got[name], base[name][1].astype(np.float64) + change, rtol=1e-5, atol=1e-6)
    assert got["bn.num_batches_tracked"] == base["bn.num_batches_tracked"][1]  # the base's: a count would leak
    assert clipped_count() - clipped_before == 2
    assert dict(event.metrics) == {"dp_updates_counted": 3.0, "dp_updates_clipped": 2.0}
    lineage = model_store.lineage(event.version)["privacy"]
    assert lineage == {"mode": "central", "clip_norm": clip, "noise_multiplier": 1e-9, "updates_counted": 3,
                       "updates_clipped": 2}


def test_central_noise_has_deviation_z_c_over_n(control, agg_channel, model_store):
    rng = np.random.default_rng(2)
    d, clip, z, n = 200_000, 0.5, 2.0, 4
    base = model_of(rng, d)
    store_model(model_store, BASE, base)
    agents = tuple("abcd")
    changes = {a: with_norm(model_of(rng, d), 0.1) for a in agents}  # within the bound: not clipped
    control.OpenRound(plan_to_proto(private_plan(agents, PrivacySpec(DPMode.CENTRAL, clip, z, 10.0, 1e-5))), timeout=5)

    for agent, change in changes.items():
        upload(agg_channel, agent, change, 5)
    event = wait_terminal(control, RUN, 1)

    assert event.state == round_pb2.ROUND_STATE_COMMITTED, event.reason
    expected = clipped_mean(changes.values(), clip)
    noise = read(model_store, event.version)["w"].astype(np.float64) - base["w"][1] - expected["w"]
    assert float(noise.std()) == pytest.approx(z * clip / n, rel=0.03)
    assert abs(float(noise.mean())) < 5 * (z * clip / n) / np.sqrt(d)
    assert dict(event.metrics)["dp_updates_clipped"] == 0.0


def test_local_mode_averages_the_changes_uniformly_without_clipping(control, agg_channel, model_store):
    rng = np.random.default_rng(3)
    base = model_of(rng, 300)
    store_model(model_store, BASE, base)
    changes = {a: with_norm(model_of(rng, 300), norm) for a, norm in (("a", 0.1), ("b", 50.0))}
    privacy = PrivacySpec(DPMode.LOCAL, 1.0, 1.0, 10.0, 1e-5)
    control.OpenRound(plan_to_proto(private_plan(("a", "b"), privacy)), timeout=5)

    upload(agg_channel, "a", changes["a"], 1)
    upload(agg_channel, "b", changes["b"], 1000)
    event = wait_terminal(control, RUN, 1)

    assert event.state == round_pb2.ROUND_STATE_COMMITTED, event.reason
    got = read(model_store, event.version)
    for name, (dtype, value) in base.items():
        if dtype.startswith("float"):
            mean = (changes["a"][name][1].astype(np.float64) + changes["b"][name][1]) / 2
            np.testing.assert_allclose(got[name], value + mean, rtol=1e-5, atol=1e-5)
        else:
            np.testing.assert_array_equal(got[name], value)
    assert dict(event.metrics) == {"dp_updates_counted": 2.0}
    assert model_store.lineage(event.version)["privacy"]["mode"] == "local"


def test_fedpav_shares_only_its_shared_tensors_under_central_privacy(control, agg_channel, model_store):
    rng = np.random.default_rng(4)
    shared = model_of(rng, 500)  # the base holds the shared tensors only: they are all that travels
    store_model(model_store, BASE, shared)
    changes = {a: with_norm(model_of(rng, 500), norm) for a, norm in (("a", 0.2), ("b", 9.0))}
    privacy = PrivacySpec(DPMode.CENTRAL, 1.0, 1e-9, 10.0, 1e-5)
    control.OpenRound(plan_to_proto(private_plan(("a", "b"), privacy, strategy="fedpav")), timeout=5)

    for agent, change in changes.items():
        upload(agg_channel, agent, change, 7)
    event = wait_terminal(control, RUN, 1)

    assert event.state == round_pb2.ROUND_STATE_COMMITTED, event.reason
    got = read(model_store, event.version)
    for name, change in clipped_mean(changes.values(), 1.0).items():
        np.testing.assert_allclose(got[name], shared[name][1].astype(np.float64) + change, rtol=1e-5, atol=1e-6)


CENTRAL = PrivacySpec(DPMode.CENTRAL, 1.0, 1.0, 10.0, 1e-5)


@pytest.mark.parametrize(
    "changes, named",
    [
        ({"strategy": "median"}, "strategy 'median'"),
        ({"strategy": "trimmed-mean"}, "strategy 'trimmed-mean'"),
        ({"strategy": "multi-krum"}, "strategy 'multi-krum'"),
        ({"strategy": "cosine"}, "cosine weights"),
        ({"strategy": "fedpav", "strategy_params": json.dumps({"weights": "cosine"})}, "cosine weights"),
        ({"strategy": "fedpav", "strategy_params": json.dumps({"distill_every": 2})}, "distillation"),
        ({"distill": True, "task": "digits"}, "distillation"),
        ({"compression": "int8"}, "compression 'int8'"),
        ({"compression": "float16"}, "compression 'float16'"),
        ({"buffer": BufferSpec(2, 2)}, "buffered asynchronous"),
        ({"partial": True}, "shared among aggregators"),
        ({"privacy": PrivacySpec(DPMode.CENTRAL, -1.0, 1.0, 10.0, 1e-5)}, "privacy.clip_norm"),
        ({"privacy": None, "secure_aggregation": SecureAggregationSpec(), "strategy": "median"}, "secure aggregation"),
    ],
)
def test_combinations_privacy_cannot_work_with_are_refused(control, model_store, changes, named):
    store_model(model_store, BASE, model_of(np.random.default_rng(5), 10))
    refused = dataclasses.replace(private_plan(("a", "b"), CENTRAL), **changes)

    with pytest.raises(grpc.RpcError) as e:
        control.OpenRound(plan_to_proto(refused), timeout=5)

    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert named in e.value.details()
    # Nothing was opened: the same round with a compatible plan opens.
    control.OpenRound(plan_to_proto(private_plan(("a", "b"), CENTRAL)), timeout=5)


def test_evaluation_rounds_of_a_private_run_open(control, model_store):
    store_model(model_store, BASE, model_of(np.random.default_rng(6), 10))
    evaluation = dataclasses.replace(private_plan(("a",), CENTRAL), kind=RoundKind.EVALUATE)

    control.OpenRound(plan_to_proto(evaluation), timeout=5)
    control.OpenRound(plan_to_proto(evaluation), timeout=5)  # a repeat of the same plan is a no-op


def send(agg: AggregatorService, agent: str, model, examples: int) -> None:
    layout = layout_of(model)
    chunks = [(c.offset, bytes(c.data), c.crc32c) for c in iter_chunks(layout, buffers_of(layout, model), 999)]
    agg.receive_update(UpdateHeader(RUN, 1, agent, layout, examples, {}), iter(chunks))


def test_a_restarted_aggregator_gives_the_same_clipped_sum(model_store, tmp_path):
    rng = np.random.default_rng(7)
    base = model_of(rng, 2000)
    store_model(model_store, BASE, base)
    changes = {a: with_norm(model_of(rng, 2000), n) for a, n in (("a", 5.0), ("b", 0.3), ("c", 12.0))}
    journal = SQLiteStateStore(tmp_path / "state.db", "t1")
    first = AggregatorService(journal, model_store, tmp_path / "one", chunk_bytes=4096, durable=True)
    first.open_round(private_plan(("a", "b", "c"), PrivacySpec(DPMode.CENTRAL, 1.0, 1e-9, 10.0, 1e-5)))
    send(first, "a", changes["a"], 3)
    send(first, "b", changes["b"], 30)
    first.close()  # the process is gone, its accumulator with it

    second = AggregatorService(journal, model_store, tmp_path / "two", chunk_bytes=4096, durable=True)
    assert second.recover() == 1
    send(second, "c", changes["c"], 300)
    give_up = time.time() + 30
    while second.snapshot(RUN, 1).state != "committed" and time.time() < give_up:
        time.sleep(0.02)
    snap = second.snapshot(RUN, 1)

    assert snap.state == "committed", snap.reason
    assert sorted(r.weight for r in snap.reports) == pytest.approx(sorted([1 / 5.0, 1.0, 1 / 12.0]))
    got = read(model_store, snap.version)
    for name, change in clipped_mean(changes.values(), 1.0).items():
        np.testing.assert_allclose(got[name], base[name][1].astype(np.float64) + change, rtol=1e-5, atol=1e-6)
    second.close()
    journal.close()


def test_a_real_agent_under_local_privacy_uploads_a_clipped_and_noised_change(aggregator, control, model_store, tmp_path):
    from fedstream.rounds import Assignment, TrainingConfig
    from fedstream_agent.agent import Agent
    from fedstream_agent.settings import AgentSettings, AgentTlsSettings
    from fedstream_tasks.base import SiteDataSettings

    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "labels.csv").write_text("img,label\n")
    agent = Agent(AgentSettings(
        agent_id="site", scheduler_endpoint="127.0.0.1:1", tls=AgentTlsSettings(insecure_plaintext=True),
        device="cpu", cpu_threads=1, check_at_start=False,
        data=SiteDataSettings(path=tmp_path / "site", site_index=0, num_sites=3),
    ))
    endpoint = f"127.0.0.1:{aggregator.port}"
    clip, z = 0.5, 0.1
    training = TrainingConfig(seed=1, privacy=PrivacySpec(DPMode.LOCAL, clip, z, 10.0, 1e-5), upload_delta=True)

    def assign(round_: int, kind: RoundKind, base: str) -> Assignment:
        return Assignment(RUN, round_, kind, "digits", base, endpoint, endpoint, training, time.time() + 60)

    control.OpenRound(plan_to_proto(RoundPlan(RUN, 0, RoundKind.INIT, "", ("site",), 1, time.time() + 60)), timeout=5)
    agent.handle(assign(0, RoundKind.INIT, ""))
    assert wait_terminal(control, RUN, 0).state == round_pb2.ROUND_STATE_COMMITTED
    control.OpenRound(plan_to_proto(dataclasses.replace(private_plan(("site",), training.privacy), task="digits")),
                      timeout=5)
    agent.handle(assign(1, RoundKind.TRAIN, BASE))
    event = wait_terminal(control, RUN, 1)

    assert event.state == round_pb2.ROUND_STATE_COMMITTED, event.reason
    base, got = read(model_store, BASE), read(model_store, event.version)
    floating = [k for k, v in base.items() if np.issubdtype(v.dtype, np.floating)]
    d = sum(base[k].size for k in floating)
    change = np.sqrt(sum(float(np.sum((got[k].astype(np.float64) - base[k]) ** 2)) for k in floating))
    # One update, weighing 1: the version is the base plus its change, clipped to C and noised.
    assert change == pytest.approx(np.sqrt(clip**2 + d * (z * clip) ** 2), rel=0.05)
    for k, v in base.items():
        if k not in floating:
            np.testing.assert_array_equal(got[k], v)  # the base's: counts of batches would leak
