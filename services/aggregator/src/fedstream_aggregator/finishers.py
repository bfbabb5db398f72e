"""How a round's result is made, one finisher per kind and strategy family, chosen once when the
round opens: an evaluation's combined metrics, an init round's uploaded model, a linear
strategy's server update of the weighted mean (optionally distilled), a robust statistic."""

from __future__ import annotations

import contextlib
import functools
import logging
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fedstream.aggregation import accumulator_dtype, from_accumulator, to_accumulator
from fedstream.errors import AlreadyExists, FailedPrecondition, ModelNotFound
from fedstream.lineage import build_lineage
from fedstream.rounds import RoundKind, RoundPlan, combine_metrics
from fedstream.staleness import is_statistic
from fedstream.store import ModelStore, version_id
from fedstream.store.base import ModelWriter
from fedstream.strategies import LinearStrategy, RobustStrategy, Strategy
from fedstream.strategies.robust import pairwise_sq_dist_update
from fedstream.tensors import FlatBuffer, Layout, TensorSpec
from fedstream_aggregator.blocks import Blocks
from fedstream_aggregator.distill import Distiller
from fedstream_aggregator.privacy import CentralNoise, central_noise, is_private, privacy_figures
from fedstream_aggregator.rounds import Round
from fedstream_aggregator.spool import SpoolPool, copy_out

log = logging.getLogger(__name__)

# Bytes of each kept update read at a time when a robust statistic combines them.
COMBINE_PIECE_BYTES = 4 << 20


@dataclass(frozen=True)
class Result:
    """What a finished round committed: the version, and figures to report with it."""

    version: str
    metrics: dict[str, float] = field(default_factory=dict)


class Finisher(Protocol):
    # What the round's failure reason starts with when ``finish`` raises a FedstreamError.
    failure: str

    def finish(self, rnd: Round) -> Result:
        """Makes and stores the round's result; raises FedstreamError when it cannot."""
        ...


@dataclass(frozen=True)
class Storage:
    """Where finishers read updates from and write versions to."""

    store: ModelStore
    spools: SpoolPool
    chunk_bytes: int


def choose_finisher(
    plan: RoundPlan, strategy: Strategy, storage: Storage, distiller: Distiller | None,
    clock: Callable[[], float],
) -> Finisher:
    """The finisher of a round with this plan and strategy (a checked plan)."""
    if plan.kind is RoundKind.EVALUATE:
        return EvaluationFinisher(storage, clock)
    if plan.kind is RoundKind.INIT:
        return InitFinisher(storage)
    if isinstance(strategy, RobustStrategy):
        return RobustFinisher(storage, strategy)
    if plan.distill:
        assert distiller is not None
        return DistillingFinisher(storage, strategy, distiller)
    return LinearFinisher(storage, strategy)


class EvaluationFinisher:
    """Combines an evaluation round's reports and records them with the version evaluated."""

    failure = "cannot record the evaluation"

    def __init__(self, storage: Storage, clock: Callable[[], float]) -> None:
        self.storage = storage
        self.clock = clock

    def finish(self, rnd: Round) -> Result:
        plan = rnd.plan
        reports = list(rnd.reports.values())
        metrics = combine_metrics(reports)
        record = {
            "run_id": plan.run_id,
            "round": plan.round,
            "metrics": metrics,
            "examples": sum(r.num_examples for r in reports),
            "reports": [r.to_dict() for r in reports],
            "finished_unix": self.clock(),
        }
        rnd.seal()
        self.storage.store.put_evaluation(plan.base_version, f"{plan.run_id}-{plan.round:06d}", record)
        log.info("round %d of %s: evaluation of %s recorded: %s", plan.round, plan.run_id, plan.base_version,
                 ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))
        return Result(plan.base_version, metrics)


