"""Secure aggregation on a real aggregator over gRPC: agents exchange keys through the
SecureAggregation service, upload masked changes through UploadUpdate, and the round commits
base + the weighted mean of the survivors' changes (within the quantization bound), with a
participant dropping after sharing its keys; every hostile message refused with its status,
nothing changed; a restart fails the round cleanly."""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from fedstream.convert import plan_from_proto, plan_to_proto
from fedstream.privacy import DPMode, PrivacySpec, SecureAggregationSpec
from fedstream.rounds import RoundPlan
from fedstream.secagg.messages import CIPHERTEXT_BYTES
from fedstream.secagg.quantize import error_bound
from fedstream.state import SQLiteStateStore
from fedstream.tensors import FlatBuffer
from fedstream.v1 import aggregator_pb2_grpc, round_pb2
from fedstream.v1 import secagg_pb2 as spb
from fedstream.v1 import secagg_pb2_grpc as spb_grpc
from fedstream_agent.secagg import SecureAggregationClient, privatize_change
from fedstream_aggregator.service import AggregatorService
from fedstream_testing.helpers import layout_of, store_model
from fedstream_testing.secagg import Authority
from fedstream_testing.support import plan, upload, upload_tensors, wait_terminal

RUN = "run-s"
BASE = f"{RUN}/000000"
AGENTS = ["a", "b", "c", "d", "e"]
SPEC = SecureAggregationSpec(max_dropout=0.4, clip_range=1.0, step_timeout_s=3.0)
CREDENTIALS = Authority().all(AGENTS)


