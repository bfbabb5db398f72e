"""Contract tests of the model store's Lineages role, on every backend (a local directory, a real
S3-compatible server): a version's lineage is written before it commits, read only once it
has, and deleted with it, by hand or by retention."""

from __future__ import annotations

import pytest
from test_model_store import make_store  # the suite's backends

from fedstream.errors import InvalidArgument, ModelNotFound
from fedstream.store import ModelStore
from fedstream_testing.helpers import random_model, store_model


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> ModelStore:
    return make_store(request.param, request, tmp_path)


def doc(version: str, *parents: str) -> dict[str, object]:
    return {"schema_version": 1, "version": version, "parents": list(parents), "participants": [{"agent_id": "a"}]}


class TestLineages:
    def test_a_lineage_written_before_its_version_is_read_once_the_version_is_committed(self, store):
        store.put_lineage("r1/000001", doc("r1/000001", "r1/000000"))
        with pytest.raises(ModelNotFound, match="model r1/000001 not found"):
            store.lineage("r1/000001")  # not committed: as if it were not there

        store_model(store, "r1/000001", random_model(1))

        assert store.lineage("r1/000001") == doc("r1/000001", "r1/000000")
        assert store.versions("r1") == ["r1/000001"]  # the lineage is no version of its own

    def test_a_commit_that_did_not_finish_has_its_lineage_replaced(self, store):
        store.put_lineage("r1/000002", doc("r1/000002", "old"))
        store.put_lineage("r1/000002", doc("r1/000002", "r1/000001"))
        store_model(store, "r1/000002", random_model(2))
        assert store.lineage("r1/000002")["parents"] == ["r1/000001"]

    def test_a_version_without_one_or_an_unknown_version_has_none(self, store):
        store_model(store, "r1/000003", random_model(3))
        with pytest.raises(ModelNotFound, match="r1/000003 has no lineage"):
            store.lineage("r1/000003")
        with pytest.raises(ModelNotFound, match="model r9/000001 not found"):
            store.lineage("r9/000001")
        with pytest.raises(InvalidArgument):
            store.lineage("../escape/000001")

    def test_a_lineage_is_deleted_with_its_version(self, store):
        for n in range(2):
            store.put_lineage(f"r2/{n:06d}", doc(f"r2/{n:06d}"))
            store_model(store, f"r2/{n:06d}", random_model(n))
        store.delete("r2/000000")
        with pytest.raises(ModelNotFound):
            store.lineage("r2/000000")
        # Committed again (a new run of the same id never reuses it, but the store allows it):
        # the old lineage does not come back with it.
        store_model(store, "r2/000000", random_model(5))
        with pytest.raises(ModelNotFound):
            store.lineage("r2/000000")
        assert store.lineage("r2/000001")["version"] == "r2/000001"

    def test_retention_deletes_the_lineages_of_the_versions_it_deletes(self, store):
        for n in range(4):
            store.put_lineage(f"r3/{n:06d}", doc(f"r3/{n:06d}"))
            store_model(store, f"r3/{n:06d}", random_model(n))
        store.pin("r3/000000")

        deleted = store.apply_retention("r3", keep_last=1)

        assert deleted == ["r3/000001", "r3/000002"]
        for version in deleted:
            with pytest.raises(ModelNotFound):
                store.lineage(version)
        assert store.lineage("r3/000000")["version"] == "r3/000000"  # pinned
        assert store.lineage("r3/000003")["version"] == "r3/000003"  # the latest