class VersionFinisher(ABC):
    """Writes a round's result as a new model version, tensor by tensor (``write``)."""

    failure = "commit failed"

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def finish(self, rnd: Round) -> Result:
        plan = rnd.plan
        assert rnd.layout is not None
        store = self.storage.store
        version = version_id(plan.run_id, plan.round)
        metadata = {
            "fedstream.run_id": plan.run_id,
            "fedstream.round": str(plan.round),
            "fedstream.kind": plan.kind.value,
            "fedstream.base_version": plan.base_version,
            "fedstream.updates": str(len(rnd.reports)),
            "fedstream.examples": str(sum(r.num_examples for r in rnd.reports.values())),
        }
        try:
            writer = store.writer(version, rnd.layout, metadata)
        except AlreadyExists:
            # Written by a process that died before journaling the commit: a stored version
            # is complete (its manifest is written last), so it is this round's result.
            log.info("round %d of %s: version %s was stored before a restart", plan.round, plan.run_id, version)
            return Result(store.info(version).version)
        with writer:
            metrics = self.write(rnd, version, writer)
            rnd.seal()  # RoundCancelled leaves the version unwritten
            # Before the version's manifest: every committed version has its lineage.
            store.put_lineage(version, self.lineage(rnd, version, metrics))
            return Result(writer.commit().version, metrics)

    @staticmethod
    def lineage(rnd: Round, version: str, figures: dict[str, float]) -> dict[str, Any]:
        """The lineage document of the version the round commits (fedstream.lineage): its
        stragglers are the participants not counted (none in a buffer: they may count later)."""
        plan = rnd.plan
        stragglers = [] if plan.buffer is not None else [a for a in plan.participants if a not in rnd.reports]
        return build_lineage(plan, version, list(rnd.reports.values()), stragglers, time.time(), figures=figures)

    @abstractmethod
    def write(self, rnd: Round, version: str, writer: ModelWriter) -> dict[str, float]:
        """Writes every tensor of the version; returns figures to report with it."""


class InitFinisher(VersionFinisher):
    """The one uploaded model, unchanged: from its spool file, or kept in the model store."""

    def write(self, rnd: Round, version: str, writer: ModelWriter) -> dict[str, float]:
        plan, chunk_bytes = rnd.plan, self.storage.chunk_bytes
        assert rnd.layout is not None
        if rnd.init_spool is not None:
            spool, rnd.init_spool = rnd.init_spool, None
            try:
                copy_out(spool.read_into, rnd.layout.total_bytes, chunk_bytes, writer.write)
            finally:
                self.storage.spools.release(spool)
            return {}
        (agent,) = rnd.reports
        with self.storage.store.open_update(plan.run_id, plan.round, agent) as reader:
            for chunk in reader.iter_chunks(chunk_bytes):
                writer.write(chunk.data)
        return {}


def _write_values(writer: ModelWriter, spec: TensorSpec, values: np.ndarray) -> None:
    writer.write(np.ascontiguousarray(from_accumulator(spec.dt, values)).view(np.uint8).data)


class LinearFinisher(VersionFinisher):
    """The strategy's server update of each weighted mean, reading the base tensor and the
    strategy's state as it needs them, and writing its new state beside the version (before
    the version itself). Under central differential privacy the mean is that of the clipped
    changes with calibrated Gaussian noise (fedstream_aggregator.privacy) before the base is
    added back and the strategy's server update runs (post-processing)."""

    def __init__(self, storage: Storage, strategy: LinearStrategy) -> None:
        super().__init__(storage)
        self.strategy = strategy

    def write(self, rnd: Round, version: str, writer: ModelWriter) -> dict[str, float]:
        plan, strategy, store = rnd.plan, self.strategy, self.storage.store
        assert rnd.layout is not None
        slots = strategy.state_slots
        floats = [t for t in rnd.layout.tensors if t.dt.is_float]
        state_layout = Layout.build((f"{t.name}/{s}", "float32", t.shape) for t in floats for s in slots)
        # The means of floating tensors are changes: int8 updates, buffered asynchronous ones
        # (but for normalisation statistics, which asynchronous agents send as values), and
        # private ones, differential privacy or secure aggregation (statistics included; their
        # other tensors keep the base's values).
        private = is_private(plan)
        deltas = plan.compression == "int8" or plan.buffer is not None or private
        noise = self.noise(rnd)
        with contextlib.ExitStack() as stack:
            base = None
            if strategy.needs_base or deltas:
                base = Blocks(stack.enter_context(store.open(plan.base_version)))
            old_state = self._old_state(stack, plan, state_layout) if slots else None
            new_state = stack.enter_context(store.state_writer(version, state_layout)) if slots else None
            sink = stack.enter_context(_StateSink(new_state, slots, self.storage.spools.directory)) if new_state is not None else None
            for spec, first, mean in self.means(rnd, base):
                base_values = base.tensor(spec, first, mean.size) if base is not None else None
                if noise is not None:
                    mean = noise.apply(spec, mean)
                if base_values is not None and private and not spec.dt.is_float:
                    mean = base_values.copy()  # a count of this site's batches would leak its data's size
                elif base_values is not None and deltas and spec.dt.is_float and not (
                    plan.buffer is not None and is_statistic(spec.name)  # values, not changes
                ):
                    mean = base_values + mean
                state_in = None
                if old_state is not None and spec.dt.is_float:
                    state_in = {s: old_state.float32(state_layout.spec(f"{spec.name}/{s}"), first, mean.size)
                                for s in slots}
                values, state_out = strategy.server_update(spec, mean, base_values, state_in)
                _write_values(writer, spec, values)
                if sink is not None and spec.dt.is_float:
                    sink.add(spec, first, mean.size, state_out)
            if new_state is not None:
                new_state.commit(set_latest=False)
        return privacy_figures(plan, list(rnd.reports.values()))

    def noise(self, rnd: Round) -> CentralNoise | None:
        """The round's central differential privacy noise (None without): taken before the means."""
        assert rnd.accumulator is not None
        return central_noise(rnd.plan, rnd.accumulator)

    def means(self, rnd: Round, base: Blocks | None) -> Iterator[tuple[TensorSpec, int, np.ndarray]]:
        """The weighted mean of every tensor of the model, piece by piece in layout order."""
        assert rnd.accumulator is not None
        return rnd.accumulator.means()

    def _old_state(self, stack: contextlib.ExitStack, plan: RoundPlan, state_layout: Layout) -> Blocks | None:
        """The strategy state stored with the base version, None when it has none."""
        try:
            reader = stack.enter_context(self.storage.store.open_state(plan.base_version))
        except ModelNotFound:
            return None
        if reader.layout != state_layout:
            raise FailedPrecondition(f"the strategy state of {plan.base_version} does not fit the model")
        return Blocks(reader)


