"""Contract tests of the model store, one suite per role, each run against every backend."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedstream.config import S3Settings
from fedstream.errors import (
    AlreadyExists,
    BadOffset,
    CorruptModel,
    FailedPrecondition,
    InvalidArgument,
    ModelNotFound,
    NonFiniteResult,
    Unavailable,
)
from fedstream.store import LocalModelStore, ModelStore
from fedstream.store.s3 import S3ModelStore, make_client
from fedstream.tensors import Layout, TensorSpec, crc32c
from fedstream_testing.helpers import buffers_of, layout_of, random_model, store_model
from fedstream_testing.servers import free_port


def make_store(kind: str, request, tmp_path, tenant: str = "t1") -> ModelStore:
    if kind == "s3":
        settings = request.getfixturevalue("s3_settings")
        store = S3ModelStore(make_client(settings), settings, tmp_path / "staging", tenant)
        store.ping()
        return store
    return LocalModelStore(tmp_path / "models", tenant=tenant)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> ModelStore:
    return make_store(request.param, request, tmp_path)


def raw_model(store: ModelStore, version: str) -> bytes:
    if isinstance(store, LocalModelStore):
        return store._path(version).read_bytes()
    return store._get_bytes(store._key(version, ".safetensors"))


def overwrite_model(store: ModelStore, version: str, data: bytes) -> None:
    if isinstance(store, LocalModelStore):
        store._path(version).write_bytes(data)
    else:
        store._put_bytes(store._key(version, ".safetensors"), data)


class TestModelVersions:
    """ModelVersions: immutable versions, verified reads, latest, pins and retention."""

    def test_write_read_and_latest(self, store):
        model = random_model(3)
        assert store.latest("r1") is None

        info = store_model(store, "r1/000000", model)
        store_model(store, "r1/000001", random_model(4))

        assert store.latest("r1") == "r1/000001"
        assert store.versions("r1") == ["r1/000000", "r1/000001"]
        with store.open("r1/000000") as reader:
            assert reader.layout == layout_of(model)
            assert reader.info.metadata == {"test": "yes"}
            data = b"".join(c.data for c in reader.iter_chunks(7))
        for t in info.layout.tensors:
            assert data[t.offset : t.end] == np.ascontiguousarray(model[t.name][1]).tobytes()

    @pytest.mark.parametrize("chunk", [7, 1000, 1 << 20])
    def test_reads_from_an_offset_are_the_bytes_from_there_checked(self, store, chunk):
        """What a resumed download sends: the version's bytes from any offset, cut anew, each
        block checked against its recorded CRC first."""
        version = f"r{chunk}/000000"  # the S3 server outlives one test: a version per case
        store_model(store, version, random_model(3, scale=8))
        with store.open(version) as reader:
            whole = b"".join(c.data for c in reader.iter_chunks(chunk))
            for start in (0, 1, 999, len(whole) - 1, len(whole)):
                got = list(reader.iter_chunks(chunk, start))
                assert b"".join(c.data for c in got) == whole[start:]
                assert all(c.crc32c == crc32c(c.data) for c in got)
                assert [c.offset for c in got] == list(range(start, len(whole), chunk))
            with pytest.raises(BadOffset):
                list(reader.iter_chunks(chunk, len(whole) + 1))
        raw = bytearray(raw_model(store, version))
        raw[-1] ^= 0xFF  # the last byte of the data section: its block no longer matches its CRC
        overwrite_model(store, version, bytes(raw))
        with store.open(version) as reader, pytest.raises(CorruptModel):
            list(reader.iter_chunks(chunk, len(whole) - 1))

    def test_versions_are_immutable(self, store):
        store_model(store, "r1/000000", random_model(1))
        with pytest.raises(AlreadyExists):
            store_model(store, "r1/000000", random_model(2))

    def test_incomplete_write_is_refused_and_invisible(self, store):
        layout = Layout.build([("w", "float32", (4,))])
        w = store.writer("r1/000000", layout, {})
        w.write(b"\0" * 8)
        with pytest.raises(InvalidArgument, match="8 of 16 bytes"):
            w.commit()
        w.abort()
        assert store.versions("r1") == [] and store.latest("r1") is None
        with pytest.raises(InvalidArgument, match="past the layout"):
            store.writer("r1/000000", layout, {}).write(b"\0" * 17)

    def test_a_version_that_does_not_read_back_never_becomes_the_latest(self, store):
        """A layout the safetensors header cannot hold (a tensor named like its reserved
        ``__metadata__`` key, which a layout check refuses but a writer does not) is written,
        read back, found unreadable and removed: the previous version stays the latest and the
        round can write its version again."""
        store_model(store, "r1/000000", random_model(1))
        unreadable = Layout((TensorSpec("__metadata__", "float32", (2,), 0, 8),))
        w = store.writer("r1/000001", unreadable, {"k": "v"})
        w.write(np.array([1.0, 2.0], dtype=np.float32).tobytes())

        with pytest.raises(CorruptModel, match="r1/000001"):
            w.commit()

        assert store.latest("r1") == "r1/000000"
        assert store.versions("r1") == ["r1/000000"] and not store.exists("r1/000001")
        store_model(store, "r1/000001", random_model(2))
        assert store.latest("r1") == "r1/000001"

    @pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "float64"])
    def test_nonfinite_refused(self, store, dtype):
        """Values that are NaN or infinite are never committed, however the writes cut them."""
        store_model(store, "r1/000000", random_model(1))
        layout = Layout.build([("count", "int64", (1,)), ("w", dtype, (3,))])
        values = np.array([1.0, np.inf, 2.0], dtype=np.float32 if dtype == "bfloat16" else dtype)
        raw = (values.view(np.uint32) >> 16).astype(np.uint16) if dtype == "bfloat16" else values
        data = np.int64(7).tobytes() + raw.tobytes()
        w = store.writer("r1/000001", layout, {})
        cut = 8 + layout.spec("w").dt.itemsize + 1  # one byte into the infinity
        for i in range(0, cut, 3):  # writes that cut elements: the finite ones pass
            w.write(data[i : min(i + 3, cut)])

        with pytest.raises(NonFiniteResult, match=r"tensor 'w' would hold NaN or infinite values \(first at element 1\)"):
            w.write(data[cut:])
        w.abort()

        assert store.latest("r1") == "r1/000000" and not store.exists("r1/000001")

    def test_missing_and_malformed_versions(self, store):
        with pytest.raises(ModelNotFound):
            store.open("r1/000009")
        with pytest.raises(InvalidArgument, match="invalid model version"):
            store.open("r1/9")
        with pytest.raises(InvalidArgument, match="invalid run id"):
            store.open("../000001")

    def test_corruption_is_reported_not_loaded(self, store):
        store_model(store, "r1/000000", random_model(5))
        raw = bytearray(raw_model(store, "r1/000000"))
        raw[-3] ^= 0xFF
        overwrite_model(store, "r1/000000", bytes(raw))

        with store.open("r1/000000") as reader, pytest.raises(CorruptModel, match="checksum mismatch"):
            list(reader.iter_chunks(1 << 20))

        overwrite_model(store, "r1/000000", b"\xff" * 8 + b"{}")
        with pytest.raises(CorruptModel, match=r"exceeds|header length"):
            store.open("r1/000000")
        overwrite_model(store, "r1/000000", (5).to_bytes(8, "little") + b"[1,2]")
        with pytest.raises(CorruptModel, match="not a JSON object"):
            store.open("r1/000000")

    def test_corruption_is_found_before_the_bad_block_is_handed_out(self, store):
        layout = Layout.build([("w", "uint8", (3 << 20,))])
        with store.writer("r1/000000", layout, {}) as w:
            w.write(bytes(3 << 20))
            w.commit()
        raw = bytearray(raw_model(store, "r1/000000"))
        raw[-(1 << 20) - 5] ^= 1  # inside the second of three 1 MiB blocks
        overwrite_model(store, "r1/000000", bytes(raw))

        handed_out = []
        with store.open("r1/000000") as reader, pytest.raises(CorruptModel, match=r"bytes 1048576\.\.2097152"):  # noqa: PT012 - it fails mid-stream
            for chunk in reader.iter_chunks(1 << 20):
                handed_out.append(chunk.offset)

        assert handed_out == [0]

    def test_pins_and_retention(self, store):
        for r in range(6):
            store_model(store, f"r1/{r:06d}", random_model(r))
        store.pin("r1/000001")

        deleted = store.apply_retention("r1", keep_last=2)

        assert deleted == ["r1/000000", "r1/000002", "r1/000003"]
        assert store.versions("r1") == ["r1/000001", "r1/000004", "r1/000005"]
        assert store.pinned("r1") == ["r1/000001"]
        assert store.apply_retention("r1", keep_last=0) == []
        with pytest.raises(FailedPrecondition, match="pinned"):
            store.delete("r1/000001")
        with pytest.raises(FailedPrecondition, match="latest"):
            store.delete("r1/000005")
        with pytest.raises(ModelNotFound):
            store.pin("r1/000003")
        store.unpin("r1/000001")
        store.delete("r1/000001")
        assert store.versions("r1") == ["r1/000004", "r1/000005"]

    @pytest.mark.parametrize("kind", ["local", "s3"])
    def test_tenants_are_separate(self, kind, request, tmp_path):
        a, b = make_store(kind, request, tmp_path, "a"), make_store(kind, request, tmp_path, "b")
        store_model(a, "r1/000000", random_model(1))
        assert b.latest("r1") is None
        with pytest.raises(ModelNotFound):
            b.open("r1/000000")


class TestKeptUpdates:
    """KeptUpdates: agents' updates of a round, kept apart from versions."""

    def test_spooled_updates_round_trip_and_are_deleted_per_round(self, store):
        model = random_model(4)
        layout = layout_of(model)
        for agent in ("a", "../evil/agent"):
            with store.update_writer("r1", 3, agent, layout) as w:
                for buf in buffers_of(layout, model):
                    w.write(buf)
                w.commit(set_latest=False)
        with store.update_writer("r1", 4, "a", layout) as w:
            for buf in buffers_of(layout, model):
                w.write(buf)
            w.commit(set_latest=False)

        with store.open_update("r1", 3, "../evil/agent") as reader:
            data = b"".join(c.data for c in reader.iter_chunks(1 << 20))
        store.delete_updates("r1", 3)

        assert data == b"".join(bytes(b) for b in buffers_of(layout, model))
        assert store.latest("r1") is None and store.versions("r1") == []
        with pytest.raises(ModelNotFound):
            store.open_update("r1", 3, "a")
        store.open_update("r1", 4, "a").close()