def base_model() -> dict[str, tuple[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return {
        "w": ("float32", rng.normal(0, 1, 300).astype(np.float32)),
        "steps": ("int64", np.array([7], dtype=np.int64)),
        "b": ("float32", rng.normal(0, 1, 17).astype(np.float32)),
    }


def changes(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w": rng.normal(0, 0.1, 300), "b": rng.normal(0, 0.1, 17)}


def secure_plan(participants=AGENTS, *, strategy="fedavg", target=0, timeout=30.0, **params):
    p = plan(RUN, 1, list(participants), base=BASE, target_updates=target, timeout=timeout,
             min_updates=SPEC.threshold(len(participants)))
    p.strategy.name = strategy
    p.strategy.params.update(params)
    p.secure_aggregation.max_dropout = SPEC.max_dropout
    p.secure_aggregation.clip_range = SPEC.clip_range
    p.secure_aggregation.step_timeout_s = SPEC.step_timeout_s
    return p


@pytest.fixture
def base(model_store):
    model = base_model()
    store_model(model_store, BASE, model)
    return model


def client(ch, agent, participants=AGENTS, credentials=CREDENTIALS):
    return SecureAggregationClient(ch, RUN, 1, agent, SPEC, credentials[agent], participants,
                                   give_up_unix=time.time() + 30)


def run_agent(ch, agent, change, examples, *, drop_after_shares=False, participants=AGENTS, credentials=CREDENTIALS):
    c = client(ch, agent, tuple(participants), credentials)
    c.advertise()
    c.share_keys()
    if drop_after_shares:
        return None
    c.receive_shares()
    wire, pieces = c.masked(layout_of(base_model()), change, examples)
    upload_tensors(ch, agent, wire, pieces, examples, run_id=RUN)
    c.confirm()
    c.unmask()
    return c


def read_model(model_store, version):
    return read_model_of(model_store, version, base_model())


def read_model_of(model_store, version, model):
    layout = layout_of(model)
    with model_store.open(version) as reader:
        got = FlatBuffer(layout)
        for chunk in reader.iter_chunks():
            got.write(chunk.offset, chunk.data)
    return got.arrays()


def test_a_round_commits_the_survivors_mean_when_one_drops_after_sharing_keys(agg_channel, base, model_store):
    control = aggregator_pb2_grpc.AggregatorControlStub(agg_channel)
    control.OpenRound(secure_plan(target=4), timeout=5)
    examples = {"a": 10, "b": 20, "c": 30, "d": 40, "e": 50}
    deltas = {a: changes(i) for i, a in enumerate(AGENTS)}

    with ThreadPoolExecutor(len(AGENTS)) as pool:
        futures = [pool.submit(run_agent, agg_channel, a, deltas[a], examples[a], drop_after_shares=a == "e")
                   for a in AGENTS]
        [f.result(timeout=60) for f in futures]
    event = wait_terminal(control, RUN, 1)

    assert event.state == round_pb2.ROUND_STATE_COMMITTED, event.reason
    assert event.version == f"{RUN}/000001"
    got = read_model(model_store, event.version)
    survivors = ["a", "b", "c", "d"]
    total = sum(examples[a] for a in survivors)
    bound = error_bound(total, len(survivors)) + 1e-6  # float32 storage of the result
    for name in ("w", "b"):
        mean = sum(examples[a] * deltas[a][name] for a in survivors) / total
        expected = base[name][1].astype(np.float64) + mean
        assert np.max(np.abs(got[name] - expected)) <= bound
    assert got["steps"].tolist() == [7]  # non-floating tensors keep the base's values
    lineage = model_store.lineage(event.version)
    block = lineage["secure_aggregation"]
    assert (block["participants"], block["shared_keys"], block["uploaded"], block["dropped"]) == (5, 5, 4, ["e"])
    assert block["threshold"] == 3 and block["ring"] == "Z_2^64" and block["fraction_bits"] == 24


def status_of(call):
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_hostile_protocol_messages_are_refused_and_change_nothing(agg_channel, base):
    control = aggregator_pb2_grpc.AggregatorControlStub(agg_channel)
    control.OpenRound(secure_plan(["a", "b", "c"], timeout=60), timeout=5)
    stub = spb_grpc.SecureAggregationStub(agg_channel)
    # A plaintext aggregator cannot check signatures (it has no authority); their sizes it checks.
    signed = {"signature": b"s" * 64, "certificate": CREDENTIALS["a"].signer.certificate}
    good = spb.AdvertiseRequest(run_id=RUN, round=1, agent_id="a", c_pk=bytes(range(32)), s_pk=bytes(range(1, 33)),
                                **signed)

    short = spb.AdvertiseRequest(run_id=RUN, round=1, agent_id="a", c_pk=b"x" * 31, s_pk=bytes(32), **signed)
    assert status_of(lambda: stub.Advertise(short, timeout=5))[0] == grpc.StatusCode.INVALID_ARGUMENT
    unsigned = spb.AdvertiseRequest(run_id=RUN, round=1, agent_id="a", c_pk=good.c_pk, s_pk=good.s_pk)
    code, details = status_of(lambda: stub.Advertise(unsigned, timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "signature must be 1 to 1024 bytes" in details
    huge = spb.AdvertiseRequest(run_id=RUN, round=1, agent_id="a", c_pk=good.c_pk, s_pk=good.s_pk,
                                signature=b"s", certificate=bytes(8193))
    assert status_of(lambda: stub.Advertise(huge, timeout=5))[0] == grpc.StatusCode.INVALID_ARGUMENT
    stranger = spb.AdvertiseRequest(run_id=RUN, round=1, agent_id="z", c_pk=good.c_pk, s_pk=good.s_pk, **signed)
    assert status_of(lambda: stub.Advertise(stranger, timeout=5))[0] == grpc.StatusCode.PERMISSION_DENIED
    stub.Advertise(good, timeout=5)
    stub.Advertise(good, timeout=5)  # a replay: accepted, nothing changes
    changed = spb.AdvertiseRequest(run_id=RUN, round=1, agent_id="a", c_pk=good.s_pk, s_pk=good.c_pk, **signed)
    code, details = status_of(lambda: stub.Advertise(changed, timeout=5))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "already advertised other keys" in details
    early = spb.StepRequest(run_id=RUN, round=1, agent_id="a", wait_s=0)
    assert not stub.GetRoster(early, timeout=5).ready
    unmask = spb.UnmaskRequest(run_id=RUN, round=1, agent_id="a")
    code, details = status_of(lambda: stub.Unmask(unmask, timeout=5))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "unmasking has not started" in details
    confirm = spb.ConfirmSurvivorsRequest(run_id=RUN, round=1, agent_id="a", signature=b"s")
    code, details = status_of(lambda: stub.ConfirmSurvivors(confirm, timeout=5))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "the survivors are not known yet" in details
    assert not stub.GetSurvivors(early, timeout=5).ready
    shares = spb.ShareKeysRequest(run_id=RUN, round=1, agent_id="a", seed_commitment=bytes(32), shares=[
        spb.EncryptedShare(sender="a", recipient="mallory", ciphertext=bytes(CIPHERTEXT_BYTES))])
    code, details = status_of(lambda: stub.ShareKeys(shares, timeout=5))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "advertise step is still open" in details
    model = {"w": ("float32", np.zeros(300, np.float32)), "b": ("float32", np.zeros(17, np.float32))}
    code, details = status_of(lambda: upload(agg_channel, "a", model, 5, run_id=RUN))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "cannot upload a masked input in step advertise" in details


def test_uploads_need_shared_keys_and_the_masked_layout(agg_channel, base):
    control = aggregator_pb2_grpc.AggregatorControlStub(agg_channel)
    control.OpenRound(secure_plan(["a", "b", "c"], timeout=60), timeout=5)
    clients = {a: client(agg_channel, a, "abc") for a in "abc"}
    for c in clients.values():
        c.advertise()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda c: c.share_keys(), [clients["a"], clients["b"]]))
    clients["a"].receive_shares()  # after the share step's timeout: "c" did not share keys
    stray = spb.ShareKeysRequest(run_id=RUN, round=1, agent_id="c", seed_commitment=bytes(32))

    code, details = status_of(lambda: spb_grpc.SecureAggregationStub(agg_channel).ShareKeys(stray, timeout=5))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "cannot share keys in step upload" in details
    wire, pieces = clients["a"].masked(layout_of(base_model()), changes(1), 5)
    code, details = status_of(lambda: upload_tensors(agg_channel, "c", wire, list(pieces), 5, run_id=RUN))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "'c' did not share keys" in details
    floats = {"w": ("float32", np.zeros(300, np.float32)), "b": ("float32", np.zeros(17, np.float32))}
    code, details = status_of(lambda: upload(agg_channel, "a", floats, 5, run_id=RUN))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "does not match model" in details


@pytest.mark.parametrize(("strategy", "params", "words"), [
    ("median", {}, "strategy 'median'"),
    ("uniform", {}, "strategy 'uniform'"),
    ("fedpav", {"weights": "cosine"}, "weights=cosine"),
])
def test_combinations_that_need_each_update_are_refused(agg_channel, base, strategy, params, words):
    control = aggregator_pb2_grpc.AggregatorControlStub(agg_channel)

    code, details = status_of(lambda: control.OpenRound(secure_plan(strategy=strategy, **params), timeout=5))

    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "secure_aggregation" in details and words in details


def test_a_restarted_aggregator_fails_a_secure_round_cleanly(model_store, tmp_path):
    journal = SQLiteStateStore(tmp_path / "state.db", "t1")
    store_model(model_store, BASE, base_model())
    first = AggregatorService(journal, model_store, tmp_path / "one", chunk_bytes=4096, durable=True)
    first.open_round(RoundPlan(RUN, 1, "train", BASE, ("a", "b", "c"), 2, time.time() + 60,
                               secure_aggregation=SPEC))
    first.close()  # the process is gone, and the protocol's keys and masked sum with it

    second = AggregatorService(journal, model_store, tmp_path / "two", chunk_bytes=4096, durable=True)
    second.recover()

    record = journal.get_aggregation(RUN, 1, "")
    assert record.state == "failed"
    assert record.reason == "aggregator restarted during secure aggregation"
    journal.close()


def test_central_privacy_noises_the_unmasked_mean_of_the_agents_clipped_changes(agg_channel, model_store):
    d, clip, z = 200_000, 0.5, 2.0
    rng = np.random.default_rng(5)
    model = {"w": ("float32", rng.normal(0, 1, d).astype(np.float32)), "steps": ("int64", np.array([7]))}
    store_model(model_store, BASE, model)
    privacy = PrivacySpec(DPMode.CENTRAL, clip, z, 10.0, 1e-5)
    agents = ["a", "b", "c", "d"]
    deltas = {a: {"w": rng.normal(0, 1, d) * (0.1 if a != "d" else 50.0) / np.sqrt(d)} for a in agents}
    deltas["d"]["w"] *= 1e3  # a hostile site: norm 5e4, clipped to C by its own agent before masking
    secure_round = dataclasses.replace(plan_from_proto(secure_plan(agents, timeout=60)), privacy=privacy)
    control = aggregator_pb2_grpc.AggregatorControlStub(agg_channel)
    control.OpenRound(plan_to_proto(secure_round), timeout=5)

    def agent(name: str, change: dict[str, np.ndarray]) -> None:
        c = client(agg_channel, name, tuple(agents))
        c.advertise()
        c.share_keys()
        c.receive_shares()
        privatize_change(change, privacy)  # what SecureTraining does under central mode
        wire, pieces = c.masked(layout_of(model), change, 1)
        upload_tensors(agg_channel, name, wire, pieces, 0, run_id=RUN)
        c.confirm()
        c.unmask()

    with ThreadPoolExecutor(len(agents)) as pool:
        [f.result(timeout=60) for f in [pool.submit(agent, a, deltas[a]) for a in agents]]
    event = wait_terminal(control, RUN, 1)

    assert event.state == round_pb2.ROUND_STATE_COMMITTED, event.reason
    assert np.linalg.norm(deltas["d"]["w"]) == pytest.approx(clip)  # clipped in place by privatize_change
    mean = sum(deltas[a]["w"] for a in agents) / len(agents)
    got = read_model_of(model_store, event.version, model)
    noise = got["w"].astype(np.float64) - model["w"][1] - mean
    assert float(noise.std()) == pytest.approx(z * clip / len(agents), rel=0.03)
    assert abs(float(noise.mean())) < 5 * (z * clip / len(agents)) / np.sqrt(d)
    assert got["steps"].tolist() == [7]
    lineage = model_store.lineage(event.version)
    assert lineage["privacy"]["mode"] == "central" and lineage["secure_aggregation"]["uploaded"] == 4
