"""A version's lineage: where it came from, as one JSON document (schema version 1) that the
aggregator writes beside each version it commits, before the version itself.

What the aggregator knows comes from the round (its plan, its counted updates and what each
agent reported of itself, ``fedstream.provenance``); what only the scheduler knows (the run's
federation, who started it, its training settings, the scheduler's code) travels in the
plan's ``lineage_context``. Evaluations come later and are not part of the stored document:
readers merge the store's ``evaluations(version)`` in.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from fedstream.errors import InvalidArgument
from fedstream.ids import parse_version
from fedstream.rounds import RoundPlan, UpdateReport
from fedstream.version import distribution_version

LINEAGE_SCHEMA_VERSION = 1
# The most bytes of lineage context a plan may carry (JSON text).
MAX_LINEAGE_CONTEXT_BYTES = 64 << 10
# The fedstream distributions whose versions each service records as its code.
AGGREGATOR_PACKAGES = ("fedstream-core", "fedstream-aggregator")
SCHEDULER_PACKAGES = ("fedstream-core", "fedstream-scheduler")


def package_versions(distributions: Iterable[str]) -> dict[str, str]:
    """Each installed distribution's version ("unknown" when not installed)."""
    return {name: distribution_version(name) for name in distributions}


def parse_context(text: str) -> dict[str, Any]:
    """A plan's lineage context as a dict ({} when empty); raises InvalidArgument when it is
    too large or not a JSON object."""
    if not text:
        return {}
    if len(text.encode()) > MAX_LINEAGE_CONTEXT_BYTES:
        raise InvalidArgument(f"lineage_context takes at most {MAX_LINEAGE_CONTEXT_BYTES} bytes")
    try:
        value = json.loads(text)
    except ValueError:
        raise InvalidArgument("lineage_context must be a JSON object") from None
    if not isinstance(value, dict):
        raise InvalidArgument("lineage_context must be a JSON object")
    return value


def _newest_first(versions: Iterable[str]) -> list[str]:
    distinct = {v for v in versions if v}
    return sorted(distinct, key=lambda v: (parse_version(v)[1], v), reverse=True)


def parents_of(plan: RoundPlan, reports: Iterable[UpdateReport]) -> list[str]:
    """The versions a round's version was made from: none for an init round; the base version
    for a synchronous round; for a buffer of an asynchronous run, its base (the mean change is
    added to it) and the distinct bases the counted updates were trained from, newest first."""
    if not plan.kind.needs_base:
        return []
    if plan.buffer is None:
        return [plan.base_version]
    return _newest_first([plan.base_version, *(r.base_version for r in reports)])


def participant(report: UpdateReport) -> dict[str, Any]:
    """One counted update as the lineage records it."""
    return {
        "agent_id": report.agent_id,
        "examples": report.num_examples,
        "metrics": dict(report.metrics),
        "agent_version": report.agent_version,
        "task_version": report.task_version,
        "data_fingerprint": report.data_fingerprint,
    }


def _task_version(task: str, reports: list[UpdateReport]) -> str:
    """The task versions the participants reported ("name@version"), without the name when it
    is the run's task, distinct, joined by ", "."""
    found = []
    for r in reports:
        name, _, version = r.task_version.rpartition("@")
        shown = version if name == task else r.task_version
        if shown and shown not in found:
            found.append(shown)
    return ", ".join(found)


def _object(context: dict[str, Any], key: str) -> dict[str, Any] | None:
    """The context's ``key`` when it is a JSON object, else None."""
    value = context.get(key)
    return value if isinstance(value, dict) else None


def build_lineage(
    plan: RoundPlan, version: str, reports: list[UpdateReport], stragglers: list[str], committed_unix: float,
    *, figures: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The lineage document of the version a round commits. ``figures`` are the finisher's
    (distillation's figures when it distilled)."""
    context = parse_context(plan.lineage_context)
    code = {"aggregator": package_versions(AGGREGATOR_PACKAGES)}
    scheduler_code = _object(context, "code")
    if scheduler_code is not None:
        code["scheduler"] = {str(k): str(v) for k, v in scheduler_code.items()}
    distillation: dict[str, Any] | None = None
    if plan.distill:
        distillation = {"figures": dict(figures or {}), **(_object(context, "distillation") or {})}
    return {
        "schema_version": LINEAGE_SCHEMA_VERSION,
        "version": version,
        "parents": parents_of(plan, reports),
        "run_id": plan.run_id,
        "round": plan.round,
        "kind": plan.kind.value,
        "committed_unix": committed_unix,
        "federation_id": str(context.get("federation_id", "")),
        "started_by": str(context.get("started_by", "")),
        "strategy": {"name": plan.strategy, "params": plan.params()},
        "compression": plan.compression,
        "distillation": distillation,
        "asynchronous": plan.buffer.to_dict() if plan.buffer is not None else None,
        "training": _object(context, "training"),
        "selection": _object(context, "selection"),
        # Differential privacy of a training round (the scheduler's settings, sampling and the
        # federation's epsilon once the round was charged); None without.
        "privacy": _object(context, "privacy"),
        "task": {"name": plan.task, "version": _task_version(plan.task, reports)},
        "participants": [participant(r) for r in reports],
        "stragglers": list(stragglers),
        "code": code,
    }
