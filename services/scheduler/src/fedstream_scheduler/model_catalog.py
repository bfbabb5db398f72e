"""The models of one tenant's runs as the admin API shows them: listing, reading and pinning,
only ever of versions that one of the tenant's runs made."""

from __future__ import annotations

from fedstream.errors import FedstreamError, ModelNotFound, Unavailable
from fedstream.ids import parse_version
from fedstream.state import StateStore
from fedstream.store import ModelReader, ModelStore, ModelVersion
from fedstream_scheduler.federations import FederationService


class ModelCatalog:
    """Reads and pins the tenant's models; raises Unavailable without a model store."""

    def __init__(self, state: StateStore, federations: FederationService, store: ModelStore | None) -> None:
        self.state = state
        self.federations = federations
        self.store = store

    def _models(self) -> ModelStore:
        if self.store is None:
            raise Unavailable("this scheduler has no model store configured")
        return self.store

    def models(self) -> ModelStore:
        """The tenant's model store; raises Unavailable when there is none."""
        return self._models()

    def check_ours(self, version: str) -> str:
        """The version, if one of this tenant's runs made it; raises ModelNotFound otherwise
        (and InvalidArgument for a malformed version id)."""
        return self._check_ours(version)

    def list(self, federation_id: str) -> list[tuple[ModelVersion, bool]]:
        """Every stored version of the federation's runs, oldest run first, with whether it is
        pinned. Raises FederationNotFound."""
        self.state.get_federation(federation_id)
        store = self._models()
        out = []
        for run in self.federations.runs_of(federation_id):
            pinned = set(store.pinned(run.run_id))
            for version in store.versions(run.run_id):
                try:
                    out.append((store.info(version), version in pinned))
                except ModelNotFound:
                    continue  # removed by retention meanwhile
        return out

    def _check_ours(self, version: str) -> str:
        """The version, if one of this tenant's runs made it (ModelNotFound otherwise)."""
        run_id, _ = parse_version(version)
        try:
            self.state.get_run(run_id)
        except FedstreamError:
            raise ModelNotFound(f"model {version} not found") from None
        return version

    def info(self, version: str) -> tuple[ModelVersion, bool]:
        """The version's description and whether it is pinned; raises ModelNotFound."""
        store = self._models()
        info = store.info(self._check_ours(version))
        return info, version in store.pinned(parse_version(version)[0])

    def open(self, version: str) -> ModelReader:
        """A reader of the version's tensors; raises ModelNotFound."""
        return self._models().open(self._check_ours(version))

    def pin(self, version: str, pinned: bool) -> tuple[ModelVersion, bool]:
        """Pins (keeps from retention) or unpins the version; returns it as ``info`` does."""
        store = self._models()
        self._check_ours(version)
        if pinned:
            store.pin(version)
        else:
            store.unpin(version)
        return self.info(version)
