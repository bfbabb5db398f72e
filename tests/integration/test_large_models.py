"""Rounds whose accumulator is kept on disk (a memory budget far below the model) commit, on
both model stores, versions and strategy state bit-identical to those of the in-memory
accumulator, for every dtype."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from fedstream import sums
from fedstream.rounds import RoundPlan
from fedstream.state import MemoryStateStore
from fedstream.store import LocalModelStore, ModelStore
from fedstream.store.s3 import S3ModelStore, make_client
from fedstream.tensors import iter_chunks
from fedstream_aggregator.ingest import UpdateHeader
from fedstream_aggregator.service import AggregatorService
from fedstream_testing.helpers import buffers_of, layout_of, random_model, store_model

RUN = "large"


def make_store(kind: str, request, tmp_path, tenant: str) -> ModelStore:
    if kind == "s3":
        settings = request.getfixturevalue("s3_settings")
        store = S3ModelStore(make_client(settings), settings, tmp_path / "staging", tenant)
        store.ping()  # makes the bucket
        return store
    return LocalModelStore(tmp_path / "models", tenant=tenant)


def raw(store: ModelStore, version: str, state: bool = False) -> bytes:
    with (store.open_state(version) if state else store.open(version)) as reader:
        return b"".join(bytes(c.data) for c in reader.iter_chunks())


def run_round(agg: AggregatorService, round_: int, base: str, strategy: str, params: dict, updates: dict) -> str:
    agg.open_round(RoundPlan(RUN, round_, "train", base, tuple(updates), len(updates), time.time() + 60,
                             strategy, json.dumps(params, sort_keys=True)))
    for agent, (model, n) in updates.items():
        layout = layout_of(model)
        chunks = [(c.offset, bytes(c.data), c.crc32c) for c in iter_chunks(layout, buffers_of(layout, model), 4096)]
        agg.receive_update(UpdateHeader(RUN, round_, agent, layout, n, {}), iter(chunks))
    give_up = time.time() + 30
    while agg.snapshot(RUN, round_).state not in ("committed", "failed") and time.time() < give_up:
        time.sleep(0.02)
    snap = agg.snapshot(RUN, round_)
    assert snap.state == "committed", snap.reason
    return snap.version


@pytest.mark.parametrize("kind", ["local", "s3"])
@pytest.mark.parametrize("strategy, params", [("fedavg", {}), ("fedadam", {"eta": 0.5, "tau": 0.01})])
def test_a_round_on_disk_commits_what_a_round_in_memory_does(kind, strategy, params, request, tmp_path, monkeypatch):
    # Windows of 96 bytes: every tensor of the model spans several, and none ends on a window's edge.
    monkeypatch.setattr(sums, "MIN_WINDOW_BYTES", 96)
    monkeypatch.setattr(sums, "MAX_WINDOW_BYTES", 96)
    rounds = [{a: (random_model(10 * r + i, 16), 5 + 3 * i) for i, a in enumerate("abc")} for r in (1, 2)]
    results = {}
    for budget in (1 << 40, 0):
        store = make_store(kind, request, tmp_path / str(budget), tenant=f"{strategy}-{budget}")
        store_model(store, f"{RUN}/000000", random_model(0, 16))
        agg = AggregatorService(MemoryStateStore(), store, tmp_path / f"spool{budget}", chunk_bytes=4096,
                                accumulator_memory_budget_bytes=budget)
        v1 = run_round(agg, 1, f"{RUN}/000000", strategy, params, rounds[0])
        v2 = run_round(agg, 2, v1, strategy, params, rounds[1])
        results[budget] = [raw(store, v1), raw(store, v2)]
        if strategy == "fedadam":
            results[budget] += [raw(store, v1, state=True), raw(store, v2, state=True)]
        assert not list((tmp_path / f"spool{budget}").rglob("accumulator-*"))

    assert results[0] == results[1 << 40]


def test_the_disk_accumulator_is_the_one_a_round_gets_above_its_budget(model_store, tmp_path):
    store_model(model_store, f"{RUN}/000000", random_model(0, 16))
    agg = AggregatorService(MemoryStateStore(), model_store, tmp_path / "spool", chunk_bytes=4096,
                            accumulator_memory_budget_bytes=1024)

    agg.open_round(RoundPlan(RUN, 1, "train", f"{RUN}/000000", ("a",), 1, time.time() + 60, "fedavg", "{}"))

    acc = agg.rounds.get(RUN, 1).accumulator
    assert acc is not None and isinstance(acc._sums, sums.FileSums) and acc.nbytes > 1024
    assert np.all(acc.sums()[0] == 0)