class _StateSink:
    """Writes a strategy's new state, stored slot by slot within each tensor (``t/m``, then
    ``t/v``), from pieces that come element range by element range: the first slot's pieces
    go straight to the writer, the others wait in a temporary file until the tensor's last
    piece, so a tensor's state is never held whole."""

    def __init__(self, writer: ModelWriter, slots: tuple[str, ...], directory: Path) -> None:
        self.writer = writer
        self.slots = slots
        directory.mkdir(parents=True, exist_ok=True)
        self._stash = tempfile.TemporaryFile(dir=directory, prefix="state-")  # noqa: SIM115 (closed by __exit__)

    def __enter__(self) -> _StateSink:
        return self

    def __exit__(self, *_: object) -> None:
        self._stash.close()

    def add(self, spec: TensorSpec, first: int, count: int, state: dict[str, np.ndarray]) -> None:
        whole = first == 0 and count == spec.numel
        for i, s in enumerate(self.slots):
            data = np.ascontiguousarray(state[s], dtype=np.float32).view(np.uint8).data
            if i == 0 or whole:
                self.writer.write(data)
            else:
                self._stash.seek(self._slot_start(spec, i) + first * 4)
                self._stash.write(data)
        if not whole and first + count == spec.numel:
            for i in range(1, len(self.slots)):
                read = functools.partial(self._read, self._slot_start(spec, i))
                copy_out(read, spec.numel * 4, COMBINE_PIECE_BYTES, self.writer.write)

    def _slot_start(self, spec: TensorSpec, slot: int) -> int:
        return (slot - 1) * spec.numel * 4

    def _read(self, start: int, offset: int, view: memoryview) -> None:
        self._stash.seek(start + offset)
        got = self._stash.readinto(view)
        if got != len(view):
            raise OSError("the strategy state's temporary file is shorter than written")


