"""The local-directory model store: the embedded default for one machine.

Layout on disk: ``<root>/<tenant>/runs/<run_id>/<round>.safetensors`` beside a
``<round>.json`` manifest (digest, creation time), and ``LATEST`` holding the run's latest
version. Files appear by atomic rename, so a reader never sees a half-written version.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from fedstream.errors import AlreadyExists, CorruptModel, ModelNotFound
from fedstream.metrics import STORE_OPERATION_ERRORS, STORE_OPERATION_SECONDS, instrument
from fedstream.safetensors_io import encode_header, read_header
from fedstream.store.base import (
    STORE_METHODS,
    ModelReader,
    ModelVersion,
    ModelWriter,
    agent_key,
    check_evaluation_name,
    check_run_id,
    manifest_bytes,
    parse_version,
    read_back,
    version_from_manifest,
)
from fedstream.store.interface import ModelStore
from fedstream.tensors import Layout


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _LocalWriter(ModelWriter):
    def __init__(
        self, store: LocalModelStore, version: str, layout: Layout, metadata: dict[str, str], final: Path,
        *, check_finite: bool = False,
    ):
        super().__init__(version, layout, check_finite=check_finite)
        self._store = store
        self._metadata = dict(metadata)
        self._final = final
        self._final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._final.parent, prefix=".tmp-", suffix=".safetensors")
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb")
        self._file.write(encode_header(layout, self._metadata))

    def _write(self, data: bytes | memoryview) -> None:
        self._file.write(data)

    def _commit(self, sha256: str, block_crcs: tuple[int, ...], set_latest: bool) -> ModelVersion:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        info = ModelVersion(
            self.version, self.layout, self._metadata, sha256, time.time(), self.block_bytes, block_crcs
        )
        # Manifest first: a model file without one is never listed, one with is complete.
        _atomic_write(self._final.with_suffix(".json"), manifest_bytes(info))
        os.replace(self._tmp, self._final)
        if set_latest:
            try:
                read_back(info, lambda: self._store.open(self.version))
            except BaseException:
                # Never listed, never the latest: the round that wrote it can write it again.
                self._final.with_suffix(".json").unlink(missing_ok=True)
                self._final.unlink(missing_ok=True)
                raise
            self._store._set_latest(self.version)
        return info

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._tmp.unlink(missing_ok=True)


class _LocalReader(ModelReader):
    def __init__(self, info: ModelVersion, path: Path, data_start: int) -> None:
        super().__init__(info)
        self._fd = os.open(path, os.O_RDONLY)
        self._start = data_start

    def read_at(self, offset: int, size: int) -> bytes:
        data = os.pread(self._fd, size, self._start + offset)
        if len(data) != size:
            raise CorruptModel(f"model {self.info.version} is corrupt: file is truncated")
        return data

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class LocalModelStore(ModelStore):
    """Versions as files under ``<root>/<tenant>/runs/<run_id>/``, each replaced atomically."""

    def __init__(self, root: str | Path, tenant: str = "default") -> None:
        self.tenant = tenant
        self.root = Path(root) / tenant
        self.root.mkdir(parents=True, exist_ok=True)

    def endpoint(self) -> str:
        return f"model directory {self.root}"

    def ping(self) -> None:
        """Always answers: the directory is local."""

    def _run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / check_run_id(run_id)

    def _path(self, version: str) -> Path:
        run_id, rnd = parse_version(version)
        return self._run_dir(run_id) / f"{rnd:06d}.safetensors"

    def _set_latest(self, version: str) -> None:
        run_id, _ = parse_version(version)
        _atomic_write(self._run_dir(run_id) / "LATEST", version.encode())

    def writer(self, version: str, layout: Layout, metadata: dict[str, str]) -> ModelWriter:
        if self._path(version).exists():
            raise AlreadyExists(f"model {version} already exists")
        return _LocalWriter(self, version, layout, metadata, self._path(version), check_finite=True)

    def _update_path(self, run_id: str, round_: int, agent_id: str) -> Path:
        return self.root / "updates" / check_run_id(run_id) / f"{round_:06d}" / f"{agent_key(agent_id)}.safetensors"

    def update_writer(self, run_id: str, round_: int, agent_id: str, layout: Layout) -> ModelWriter:
        label = f"update of {agent_id!r} for round {round_} of {run_id}"
        return _LocalWriter(self, label, layout, {}, self._update_path(run_id, round_, agent_id))

    def open_update(self, run_id: str, round_: int, agent_id: str) -> ModelReader:
        path = self._update_path(run_id, round_, agent_id)
        info, start = self._read_info_at(f"update of {agent_id!r} for round {round_} of {run_id}", path)
        return _LocalReader(info, path, start)

    def delete_updates(self, run_id: str, round_: int) -> None:
        shutil.rmtree(self._update_path(run_id, round_, "x").parent, ignore_errors=True)

    def state_writer(self, version: str, layout: Layout) -> ModelWriter:
        path = self._path(version).with_suffix(".state.safetensors")
        return _LocalWriter(self, f"state of {version}", layout, {}, path, check_finite=True)

    def open_state(self, version: str) -> ModelReader:
        path = self._path(version).with_suffix(".state.safetensors")
        info, start = self._read_info_at(f"state of {version}", path)
        return _LocalReader(info, path, start)

    def _read_info(self, version: str) -> tuple[ModelVersion, int]:
        return self._read_info_at(version, self._path(version))

    def _read_info_at(self, version: str, path: Path) -> tuple[ModelVersion, int]:
        try:
            raw = path.with_suffix(".json").read_bytes()
            with path.open("rb") as f:
                layout, metadata, start = read_header(f, f"model {version}")
        except FileNotFoundError:
            raise ModelNotFound(f"model {version} not found") from None
        return version_from_manifest(version, layout, metadata, raw), start

    def info(self, version: str) -> ModelVersion:
        return self._read_info(version)[0]

    def open(self, version: str) -> ModelReader:
        info, start = self._read_info(version)
        return _LocalReader(info, self._path(version), start)

    def latest(self, run_id: str) -> str | None:
        try:
            return (self._run_dir(run_id) / "LATEST").read_text().strip() or None
        except FileNotFoundError:
            return None

    def delete(self, version: str) -> None:
        path = self._path(version)
        if not path.exists():
            raise ModelNotFound(f"model {version} not found")
        self.check_deletable(version)
        path.with_suffix(".json").unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        for suffix in (".state.json", ".state.safetensors", ".lineage.json"):
            path.with_suffix(suffix).unlink(missing_ok=True)
        shutil.rmtree(path.with_suffix(".eval"), ignore_errors=True)

    def put_evaluation(self, version: str, name: str, record: dict[str, Any]) -> None:
        check_evaluation_name(name)
        if not self.exists(version):
            raise ModelNotFound(f"model {version} not found")
        directory = self._path(version).with_suffix(".eval")
        directory.mkdir(exist_ok=True)
        tmp = directory / f".{name}.tmp"
        tmp.write_text(json.dumps(record, sort_keys=True))
        os.replace(tmp, directory / f"{name}.json")

    def evaluations(self, version: str) -> dict[str, dict[str, Any]]:
        directory = self._path(version).with_suffix(".eval")
        if not directory.is_dir():
            return {}
        return {p.stem: json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))}

    def put_lineage(self, version: str, doc: dict[str, Any]) -> None:
        path = self._path(version).with_suffix(".lineage.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, json.dumps(doc, sort_keys=True).encode())

    def lineage(self, version: str) -> dict[str, Any]:
        path = self._path(version)
        if not path.with_suffix(".json").exists():
            raise ModelNotFound(f"model {version} not found")
        try:
            doc: dict[str, Any] = json.loads(path.with_suffix(".lineage.json").read_bytes())
        except FileNotFoundError:
            raise ModelNotFound(f"model {version} has no lineage (committed before lineages were recorded)") from None
        return doc

    def pin(self, version: str) -> None:
        if not self.exists(version):
            raise ModelNotFound(f"model {version} not found")
        self._path(version).with_suffix(".pin").touch()

    def unpin(self, version: str) -> None:
        self._path(version).with_suffix(".pin").unlink(missing_ok=True)

    def pinned(self, run_id: str) -> list[str]:
        d = self._run_dir(run_id)
        return sorted(f"{run_id}/{p.stem}" for p in d.glob("*.pin")) if d.is_dir() else []

    def versions(self, run_id: str) -> list[str]:
        d = self._run_dir(run_id)
        if not d.is_dir():
            return []
        names = sorted(
            p.stem for p in d.glob("*.safetensors") if p.stem.isdigit() and p.with_suffix(".json").exists()
        )
        return [f"{run_id}/{n}" for n in names]


instrument(LocalModelStore, STORE_METHODS, STORE_OPERATION_SECONDS, STORE_OPERATION_ERRORS, "local")
