"""Contract tests of the model store interface, run against every implementation."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedstream.errors import AlreadyExists, CorruptModel, InvalidArgument, ModelNotFound
from fedstream.store import LocalModelStore, ModelStore
from fedstream.tensors import Layout
from helpers import layout_of, random_model, store_model


@pytest.fixture(params=["local"])
def store(request, tmp_path) -> ModelStore:
    return {"local": lambda: LocalModelStore(tmp_path / "models", tenant="t1")}[request.param]()


def test_write_read_and_latest(store):
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


def test_versions_are_immutable(store):
    store_model(store, "r1/000000", random_model(1))
    with pytest.raises(AlreadyExists):
        store_model(store, "r1/000000", random_model(2))


def test_incomplete_write_is_refused_and_invisible(store):
    layout = Layout.build([("w", "float32", (4,))])
    w = store.writer("r1/000000", layout, {})
    w.write(b"\0" * 8)
    with pytest.raises(InvalidArgument, match="8 of 16 bytes"):
        w.commit()
    w.abort()
    assert store.versions("r1") == [] and store.latest("r1") is None
    with pytest.raises(InvalidArgument, match="past the layout"):
        store.writer("r1/000000", layout, {}).write(b"\0" * 17)


def test_missing_and_malformed_versions(store):
    with pytest.raises(ModelNotFound):
        store.open("r1/000009")
    with pytest.raises(InvalidArgument, match="invalid model version"):
        store.open("r1/9")
    with pytest.raises(InvalidArgument, match="invalid run id"):
        store.open("../000001")


def test_local_files_are_standard_safetensors(tmp_path):
    store = LocalModelStore(tmp_path, tenant="t1")
    model = {k: v for k, v in random_model(5).items() if v[0] != "bfloat16"}

    store_model(store, "r1/000000", model)
    loaded = load_file(tmp_path / "t1" / "runs" / "r1" / "000000.safetensors")

    for name, (_, arr) in model.items():
        np.testing.assert_array_equal(loaded[name], arr)


def test_local_corruption_is_reported_not_loaded(tmp_path):
    store = LocalModelStore(tmp_path, tenant="t1")
    store_model(store, "r1/000000", random_model(5))
    path = tmp_path / "t1" / "runs" / "r1" / "000000.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF
    path.write_bytes(bytes(raw))

    with store.open("r1/000000") as reader, pytest.raises(CorruptModel, match="checksum mismatch"):
        list(reader.iter_chunks(1 << 20))

    path.write_bytes(b"\xff" * 8 + b"{}")
    with pytest.raises(CorruptModel, match="exceeds"):
        store.open("r1/000000")
    path.write_bytes((5).to_bytes(8, "little") + b"[1,2]")
    with pytest.raises(CorruptModel, match="not a JSON object"):
        store.open("r1/000000")


def test_tenants_are_separate(tmp_path):
    a, b = LocalModelStore(tmp_path, "a"), LocalModelStore(tmp_path, "b")
    store_model(a, "r1/000000", random_model(1))
    assert b.latest("r1") is None
    with pytest.raises(ModelNotFound):
        b.open("r1/000000")


def test_corruption_is_found_before_the_bad_block_is_handed_out(tmp_path):
    store = LocalModelStore(tmp_path, tenant="t1")
    layout = Layout.build([("w", "uint8", (3 << 20,))])
    with store.writer("r1/000000", layout, {}) as w:
        w.write(bytes(3 << 20))
        w.commit()
    path = tmp_path / "t1" / "runs" / "r1" / "000000.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-(1 << 20) - 5] ^= 1  # inside the second of three 1 MiB blocks
    path.write_bytes(bytes(raw))

    handed_out = []
    with store.open("r1/000000") as reader, pytest.raises(CorruptModel, match=r"bytes 1048576\.\.2097152"):
        for chunk in reader.iter_chunks(1 << 20):
            handed_out.append(chunk.offset)

    assert handed_out == [0]


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
