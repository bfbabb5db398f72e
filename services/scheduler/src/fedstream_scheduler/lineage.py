"""The lineage of the tenant's model versions as the admin API shows it: a version's document with
its evaluations, the graph of its ancestors and descendants, the path of versions between two,
and its model card (``model_card``, from fedstream_scheduler.cards). Only versions that one of
the tenant's runs made are ever read (``ModelCatalog``'s check)."""

from __future__ import annotations

from collections import deque
from typing import Any

from fedstream.errors import InvalidArgument, ModelNotFound
from fedstream.ids import parse_version
from fedstream.state import StateStore
from fedstream_scheduler.cards import model_card, tensors_summary
from fedstream_scheduler.model_catalog import ModelCatalog

__all__ = ["LineageService", "model_card", "summary"]

# The deepest graph asked for, and the most versions a graph or a path may visit.
MAX_GRAPH_DEPTH = 20
MAX_VISITED = 10_000


def summary(doc: dict[str, Any]) -> dict[str, Any]:
    """A version's lineage in one line: what a graph's node shows."""
    participants = doc.get("participants") or []
    return {
        "version": doc["version"],
        "run_id": doc.get("run_id", ""),
        "round": doc.get("round", 0),
        "kind": doc.get("kind", ""),
        "committed_unix": doc.get("committed_unix", 0.0),
        "federation_id": doc.get("federation_id", ""),
        "parents": list(doc.get("parents") or []),
        "participants": len(participants),
        "examples": sum(int(p.get("examples", 0)) for p in participants),
        "missing": False,
    }


def missing(version: str) -> dict[str, Any]:
    """The node of a version whose lineage is not there (deleted by retention, or committed
    before lineages were recorded)."""
    run_id, rnd = parse_version(version)
    return {"version": version, "run_id": run_id, "round": rnd, "kind": "", "committed_unix": 0.0,
            "federation_id": "", "parents": [], "participants": 0, "examples": 0, "missing": True}


class LineageService:
    """Reads lineages through the tenant's model catalog; raises Unavailable without a store."""

    def __init__(self, state: StateStore, catalog: ModelCatalog) -> None:
        self.state = state
        self.catalog = catalog

    def _stored(self, version: str) -> dict[str, Any]:
        """The stored document of one of the tenant's versions; raises ModelNotFound."""
        return self.catalog.models().lineage(self.catalog.check_ours(version))

    def _try(self, version: str) -> dict[str, Any] | None:
        try:
            return self._stored(version)
        except (ModelNotFound, InvalidArgument):
            return None

    def document(self, version: str) -> dict[str, Any]:
        """The version's lineage with its evaluations (by name); raises ModelNotFound."""
        doc = self._stored(version)
        return {**doc, "evaluations": self.catalog.models().evaluations(version)}

    def card(self, version: str) -> tuple[str, dict[str, Any]]:
        """The version's model card as (Markdown, JSON); raises ModelNotFound."""
        doc = self.document(version)
        info, pinned = self.catalog.info(version)
        return model_card({**doc, "model": {**tensors_summary(info), "pinned": pinned}})

    def graph(self, version: str, depth: int) -> dict[str, Any]:
        """The version's ancestors and descendants up to ``depth`` steps away, as nodes (lineage
        summaries) and parent -> child edges. Raises ModelNotFound, InvalidArgument for a
        depth out of 1..MAX_GRAPH_DEPTH."""
        if not 1 <= depth <= MAX_GRAPH_DEPTH:
            raise InvalidArgument(f"depth must be between 1 and {MAX_GRAPH_DEPTH}")
        root = self._stored(version)
        nodes: dict[str, dict[str, Any]] = {version: summary(root)}
        edges: set[tuple[str, str]] = set()
        self._walk(version, depth, nodes, edges, up=True)
        children = self._children_index(version)
        self._walk(version, depth, nodes, edges, up=False, children=children)
        return {
            "version": version, "depth": depth,
            "nodes": sorted(nodes.values(), key=lambda n: (n["run_id"], n["round"])),
            "edges": [{"parent": p, "child": c} for p, c in sorted(edges)],
        }

    def _walk(
        self, start: str, depth: int, nodes: dict[str, dict[str, Any]], edges: set[tuple[str, str]], *, up: bool,
        children: dict[str, list[dict[str, Any]]] | None = None,
    ) -> None:
        """Adds the versions up to ``depth`` steps from ``start``, towards its parents (``up``)
        or its children (from ``children``), to ``nodes`` and ``edges``."""
        frontier = [start]
        for _ in range(depth):
            following: list[str] = []
            for v in frontier:
                if up:
                    for parent in nodes[v]["parents"]:
                        edges.add((parent, v))
                        if parent not in nodes:
                            doc = self._try(parent)
                            nodes[parent] = summary(doc) if doc is not None else missing(parent)
                            following.append(parent)
                else:
                    for child in (children or {}).get(v, []):
                        edges.add((v, child["version"]))
                        if child["version"] not in nodes:
                            nodes[child["version"]] = child
                            following.append(child["version"])
            frontier = following
            if not frontier or len(nodes) > MAX_VISITED:
                return

    def _children_index(self, version: str) -> dict[str, list[dict[str, Any]]]:
        """parent -> the summaries of its children, over the versions of the tenant's runs
        created since the version's run (no earlier run can descend from it)."""
        run = self.state.get_run(parse_version(version)[0])
        store = self.catalog.models()
        index: dict[str, list[dict[str, Any]]] = {}
        seen = 0
        for other in self.state.list_runs():
            if other.created_unix < run.created_unix:
                continue
            for v in store.versions(other.run_id):
                seen += 1
                if seen > MAX_VISITED:
                    return index
                doc = self._try(v)
                if doc is not None:
                    for parent in doc.get("parents") or []:
                        index.setdefault(parent, []).append(summary(doc))
        return index

    def between(self, ancestor: str, descendant: str) -> dict[str, Any]:
        """The versions on the parent path from ``ancestor`` to ``descendant``, oldest first,
        each as its lineage summary (the shortest path when several lead there). Raises
        ModelNotFound for either version, InvalidArgument when ``ancestor`` is not one."""
        docs = {ancestor: self._stored(ancestor), descendant: self._stored(descendant)}
        came_from: dict[str, str] = {descendant: ""}
        queue = deque([descendant])
        while queue and ancestor not in came_from:
            v = queue.popleft()
            for parent in docs[v].get("parents") or []:
                if parent in came_from:
                    continue
                came_from[parent] = v
                doc = self._try(parent)
                if doc is not None:
                    docs[parent] = doc
                    queue.append(parent)
            if len(came_from) > MAX_VISITED:
                raise InvalidArgument(f"more than {MAX_VISITED} versions lie above {descendant}; ask for a shorter span")
        if ancestor not in came_from:
            raise InvalidArgument(f"model {ancestor} is not an ancestor of {descendant}")
        path = [ancestor]
        while path[-1] != descendant:
            path.append(came_from[path[-1]])
        versions = [summary(docs[v]) for v in path]
        return {"ancestor": ancestor, "descendant": descendant, "versions": versions,
                "training_rounds": sum(1 for n in versions[1:] if n["kind"] == "train")}