class TestStrategyStates:
    """StrategyStates: a strategy's state beside a version, replaced when rewritten."""

    def test_strategy_state_round_trips_and_is_replaced(self, store):
        store_model(store, "r1/000000", random_model(0))
        with pytest.raises(ModelNotFound):
            store.open_state("r1/000000")
        for seed in (1, 2):
            model = random_model(seed)
            layout = layout_of(model)
            with store.state_writer("r1/000000", layout) as w:
                for buf in buffers_of(layout, model):
                    w.write(buf)
                w.commit(set_latest=False)

        with store.open_state("r1/000000") as reader:
            data = b"".join(c.data for c in reader.iter_chunks(1 << 20))

        assert data == b"".join(bytes(b) for b in buffers_of(layout, model))  # the second one
        assert store.versions("r1") == ["r1/000000"]  # a state is not a version
        assert store.latest("r1") == "r1/000000"
        with pytest.raises(ModelNotFound):
            store.open_state("r1/000001")


class TestEvaluations:
    """Evaluations: records of a version, by name, going with it."""

    def test_evaluations_are_recorded_with_the_version(self, store):
        store_model(store, "r1/000000", random_model(0))
        store_model(store, "r1/000001", random_model(1))
        assert store.evaluations("r1/000001") == {}

        store.put_evaluation("r1/000001", "r1-000002", {"metrics": {"map50": 0.5}, "examples": 30})
        store.put_evaluation("r1/000001", "eval-run-000001", {"metrics": {"map50": 0.6}, "examples": 40})
        store.put_evaluation("r1/000001", "r1-000002", {"metrics": {"map50": 0.55}, "examples": 30})

        assert store.evaluations("r1/000001") == {
            "eval-run-000001": {"metrics": {"map50": 0.6}, "examples": 40},
            "r1-000002": {"metrics": {"map50": 0.55}, "examples": 30},
        }
        assert store.versions("r1") == ["r1/000000", "r1/000001"]  # records are not versions
        with pytest.raises(ModelNotFound):
            store.put_evaluation("r1/000009", "x", {})
        with pytest.raises(InvalidArgument, match="evaluation name"):
            store.put_evaluation("r1/000001", "../escape", {})
        store.delete("r1/000000")
        store.put_evaluation("r1/000001", "r1-000003", {})
        store_model(store, "r1/000002", random_model(2))
        store.delete("r1/000001")  # its records go with it
        assert store.evaluations("r1/000001") == {}


