"""What the scheduler adds to the lineage of every version a run commits (``fedstream.lineage``):
what the aggregator cannot know of the run, sent with each round's plan."""

from __future__ import annotations

import json
from typing import Any

from fedstream.lineage import SCHEDULER_PACKAGES, package_versions
from fedstream.state import RunRecord
from fedstream_scheduler.models import RunSpec

# Strategy parameters that configure server-side distillation.
DISTILL_PARAMS = ("distill_every", "distill_lr")


def lineage_context(run: RunRecord, spec: RunSpec, privacy: dict[str, Any] | None = None) -> str:
    """The run's lineage context as JSON text: its federation, who started it, its local
    training and selection settings, its distillation settings, the scheduler's code, and for
    a round under differential privacy ``privacy`` (its settings, sampling and the epsilon
    spent once it was charged)."""
    distillation = {k: spec.strategy.params[k] for k in DISTILL_PARAMS if k in spec.strategy.params}
    context: dict[str, Any] = {
        "federation_id": run.federation,
        "started_by": run.started_by or run.trigger,
        "trigger": run.trigger,
        "initial_version": spec.initial_version,
        "training": spec.training.model_dump(),
        "selection": spec.selection.model_dump(),
        "distillation": distillation,
        "code": package_versions(SCHEDULER_PACKAGES),
    }
    if privacy is not None:
        context["privacy"] = privacy
    return json.dumps(context, sort_keys=True)
