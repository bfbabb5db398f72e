"""Opening rounds: a checked plan becomes a journal record and a round in the table, with its
accumulator, its leaves' shares and its finisher chosen once."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

from fedstream.aggregation import WeightedAccumulator
from fedstream.compression import wire_layout
from fedstream.errors import AlreadyExists, FailedPrecondition, Unavailable
from fedstream.rounds import RoundKind, RoundPlan
from fedstream.strategies import LinearStrategy, Strategy
from fedstream.tensors import Layout
from fedstream_aggregator.buffered import check_buffer_plan
from fedstream_aggregator.distill import Distiller
from fedstream_aggregator.finishers import Storage, choose_finisher
from fedstream_aggregator.hierarchy import Hierarchy
from fedstream_aggregator.journal import Journal
from fedstream_aggregator.recovery import Recovery
from fedstream_aggregator.rounds import Round, RoundTable, checked_plan
from fedstream_aggregator.secure import SecureFinisher, SecureRound

log = logging.getLogger(__name__)


class RoundFactory:
    """Builds the round of a plan: whether it folds, shares or keeps its updates, and how it
    finishes. ``durable`` keeps every counted update until its round is finished."""

    def __init__(
        self, storage: Storage, hierarchy: Hierarchy, distiller: Distiller | None,
        clock: Callable[[], float], *, durable: bool, run_cancelled: Callable[[str], str] = lambda run_id: "",
        accumulators: Callable[[Layout], WeightedAccumulator] = WeightedAccumulator,
        fail: Callable[[Round, str], None] = lambda rnd, reason: None, tenant: str = "",
    ) -> None:
        self.storage = storage
        self.hierarchy = hierarchy
        self.distiller = distiller
        self.clock = clock
        self.durable = durable
        # Makes a round's accumulator: in memory, or in a file above the memory budget.
        self.accumulators = accumulators
        # Why a run was cancelled ("" when it was not): each round asks before it commits.
        self.run_cancelled = run_cancelled
        # Fails a round (a secure aggregation step that closed below its threshold).
        self.fail = fail
        self.tenant = tenant

    def keeps_updates(self, plan: RoundPlan, strategy: Strategy) -> bool:
        """Whether counted updates are copied to the model store: to survive a restart, for
        strategies that combine them all at once, and as the teachers of distillation."""
        linear = isinstance(strategy, LinearStrategy)
        return plan.kind is not RoundKind.EVALUATE and (self.durable or not linear or plan.distill)

    def build(self, plan: RoundPlan, strategy: Strategy, layout: Layout | None) -> Round:
        """A training round of ``plan`` (``layout``: the base version's, for training rounds)."""
        if plan.secure_aggregation is not None and plan.kind is RoundKind.TRAIN and layout is not None:
            return self._build_secure(plan, strategy, layout)
        shares = self.hierarchy.shares(plan, strategy) if plan.buffer is None else {}
        folds = layout is not None and isinstance(strategy, LinearStrategy) and not shares
        return Round(
            plan, strategy, choose_finisher(plan, strategy, self.storage, self.distiller, self.clock),
            layout, self.accumulators(layout) if folds and layout is not None else None,
            wire=wire_layout(layout, plan.compression) if layout is not None else None,
            keeps_updates=self.keeps_updates(plan, strategy), shares=shares,
            run_cancelled=functools.partial(self.run_cancelled, plan.run_id),
        )

    def _build_secure(self, plan: RoundPlan, strategy: Strategy, layout: Layout) -> Round:
        """A secure aggregation round: masked updates fold into its ring sum, never kept."""
        assert isinstance(strategy, LinearStrategy)
        if self.hierarchy.shares(plan, strategy):
            raise FailedPrecondition("a secure aggregation round cannot be shared among leaf aggregators")
        secure = SecureRound(plan, layout, tenant=self.tenant)
        rnd = Round(
            plan, strategy, SecureFinisher(self.storage, strategy), layout, None, wire=secure.wire,
            keeps_updates=False, run_cancelled=functools.partial(self.run_cancelled, plan.run_id), secure=secure,
        )
        secure.on_fail = functools.partial(self.fail, rnd)
        return rnd

    def base_layout(self, plan: RoundPlan) -> Layout | None:
        """The base version's layout for a training round; raises ModelNotFound."""
        return self.storage.store.info(plan.base_version).layout if plan.kind is RoundKind.TRAIN else None


class Opener:
    """Opens rounds in the table, or finds them open already (here, or in the journal)."""

    def __init__(
        self, table: RoundTable, journal: Journal, factory: RoundFactory, recovery: Recovery,
        hierarchy: Hierarchy, distiller: Distiller | None,
    ) -> None:
        self.table = table
        self.journal = journal
        self.factory = factory
        self.recovery = recovery
        self.hierarchy = hierarchy
        self.distiller = distiller

    def open(self, plan: RoundPlan) -> dict[str, str]:
        """Opens a round for uploads; opening the same plan twice is a no-op. Returns where
        each participant that does not use this aggregator goes instead (a root's leaves).

        Raises InvalidArgument for a malformed plan, ModelNotFound for a missing base version,
        FailedPrecondition when a different plan for the same round exists, Unavailable when
        a leaf cannot be reached.
        """
        if not self.table.ready:
            raise Unavailable("the aggregator is starting; retry shortly")
        plan, strategy = checked_plan(plan, self.distiller)
        check_buffer_plan(plan, strategy)
        existing = self.table.find(plan.run_id, plan.round)
        if existing is not None:
            if existing.plan != plan:
                raise self._other_plan(plan)
            return self.hierarchy.open_shares(existing)
        layout = self.factory.base_layout(plan)
        if plan.kind is RoundKind.EVALUATE:
            self.factory.storage.store.info(plan.base_version)  # ModelNotFound for a version that is not there
        try:
            self.journal.create(plan)
        except AlreadyExists:
            record = self.journal.get(plan.run_id, plan.round)
            if record.plan != plan:
                raise self._other_plan(plan) from None
            self.recovery.restore(record)
            return self.hierarchy.open_shares(self.table.get(plan.run_id, plan.round))
        rnd = self.factory.build(plan, strategy, layout)
        if self.table.install(rnd):
            log.info(
                "round %d of %s open: %s, %d participants%s, base %s",
                plan.round, plan.run_id, plan.kind, len(plan.participants),
                f" shared among {len(rnd.shares)} leaves" if rnd.shares else "", plan.base_version or "-",
            )
        return self.hierarchy.open_shares(self.table.get(plan.run_id, plan.round))

    @staticmethod
    def _other_plan(plan: RoundPlan) -> FailedPrecondition:
        return FailedPrecondition(f"round {plan.round} of run {plan.run_id!r} is already open with another plan")