# The local directory backend's own promises.


def test_local_files_are_standard_safetensors(tmp_path):
    store = LocalModelStore(tmp_path, tenant="t1")
    model = {k: v for k, v in random_model(5).items() if v[0] != "bfloat16"}

    store_model(store, "r1/000000", model)
    loaded = load_file(tmp_path / "t1" / "runs" / "r1" / "000000.safetensors")

    for name, (_, arr) in model.items():
        np.testing.assert_array_equal(loaded[name], arr)


def test_versions_without_a_block_table_are_checked_by_digest(tmp_path):
    import json

    store = LocalModelStore(tmp_path, tenant="t1")
    model = random_model(2)
    store_model(store, "r1/000000", model)
    manifest_path = tmp_path / "t1" / "runs" / "r1" / "000000.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["block_bytes"], manifest["block_crc32c"]
    manifest_path.write_text(json.dumps(manifest))

    with store.open("r1/000000") as reader:
        assert b"".join(c.data for c in reader.iter_chunks(100)) == b"".join(
            np.ascontiguousarray(model[t.name][1]).tobytes() for t in reader.layout.tensors
        )
    manifest["sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    with store.open("r1/000000") as reader, pytest.raises(CorruptModel):
        list(reader.iter_chunks(100))


# The S3 backend's own promises.


def test_s3_outage_is_retried_then_unavailable(tmp_path):
    settings = S3Settings(endpoint=f"127.0.0.1:{free_port()}", access_key="x", secret_key="y", retry_s=0.5)
    store = S3ModelStore(make_client(settings), settings, tmp_path, "t1")
    with pytest.raises(Unavailable, match="unreachable"):
        store.latest("r1")
