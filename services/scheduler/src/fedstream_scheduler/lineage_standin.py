"""A stand-in for ``fedstream_scheduler.lineage.LineageService`` (the lineage of versions and their
model cards), with the same interface, for the export archive until lineage lands: a version's
document built from its run's round records and evaluations, and a plain card. Delete this
module when ``fedstream_scheduler.lineage`` exists and import that in ``export.py`` instead."""

from __future__ import annotations

import json
from typing import Any

from fedstream.errors import RoundNotFound
from fedstream.ids import parse_version
from fedstream.state import StateStore
from fedstream_scheduler.model_catalog import ModelCatalog


class LineageService:
    """``document(version)`` and ``card(version)`` as the lineage module's."""

    def __init__(self, state: StateStore, catalog: ModelCatalog) -> None:
        self.state = state
        self.catalog = catalog

    def document(self, version: str) -> dict[str, Any]:
        """What the run's records say of the version; raises ModelNotFound."""
        self.catalog.info(version)
        run_id, number = parse_version(version)
        run = self.state.get_run(run_id)
        doc: dict[str, Any] = {"version": version, "run_id": run_id, "round": number, "federation_id": run.federation,
                               "trigger": run.trigger, "parents": [], "participants": [], "stragglers": []}
        try:
            rnd = self.state.get_round(run_id, number)
        except RoundNotFound:
            rnd = None
        if rnd is not None:
            doc.update(kind=rnd.kind.value, parents=[rnd.base_version] if rnd.base_version else [],
                       committed_unix=rnd.finished_unix, stragglers=list(rnd.stragglers),
                       participants=[{"agent_id": r.agent_id, "examples": r.num_examples, "metrics": r.metrics}
                                     for r in rnd.reports])
        store = self.catalog.store
        doc["evaluations"] = store.evaluations(version) if store is not None else {}
        return doc

    def card(self, version: str) -> tuple[str, dict[str, Any]]:
        """The version's card as (Markdown, JSON); raises ModelNotFound."""
        doc = self.document(version)
        card = {"version": version, "federation_id": doc["federation_id"], "lineage": doc}
        lines = [f"# Model {version}", "", f"Federation: {doc['federation_id'] or '-'}", "",
                 "```json", json.dumps(doc, indent=2, sort_keys=True), "```", ""]
        return "\n".join(lines), card
