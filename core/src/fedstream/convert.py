"""Conversion between the wire contracts (protobuf) and the round vocabulary of ``fedstream.rounds``.

Every service converts here, once, at its edge; nothing past a servicer or a gRPC client sees
a protobuf round message. A value the wire carries that the vocabulary does not know (an
unspecified or newer enum number) raises InvalidArgument naming it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

from google.protobuf import json_format

from fedstream.errors import InvalidArgument
from fedstream.privacy import PrivacySpec, SecureAggregationSpec
from fedstream.rounds import (
    Assignment,
    RoundKind,
    RoundPlan,
    RoundSnapshot,
    RoundState,
    RunState,
    TrainingConfig,
    UpdateReport,
    canonical_params,
)
from fedstream.staleness import BufferSpec
from fedstream.v1 import aggregator_pb2, round_pb2, scheduler_pb2

_KINDS: dict[RoundKind, round_pb2.RoundKind] = {
    RoundKind.INIT: round_pb2.ROUND_KIND_INIT,
    RoundKind.TRAIN: round_pb2.ROUND_KIND_TRAIN,
    RoundKind.EVALUATE: round_pb2.ROUND_KIND_EVALUATE,
}
_KINDS_BACK: dict[int, RoundKind] = {v: k for k, v in _KINDS.items()}

_STATES: dict[RoundState, round_pb2.RoundState] = {
    RoundState.OPEN: round_pb2.ROUND_STATE_OPEN,
    RoundState.TRAINING: round_pb2.ROUND_STATE_TRAINING,
    RoundState.AGGREGATING: round_pb2.ROUND_STATE_AGGREGATING,
    RoundState.COMMITTED: round_pb2.ROUND_STATE_COMMITTED,
    RoundState.FAILED: round_pb2.ROUND_STATE_FAILED,
    RoundState.CANCELLED: round_pb2.ROUND_STATE_CANCELLED,
}
_STATES_BACK: dict[int, RoundState] = {v: k for k, v in _STATES.items()}

_RUN_STATES: dict[RunState, scheduler_pb2.RunState] = {
    RunState.RUNNING: scheduler_pb2.RUN_STATE_RUNNING,
    RunState.SUCCEEDED: scheduler_pb2.RUN_STATE_SUCCEEDED,
    RunState.FAILED: scheduler_pb2.RUN_STATE_FAILED,
    RunState.CANCELLED: scheduler_pb2.RUN_STATE_CANCELLED,
}
_RUN_STATES_BACK: dict[int, RunState] = {v: k for k, v in _RUN_STATES.items()}


E = TypeVar("E", bound=StrEnum)


def _known(table: dict[int, E], value: int, what: str) -> E:
    try:
        return table[value]
    except KeyError:
        raise InvalidArgument(f"unknown {what} {value}") from None


def kind_to_proto(kind: RoundKind | str) -> round_pb2.RoundKind:
    return _KINDS[RoundKind(kind)]


def kind_from_proto(value: int) -> RoundKind:
    """Raises InvalidArgument for an unspecified or unknown kind."""
    return _known(_KINDS_BACK, value, "round kind")


def state_to_proto(state: RoundState | str) -> round_pb2.RoundState:
    return _STATES[RoundState(state)]


def state_from_proto(value: int) -> RoundState:
    """Raises InvalidArgument for an unspecified or unknown state."""
    return _known(_STATES_BACK, value, "round state")


def run_state_to_proto(state: RunState | str) -> scheduler_pb2.RunState:
    return _RUN_STATES[RunState(state)]


def run_state_from_proto(value: int) -> RunState:
    """Raises InvalidArgument for an unspecified or unknown run state."""
    return _known(_RUN_STATES_BACK, value, "run state")


def report_to_proto(r: UpdateReport) -> round_pb2.UpdateReport:
    return round_pb2.UpdateReport(
        agent_id=r.agent_id, num_examples=r.num_examples, metrics=r.metrics, bytes_received=r.bytes_received,
        agent_version=r.agent_version, task_version=r.task_version, data_fingerprint=r.data_fingerprint,
    )


def report_from_proto(r: round_pb2.UpdateReport) -> UpdateReport:
    """The weight does not travel: a report from the wire weighs its example count."""
    return UpdateReport(
        agent_id=r.agent_id,
        num_examples=r.num_examples,
        metrics=dict(r.metrics),
        bytes_received=r.bytes_received,
        weight=float(r.num_examples),
        agent_version=r.agent_version,
        task_version=r.task_version,
        data_fingerprint=r.data_fingerprint,
    )


def plan_to_proto(plan: RoundPlan) -> aggregator_pb2.RoundPlan:
    msg = aggregator_pb2.RoundPlan(
        run_id=plan.run_id,
        round=plan.round,
        kind=kind_to_proto(plan.kind),
        base_version=plan.base_version,
        participants=plan.participants,
        min_updates=plan.min_updates,
        deadline_unix=plan.deadline_unix,
        strategy=round_pb2.StrategySpec(name=plan.strategy),
        compression=plan.compression,
        partial=plan.partial,
        task=plan.task,
        distill=plan.distill,
        target_updates=plan.target_updates,
        lineage_context=plan.lineage_context,
    )
    msg.strategy.params.update(plan.params())
    if plan.buffer is not None:
        msg.buffer.CopyFrom(buffer_to_proto(plan.buffer))
    if plan.privacy is not None:
        msg.privacy.CopyFrom(privacy_to_proto(plan.privacy))
    if plan.secure_aggregation is not None:
        msg.secure_aggregation.CopyFrom(secagg_to_proto(plan.secure_aggregation))
    return msg


def privacy_to_proto(p: PrivacySpec) -> round_pb2.PrivacySpec:
    return round_pb2.PrivacySpec(
        mode=p.mode.value, clip_norm=p.clip_norm, noise_multiplier=p.noise_multiplier,
        epsilon_budget=p.epsilon_budget, delta=p.delta,
    )


def privacy_from_proto(msg: round_pb2.PrivacySpec) -> PrivacySpec:
    """Raises InvalidArgument for an unknown mode or a setting out of range."""
    return PrivacySpec.from_dict({
        "mode": msg.mode, "clip_norm": msg.clip_norm, "noise_multiplier": msg.noise_multiplier,
        "epsilon_budget": msg.epsilon_budget, "delta": msg.delta,
    }).check()


def secagg_to_proto(s: SecureAggregationSpec) -> round_pb2.SecureAggregationSpec:
    return round_pb2.SecureAggregationSpec(
        max_dropout=s.max_dropout, clip_range=s.clip_range, step_timeout_s=s.step_timeout_s,
    )


def secagg_from_proto(msg: round_pb2.SecureAggregationSpec) -> SecureAggregationSpec:
    """Raises InvalidArgument for a setting out of range."""
    return SecureAggregationSpec(
        max_dropout=msg.max_dropout, clip_range=msg.clip_range, step_timeout_s=msg.step_timeout_s,
    ).check()


def buffer_to_proto(b: BufferSpec) -> round_pb2.AsynchronousSpec:
    return round_pb2.AsynchronousSpec(
        buffer_size=b.buffer_size, concurrency=b.concurrency, max_staleness=b.max_staleness,
        staleness=round_pb2.StalenessSpec(function=b.function.value, a=b.a, b=b.b),
    )


def buffer_from_proto(msg: round_pb2.AsynchronousSpec) -> BufferSpec:
    """Raises InvalidArgument for an unknown staleness function."""
    return BufferSpec.from_dict({
        "buffer_size": msg.buffer_size, "concurrency": msg.concurrency, "max_staleness": msg.max_staleness,
        "staleness": {"function": msg.staleness.function, "a": msg.staleness.a, "b": msg.staleness.b},
    })


def plan_from_proto(msg: aggregator_pb2.RoundPlan) -> RoundPlan:
    """Raises InvalidArgument for an unknown round kind."""
    params = json_format.MessageToDict(msg.strategy.params) if msg.HasField("strategy") else {}
    return RoundPlan(
        run_id=msg.run_id,
        round=msg.round,
        kind=kind_from_proto(msg.kind),
        base_version=msg.base_version,
        participants=tuple(msg.participants),
        min_updates=msg.min_updates,
        deadline_unix=msg.deadline_unix,
        strategy=msg.strategy.name or "fedavg",
        strategy_params=canonical_params(params),
        compression=msg.compression or "none",
        partial=msg.partial,
        task=msg.task,
        distill=msg.distill,
        target_updates=msg.target_updates,
        buffer=buffer_from_proto(msg.buffer) if msg.HasField("buffer") else None,
        privacy=privacy_from_proto(msg.privacy) if msg.HasField("privacy") else None,
        secure_aggregation=secagg_from_proto(msg.secure_aggregation) if msg.HasField("secure_aggregation") else None,
        lineage_context=msg.lineage_context,
    )


def snapshot_to_proto(s: RoundSnapshot) -> aggregator_pb2.RoundEvent:
    return aggregator_pb2.RoundEvent(
        run_id=s.run_id,
        round=s.round,
        state=state_to_proto(s.state),
        reports=[report_to_proto(r) for r in s.reports],
        stragglers=s.stragglers,
        version=s.version,
        reason=s.reason,
        metrics=s.metrics,
    )


def snapshot_from_proto(e: aggregator_pb2.RoundEvent) -> RoundSnapshot:
    """Raises InvalidArgument for an unknown round state."""
    return RoundSnapshot(
        run_id=e.run_id,
        round=e.round,
        state=state_from_proto(e.state),
        reports=[report_from_proto(r) for r in e.reports],
        stragglers=list(e.stragglers),
        version=e.version,
        reason=e.reason,
        metrics=dict(e.metrics),
    )


def training_to_proto(t: TrainingConfig) -> round_pb2.TrainingConfig:
    msg = round_pb2.TrainingConfig(
        local_epochs=t.local_epochs,
        batch_size=t.batch_size,
        learning_rate=t.learning_rate,
        seed=t.seed,
        no_op=t.no_op,
        proximal_mu=t.proximal_mu,
        shared_only=t.shared_only,
        compression=t.compression,
        upload_delta=t.upload_delta,
    )
    if t.privacy is not None:
        msg.privacy.CopyFrom(privacy_to_proto(t.privacy))
    if t.secure_aggregation is not None:
        msg.secure_aggregation.CopyFrom(secagg_to_proto(t.secure_aggregation))
    return msg


def training_from_proto(t: round_pb2.TrainingConfig) -> TrainingConfig:
    """An empty compression reads as ``"none"``, as the wire contract says."""
    return TrainingConfig(
        local_epochs=t.local_epochs,
        batch_size=t.batch_size,
        learning_rate=t.learning_rate,
        seed=t.seed,
        no_op=t.no_op,
        proximal_mu=t.proximal_mu,
        shared_only=t.shared_only,
        compression=t.compression or "none",
        upload_delta=t.upload_delta,
        privacy=privacy_from_proto(t.privacy) if t.HasField("privacy") else None,
        secure_aggregation=secagg_from_proto(t.secure_aggregation) if t.HasField("secure_aggregation") else None,
    )


def assignment_to_proto(a: Assignment) -> scheduler_pb2.AgentEvent:
    """An assignment as the agent event that carries it on an agent's stream."""
    return scheduler_pb2.AgentEvent(
        assignment=scheduler_pb2.Assignment(
            run_id=a.run_id,
            round=a.round,
            kind=kind_to_proto(a.kind),
            task=a.task,
            base_version=a.base_version,
            model_endpoint=a.model_endpoint,
            upload_endpoint=a.upload_endpoint,
            training=training_to_proto(a.training),
            deadline_unix=a.deadline_unix,
            chunk_bytes=a.chunk_bytes,
            participants=a.participants,
        )
    )


def assignment_from_proto(a: scheduler_pb2.Assignment) -> Assignment:
    """The assignment an agent event carries (``assignment_to_proto``'s ``assignment``).
    Raises InvalidArgument for an unspecified or unknown round kind."""
    return Assignment(
        run_id=a.run_id,
        round=a.round,
        kind=kind_from_proto(a.kind),
        task=a.task,
        base_version=a.base_version,
        model_endpoint=a.model_endpoint,
        upload_endpoint=a.upload_endpoint,
        training=training_from_proto(a.training),
        deadline_unix=a.deadline_unix,
        chunk_bytes=a.chunk_bytes,
        participants=tuple(a.participants),
    )
