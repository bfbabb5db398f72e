"""Hostile uploads into a buffered asynchronous run on a real aggregator over gRPC: an update
naming a round from the future, round 0, a huge round, another run's round, a round far staler
than max_staleness, a changed layout, NaN values, or an update already counted in a committed
buffer. Each is refused with its gRPC status and a message naming what was wrong (a duplicate
is answered as one), nothing counts, the open buffer's sums and journal are as before, and a
sound update then counts and commits the buffer."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedstream.grpcutil import channel
from fedstream.rounds import RoundKind, RoundPlan
from fedstream.staleness import BufferSpec, StalenessFunction
from fedstream.state import MemoryStateStore
from fedstream.store import LocalModelStore
from fedstream_aggregator.server import build_server
from fedstream_aggregator.service import AggregatorService
from fedstream_testing.helpers import random_model, store_model
from fedstream_testing.support import upload, wait_until

RUN, OTHER = "hostile", "other"
AGENTS = ("a", "b", "c", "d", "e", "h")  # assigned in every buffer; "h" is the hostile one
MAX_STALENESS = 2
OPEN = 6  # buffers 1..5 committed with one update each (by a..e), buffer 6 open
BUFFER = BufferSpec(1, len(AGENTS), StalenessFunction.CONSTANT, max_staleness=MAX_STALENESS)
LAST_ROUND = 2**32 - 1  # the largest round an UpdateHeader can name


class Harness:
    def __init__(self, tmp: Path) -> None:
        self.store = LocalModelStore(tmp / "models", "hs")
        self.state = MemoryStateStore("hs")
        self.service = AggregatorService(self.state, self.store, tmp / "spool", chunk_bytes=4096)
        self.server = build_server(self.service, "127.0.0.1", 0, max_workers=8, check_agents=False)
        self.ch = channel(f"127.0.0.1:{self.server.port}")
        self.service.open_round(RoundPlan(RUN, 0, RoundKind.INIT, "", ("i",), 1, time.time() + 600))
        upload(self.ch, "i", random_model(0), 0, run_id=RUN, round_=0)
        self._wait_committed(RUN, 0)
        for r in range(1, OPEN):
            self.open_buffer(r, BUFFER)
            upload(self.ch, AGENTS[r - 1], random_model(r), 5, run_id=RUN, round_=r)
            self._wait_committed(RUN, r)
        self.open_buffer(OPEN, BufferSpec(2, len(AGENTS), StalenessFunction.CONSTANT, max_staleness=MAX_STALENESS))
        store_model(self.store, f"{OTHER}/000000", random_model(0))
        self.service.open_round(RoundPlan(OTHER, 1, RoundKind.TRAIN, f"{OTHER}/000000", ("z",), 1,
                                          time.time() + 600, buffer=BUFFER))

    def open_buffer(self, r: int, buffer: BufferSpec) -> None:
        base = self.service.snapshot(RUN, r - 1).version
        self.service.open_round(RoundPlan(RUN, r, RoundKind.TRAIN, base, AGENTS, 1, time.time() + 600, buffer=buffer))

    def _wait_committed(self, run_id: str, r: int) -> None:
        wait_until(lambda: self.service.snapshot(run_id, r).state == "committed", timeout=30, what=f"round {r}")

    def snapshot(self) -> tuple:
        """The open buffer's sums, weight and reports, its journal, and every buffer's reports."""
        rnd = self.service.rounds.get(RUN, OPEN)
        acc = rnd.accumulator
        assert acc is not None
        sums = {t.name: a.copy() for t, a in zip(acc.sums_layout().tensors, acc.sums(), strict=True)}
        reports = {r: sorted(x.agent_id for x in self.service.snapshot(RUN, r).reports) for r in range(OPEN + 1)}
        journal = dict(self.state.get_aggregation(RUN, OPEN).reports)
        return acc.total_weight, acc.count, sums, journal, reports, self.service.snapshot(OTHER, 1).reports

    def assert_unchanged(self, before: tuple, what: str) -> None:
        after = self.snapshot()
        assert after[:2] == before[:2] and after[3:] == before[3:], what
        for name, values in before[2].items():
            np.testing.assert_array_equal(after[2][name], values, err_msg=what)


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    h = Harness(tmp_path_factory.mktemp("buffered-hostile"))
    yield h
    h.ch.close()
    h.server.stop(0)


def refused(harness: Harness, agent: str, model: dict, *, run_id: str = RUN, round_: int = OPEN) -> grpc.RpcError:
    """The error an upload got; asserts it counted nowhere."""
    before = harness.snapshot()
    with pytest.raises(grpc.RpcError) as e:
        upload(harness.ch, agent, model, 5, run_id=run_id, round_=round_)
    harness.assert_unchanged(before, f"{agent} {run_id} {round_}: {e.value.details()}")
    return e.value


def code_of(error: grpc.RpcError) -> str:
    return dict(error.trailing_metadata() or ()).get("fedstream-error", "")


def expected(round_: int) -> tuple[grpc.StatusCode, str, str]:
    """What an upload of agent "h" naming ``round_`` of RUN is refused with: status, code, words."""
    if round_ == 0:
        return grpc.StatusCode.PERMISSION_DENIED, "agent_not_selected", "was not selected for round 0"
    if round_ > OPEN:
        return grpc.StatusCode.NOT_FOUND, "round_not_found", f"round {round_} of run {RUN!r} has not opened: its newest buffer is {OPEN}"
    behind = OPEN - round_
    return grpc.StatusCode.FAILED_PRECONDITION, "stale_update", f"{behind} versions behind buffer {OPEN} of run {RUN!r}"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(round_=st.one_of(st.integers(0, OPEN - MAX_STALENESS - 1), st.integers(OPEN + 1, OPEN + 50),
                        st.integers(OPEN + 51, LAST_ROUND), st.just(LAST_ROUND)))
def test_a_round_outside_the_open_buffers_window_is_refused_and_counts_nowhere(harness, round_):
    status, code, words = expected(round_)

    error = refused(harness, "h", random_model(7), round_=round_)

    assert error.code() == status, error.details()
    assert code_of(error) == code and words in error.details(), error.details()
    if code == "stale_update":
        assert f"at most {MAX_STALENESS} (max_staleness)" in error.details()


def test_another_runs_round_and_an_unknown_run_are_refused(harness):
    other = refused(harness, "h", random_model(7), run_id=OTHER, round_=1)
    unknown = refused(harness, "h", random_model(7), run_id="nowhere", round_=OPEN)

    assert other.code() == grpc.StatusCode.PERMISSION_DENIED and code_of(other) == "agent_not_selected"
    assert f"run {OTHER!r}" in other.details()
    assert unknown.code() == grpc.StatusCode.NOT_FOUND and "'nowhere'" in unknown.details()


def test_a_changed_layout_is_refused_naming_the_difference(harness):
    model = random_model(7)
    name = next(iter(model))
    dtype, values = model[name]
    model[name] = (dtype, np.concatenate([values.reshape(-1), values.reshape(-1)[:1]]))

    error = refused(harness, "h", model)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and code_of(error) == "invalid_layout"
    assert f"does not match model {RUN}/{OPEN - 1:06d}" in error.details() and name in error.details()


def test_nan_values_are_refused_naming_the_tensor(harness):
    model = random_model(7)
    name = next(k for k, (d, a) in model.items() if d == "float32" and a.size > 3)
    dtype, values = model[name]
    values = values.copy()
    values.reshape(-1)[3] = np.nan
    model[name] = (dtype, values)

    error = refused(harness, "h", model)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and code_of(error) == "non_finite_values"
    assert f"tensor {name!r} holds NaN or infinite values (first at element 3)" in error.details()


@pytest.mark.parametrize("assigned", [1, OPEN - 1])  # beyond max_staleness now, and within it
def test_an_update_counted_in_a_committed_buffer_is_a_duplicate_and_counts_again_nowhere(harness, assigned):
    agent = AGENTS[assigned - 1]
    before = harness.snapshot()

    reply = upload(harness.ch, agent, random_model(assigned), 5, run_id=RUN, round_=assigned)

    assert reply.duplicate
    harness.assert_unchanged(before, f"{agent} {assigned}")


def test_after_the_hostile_uploads_sound_ones_count_and_commit_the_buffer(harness):
    assert harness.service.snapshot(RUN, OPEN).state == "training" and not harness.snapshot()[3]

    upload(harness.ch, "h", random_model(7), 5, run_id=RUN, round_=OPEN)
    upload(harness.ch, "a", random_model(8), 5, run_id=RUN, round_=OPEN - MAX_STALENESS)

    harness._wait_committed(RUN, OPEN)
    snap = harness.service.snapshot(RUN, OPEN)
    assert sorted((r.agent_id, r.metrics["staleness"]) for r in snap.reports) == [("a", 2.0), ("h", 0.0)]