class DistillingFinisher(VersionFinisher):
    """The weighted mean (held whole: one model), distilled on the public set with every
    counted update, read back from the model store one at a time, as a teacher."""

    def __init__(self, storage: Storage, strategy: LinearStrategy, distiller: Distiller) -> None:
        super().__init__(storage)
        self.strategy = strategy
        self.distiller = distiller

    def write(self, rnd: Round, version: str, writer: ModelWriter) -> dict[str, float]:
        plan = rnd.plan
        assert rnd.accumulator is not None and rnd.layout is not None
        mean = FlatBuffer(rnd.layout)
        for spec, first, values in rnd.accumulator.means():
            out, _ = self.strategy.server_update(spec, values, None, None)
            data = np.ascontiguousarray(from_accumulator(spec.dt, out)).view(np.uint8).data
            mean.write(spec.offset + first * spec.dt.itemsize, data)
        started = time.perf_counter()
        pieces, figures = self.distiller.distill(plan.task, mean, self._teachers(rnd), self.strategy.distill_lr())
        for piece in pieces:
            writer.write(piece)
        log.info(
            "round %d of %s distilled on %d public images from %d teachers in %.1f s: embedding MSE %.5f -> %.5f",
            plan.round, plan.run_id, int(figures.get("distill_images", 0)), int(figures.get("distill_teachers", 0)),
            time.perf_counter() - started, figures.get("distill_mse_before", 0.0), figures.get("distill_mse_after", 0.0),
        )
        return dict(figures)

    def _teachers(self, rnd: Round) -> Iterator[FlatBuffer]:
        for agent in list(rnd.reports):
            with self.storage.store.open_update(rnd.plan.run_id, rnd.plan.round, agent) as reader:
                buffer = FlatBuffer(reader.layout)
                for chunk in reader.iter_chunks(self.storage.chunk_bytes):
                    buffer.write(chunk.offset, chunk.data)
            yield buffer


class RobustFinisher(VersionFinisher):
    """Combines every kept update piece by piece (a robust statistic per coordinate), with a
    first pass for pairwise distances when the strategy selects updates (multi-Krum).
    Memory: the pieces of all updates at one offset, never whole updates."""

    def __init__(self, storage: Storage, strategy: RobustStrategy) -> None:
        super().__init__(storage)
        self.strategy = strategy

    def write(self, rnd: Round, version: str, writer: ModelWriter) -> dict[str, float]:
        plan, strategy = rnd.plan, self.strategy
        assert rnd.layout is not None
        agents = list(rnd.reports)
        chosen = self._select(plan, agents, rnd.layout)
        current: TensorSpec | None = None
        out: np.ndarray | None = None
        for (spec, lo), pieces in self._kept_pieces(plan, agents, rnd.layout):
            if spec is not current:
                current = spec
                out = np.empty(spec.numel, dtype=pieces.dtype)
            assert out is not None
            out[lo : lo + pieces.shape[1]] = strategy.combine(pieces[chosen])
            if lo + pieces.shape[1] == spec.numel:
                _write_values(writer, spec, out)
        return {}

    def _select(self, plan: RoundPlan, agents: list[str], layout: Layout) -> list[int]:
        """The indices of the updates to combine: all, unless the strategy selects some from
        their pairwise distances."""
        chosen = list(range(len(agents)))
        if not self.strategy.needs_distances:
            return chosen
        sq = np.zeros((len(agents), len(agents)))
        for _, pieces in self._kept_pieces(plan, agents, layout):
            pairwise_sq_dist_update(sq, pieces)
        selected = self.strategy.select(sq)
        if selected is None:
            return chosen
        log.info("round %d of %s: %s selected %s", plan.round, plan.run_id, self.strategy.name,
                 ", ".join(agents[i] for i in selected))
        return selected

    def _kept_pieces(
        self, plan: RoundPlan, agents: list[str], layout: Layout
    ) -> Iterator[tuple[tuple[TensorSpec, int], np.ndarray]]:
        """((tensor, first element), (agents, n) accumulator-dtype values) over the whole layout,
        read in lockstep from every agent's kept update."""
        store = self.storage.store
        with contextlib.ExitStack() as stack:
            readers = [Blocks(stack.enter_context(store.open_update(plan.run_id, plan.round, a))) for a in agents]
            # agents x piece bytes are in memory at once: keep that near one model's size.
            budget = max(64 << 10, min(COMBINE_PIECE_BYTES, layout.total_bytes // max(1, len(agents))))
            piece = bytearray(budget)
            for t in layout.tensors:
                item = t.dt.itemsize
                step = max(item, budget - budget % item)
                for start in range(0, t.nbytes, step):
                    n = min(step, t.nbytes - start)
                    rows = np.empty((len(readers), n // item), dtype=accumulator_dtype(t.dt))
                    view = memoryview(piece)[:n]
                    for i, r in enumerate(readers):
                        r.read_into(t.offset + start, view)
                        rows[i] = to_accumulator(t.dt, np.frombuffer(view, dtype=t.dt.storage))
                    yield (t, start // item), rows

