"""The model store interface: its roles (versions, kept updates, strategy state, evaluations,
lineages, health) and their union, which every backend implements.

Code that needs one role can take just that role; each role has its own contract suite run
on every backend.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, Protocol

from fedstream.errors import FailedPrecondition, ModelNotFound
from fedstream.state.health import Health
from fedstream.store.base import ModelReader, ModelVersion, ModelWriter, parse_version
from fedstream.tensors import Layout


class ModelVersions(Protocol):
    """Immutable model versions of one tenant, each run's latest pointer, pins and retention."""

    @abstractmethod
    def writer(self, version: str, layout: Layout, metadata: dict[str, str]) -> ModelWriter:
        """Starts writing a new version; raises AlreadyExists if it was committed before."""

    @abstractmethod
    def open(self, version: str) -> ModelReader:
        """Raises ModelNotFound, or CorruptModel when the stored header does not parse."""

    @abstractmethod
    def info(self, version: str) -> ModelVersion:
        """Raises ModelNotFound."""

    @abstractmethod
    def latest(self, run_id: str) -> str | None:
        """The run's latest committed version, or None."""

    @abstractmethod
    def versions(self, run_id: str) -> list[str]:
        """The run's committed versions, oldest first."""

    @abstractmethod
    def delete(self, version: str) -> None:
        """Removes a version (its manifest first, so it is never listed half-deleted), its
        evaluations and its lineage.

        Raises ModelNotFound, or FailedPrecondition for a pinned version or a run's latest.
        """

    @abstractmethod
    def pin(self, version: str) -> None:
        """Keeps a version through retention; raises ModelNotFound."""

    @abstractmethod
    def unpin(self, version: str) -> None:
        """Lets retention delete a version again; no effect on one not pinned."""

    @abstractmethod
    def pinned(self, run_id: str) -> list[str]:
        """The run's pinned versions."""

    def exists(self, version: str) -> bool:
        """Whether the version is committed."""
        try:
            self.info(version)
        except ModelNotFound:
            return False
        return True

    def check_deletable(self, version: str) -> None:
        """Raises FailedPrecondition for a pinned version or a run's latest."""
        run_id, _ = parse_version(version)
        if version in self.pinned(run_id):
            raise FailedPrecondition(f"model {version} is pinned")
        if self.latest(run_id) == version:
            raise FailedPrecondition(f"model {version} is the latest of run {run_id!r}")

    def apply_retention(self, run_id: str, keep_last: int) -> list[str]:
        """Deletes all but the newest ``keep_last`` versions of a run, sparing pinned ones and
        the latest; returns what was deleted. ``keep_last`` 0 keeps everything."""
        if keep_last <= 0:
            return []
        keep = set(self.pinned(run_id))
        latest = self.latest(run_id)
        if latest:
            keep.add(latest)
        doomed = [v for v in self.versions(run_id)[:-keep_last] if v not in keep]
        for version in doomed:
            self.delete(version)
        return doomed


class KeptUpdates(Protocol):
    """What an aggregator has counted, kept until the round is committed, so that a restarted
    aggregator can fold the updates again. Kept updates are never versions."""

    @abstractmethod
    def update_writer(self, run_id: str, round_: int, agent_id: str, layout: Layout) -> ModelWriter:
        """Starts writing an agent's update for a round (any agent id: it never names a path);
        a later one for the same agent replaces it. Commit it with ``set_latest=False``."""

    @abstractmethod
    def open_update(self, run_id: str, round_: int, agent_id: str) -> ModelReader:
        """Raises ModelNotFound."""

    @abstractmethod
    def delete_updates(self, run_id: str, round_: int) -> None:
        """Removes every kept update of a round."""


class StrategyStates(Protocol):
    """A strategy's state beside a version (server optimizer moments), replaced if rewritten."""

    @abstractmethod
    def state_writer(self, version: str, layout: Layout) -> ModelWriter:
        """Starts writing the strategy state of a version; commit with ``set_latest=False``."""

    @abstractmethod
    def open_state(self, version: str) -> ModelReader:
        """Raises ModelNotFound when the version has no strategy state."""


class Evaluations(Protocol):
    """Federated evaluations of a version, one JSON record per evaluation round."""

    @abstractmethod
    def put_evaluation(self, version: str, name: str, record: dict[str, Any]) -> None:
        """Records an evaluation of a version under ``name`` (replacing one of that name);
        raises ModelNotFound for a missing version, InvalidArgument for a name that does not
        match ``EVALUATION_NAME``."""

    @abstractmethod
    def evaluations(self, version: str) -> dict[str, dict[str, Any]]:
        """The version's evaluation records by name (empty when none)."""


class Lineages(Protocol):
    """Where each version came from (``fedstream.lineage``): one JSON object beside the version,
    written by the aggregator before the version's manifest, so that every committed version
    has one, and deleted with it."""

    @abstractmethod
    def put_lineage(self, version: str, doc: dict[str, Any]) -> None:
        """Records the lineage of a version about to be committed (replacing one written
        before, by a commit that did not finish); raises InvalidArgument for a malformed
        version id."""

    @abstractmethod
    def lineage(self, version: str) -> dict[str, Any]:
        """The lineage of a committed version; raises ModelNotFound when the version is not
        committed or has none (committed before lineages were recorded)."""


class ModelStore(ModelVersions, KeptUpdates, StrategyStates, Evaluations, Lineages, Health):
    """Everything a tenant keeps of its models: every role at once. A backend subclasses this
    and implements each role's abstract methods."""
