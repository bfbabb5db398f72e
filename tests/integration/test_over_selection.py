"""Over-selected rounds on a real aggregator over gRPC: a round closes and commits on its
``target_updates``-th update, well before its deadline; an upload that comes after the close is
refused as late (FAILED_PRECONDITION, code round_closed), counted nowhere, and the version is
the mean of the updates that made it. The agents' measured speeds are kept in the state store."""

from __future__ import annotations

from functools import partial

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY

from fedstream.errors import RoundClosed
from fedstream.grpcutil import error_code_of
from fedstream.state import AgentRecord, SQLiteStateStore
from fedstream.v1 import aggregator_pb2 as pb
from fedstream.v1 import aggregator_pb2_grpc as pb_grpc
from fedstream.v1 import round_pb2
from fedstream_scheduler.speeds import Speeds
from fedstream_testing.helpers import as_float, layout_of, random_model, store_model
from fedstream_testing.support import plan, wait_terminal, wait_until
from fedstream_testing.support import upload as upload_model

RUN = "run-over"
BASE = f"{RUN}/000000"
upload = partial(upload_model, run_id=RUN, chunk_bytes=1000)


@pytest.fixture
def control(agg_channel, model_store):
    store_model(model_store, BASE, random_model(0, scale=16))
    return pb_grpc.AggregatorControlStub(agg_channel)


def assert_float_mean(model_store, version, weighted) -> None:
    """The version's floating tensors are the weighted mean of ``weighted`` (model, weight)."""
    layout = layout_of(weighted[0][0])
    with model_store.open(version) as reader:
        data = b"".join(c.data for c in reader.iter_chunks(1 << 20))
    total = sum(w for _, w in weighted)
    for t in (t for t in layout.tensors if t.dtype in ("float32", "float64")):
        expected = sum(as_float(t.dtype, m[t.name][1]).reshape(-1) * w for m, w in weighted) / total
        got = np.frombuffer(data[t.offset : t.end], dtype=t.dt.storage)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def late_uploads() -> float:
    return REGISTRY.get_sample_value("fedstream_late_updates_total", {"tenant": "t1"}) or 0.0


def test_a_round_commits_on_its_target_and_refuses_a_later_upload_as_late(control, agg_channel, model_store, aggregator):
    control.OpenRound(plan(RUN, 1, ["a", "b", "c", "d"], base=BASE, min_updates=2, target_updates=2, timeout=600),
                      timeout=5)
    a, b, c = random_model(1, 16), random_model(2, 16), random_model(3, 16)
    late_before = late_uploads()

    upload(agg_channel, "a", a, 10)
    upload(agg_channel, "b", b, 30)
    event = wait_terminal(control, RUN, 1)  # long before the ten-minute deadline
    with pytest.raises(grpc.RpcError) as refused:
        upload(agg_channel, "c", c, 20)
    with pytest.raises(grpc.RpcError) as asked:
        pb_grpc.UpdateServiceStub(agg_channel).UploadStatus(
            pb.UploadStatusRequest(run_id=RUN, round=1, agent_id="d", upload_id="x"), timeout=5)

    assert event.state == round_pb2.ROUND_STATE_COMMITTED
    assert sorted(r.agent_id for r in event.reports) == ["a", "b"]
    assert sorted(event.stragglers) == ["c", "d"]
    for e in (refused.value, asked.value):
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_code_of(e) == RoundClosed.code
        assert e.details() == f"round 1 of run {RUN!r} closed with its 2 updates and is not accepting updates: " \
                              "this one came late and is not counted"
    assert late_uploads() == late_before + 1
    assert_float_mean(model_store, event.version, [(a, 10), (b, 30)])
    snapshot = aggregator.service.snapshot(RUN, 1)
    assert [r.agent_id for r in snapshot.reports] == ["a", "b"]  # the late one counted nowhere


def test_without_a_target_the_round_waits_for_every_participant(control, agg_channel, aggregator):
    control.OpenRound(plan(RUN, 1, ["a", "b", "c"], base=BASE, min_updates=2, timeout=600), timeout=5)

    upload(agg_channel, "a", random_model(1, 16))
    upload(agg_channel, "b", random_model(2, 16))
    wait_until(lambda: len(aggregator.service.snapshot(RUN, 1).reports) == 2)
    still = aggregator.service.snapshot(RUN, 1).state
    upload(agg_channel, "c", random_model(3, 16))
    event = wait_terminal(control, RUN, 1)

    assert still == "training"
    assert event.state == round_pb2.ROUND_STATE_COMMITTED and len(event.reports) == 3


@pytest.mark.parametrize(
    ("target", "least", "message"),
    [(5, 2, "target_updates 5 must be 0 or between min_updates 2 and the 4 participants"),
     (1, 2, "target_updates 1 must be 0 or between min_updates 2 and the 4 participants")],
)
def test_a_target_outside_the_round_is_refused(control, target, least, message):
    with pytest.raises(grpc.RpcError) as e:
        control.OpenRound(plan(RUN, 1, ["a", "b", "c", "d"], base=BASE, min_updates=least, target_updates=target),
                          timeout=5)

    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and e.value.details() == message


def test_measured_speeds_survive_a_restart_of_the_scheduler_state(tmp_path):
    state = SQLiteStateStore(tmp_path / "state.db", "t1")
    for agent in ("fast", "slow", "new"):
        state.put_agent(AgentRecord(agent, tasks=["digits"]))
    speeds = Speeds(state)
    speeds.reported("digits", ["fast"], 4.0)
    speeds.missed("digits", ["slow"], 5.0)  # not reported when its round closed 5 s in
    speeds.reported("digits", ["fast"], 6.0)
    speeds.reported("reid", ["slow"], 1.0)
    speeds.reported("digits", ["deleted meanwhile"], 1.0)  # an agent gone is skipped
    state.close()

    again = Speeds(SQLiteStateStore(tmp_path / "state.db", "t1"))

    assert again.of("digits") == {"fast": 5.0, "slow": 10.0}
    assert again.of("reid") == {"slow": 1.0}
