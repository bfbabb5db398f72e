"""The S3 model store (MinIO or any S3-compatible server), through the minio SDK.

Objects of a tenant live under ``<tenant>/`` in one bucket:
``<tenant>/runs/<run_id>/<round>.safetensors``, its ``<round>.json`` manifest, ``<round>.pin``
for pinned versions, and ``LATEST``. A version is staged in a local file while it is written
(bounded memory), uploaded in multipart parts on commit, then its manifest, then the LATEST
pointer: a reader never finds a version without its manifest, nor LATEST naming one that is
not complete. Reads are ranged GETs checked block by block against the manifest's CRCs.
Every operation is retried with backoff while the endpoint is unreachable.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import urllib3
from minio import Minio
from minio.error import S3Error

from fedstream.config import S3Settings
from fedstream.errors import AlreadyExists, CorruptModel, ModelNotFound, Unavailable
from fedstream.metrics import STORE_OPERATION_ERRORS, STORE_OPERATION_SECONDS, instrument
from fedstream.safetensors_io import MAX_HEADER_BYTES, encode_header, read_header
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

log = logging.getLogger(__name__)

T = TypeVar("T")
_MISSING = ("NoSuchKey", "NoSuchObject", "NotFound")


def make_client(settings: S3Settings) -> Minio:
    # Few, quick retries inside urllib3; the store's own loop waits out longer outages.
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=5, read=60),
        retries=urllib3.Retry(total=2, backoff_factor=0.1, status_forcelist=[500, 502, 503, 504]),
        maxsize=16,
    )
    return Minio(
        settings.endpoint,
        access_key=settings.access_key,
        secret_key=settings.secret_key.get_secret_value(),
        secure=settings.secure,
        region=settings.region,
        http_client=http,
    )


# S3's most parts in one multipart upload, and its largest part.
MAX_PARTS = 10_000
MAX_PART_BYTES = 5 << 30


def part_bytes_for(size: int, configured: int) -> int:
    """The part size of a multipart upload of ``size`` bytes: ``configured``, or more (whole
    MiB) when that would take more than S3's 10,000 parts (past 156 GiB with 16 MiB parts)."""
    least = -(-size // MAX_PARTS)
    return min(MAX_PART_BYTES, max(configured, -(-least // (1 << 20)) << 20))


class S3ModelStore(ModelStore):
    def __init__(self, client: Minio, settings: S3Settings, staging: Path, tenant: str = "default") -> None:
        self.tenant = tenant
        self.client = client
        self.bucket = settings.bucket
        self.part_bytes = settings.part_bytes
        self.retry_s = settings.retry_s
        self.staging = Path(staging)
        self.staging.mkdir(parents=True, exist_ok=True)
        self._create_bucket = settings.create_bucket
        self._endpoint = f"S3 at {settings.endpoint} (bucket {settings.bucket})"

    def endpoint(self) -> str:
        return self._endpoint

    def ping(self) -> None:
        """Checks the bucket as ``ensure_bucket`` does."""
        self.ensure_bucket()

    def ensure_bucket(self) -> None:
        """Checks that the endpoint answers (creating the bucket if allowed); raises Unavailable."""
        def check() -> None:
            if not self.client.bucket_exists(self.bucket):
                if not self._create_bucket:
                    raise Unavailable(f"bucket {self.bucket!r} does not exist")
                self.client.make_bucket(self.bucket)

        try:
            self._retry(check, "check the bucket", retry_s=0)
        except Unavailable as e:
            raise Unavailable(f"{self._endpoint}: {e.public}") from e
        except S3Error as e:
            raise Unavailable(f"{self._endpoint}: {e.code}") from e

    # Keys.

    def _run_prefix(self, run_id: str) -> str:
        return f"{self.tenant}/runs/{check_run_id(run_id)}/"

    def _key(self, version: str, suffix: str) -> str:
        run_id, rnd = parse_version(version)
        return f"{self._run_prefix(run_id)}{rnd:06d}{suffix}"

    # Plumbing.

    def _retry(self, op: Callable[[], T], what: str, retry_s: float | None = None) -> T:
        """Runs ``op``, retrying connection failures and 5xx answers with backoff."""
        give_up = time.monotonic() + (self.retry_s if retry_s is None else retry_s)
        delay = 0.2
        while True:
            try:
                return op()
            except S3Error as e:
                if e.code in _MISSING:
                    raise
                if time.monotonic() + delay > give_up:
                    raise Unavailable(f"model store failed to {what}: {e.code}") from e
                log.warning("model store: %s failed (%s); retrying in %.1f s", what, e.code, delay)
            except (urllib3.exceptions.HTTPError, OSError) as e:
                if time.monotonic() + delay > give_up:
                    raise Unavailable(f"model store unreachable: cannot {what}", detail=str(e)) from e
                log.warning("model store unreachable (%s); retrying %s in %.1f s", type(e).__name__, what, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _get_bytes(self, key: str, offset: int = 0, length: int = 0) -> bytes:
        def op() -> bytes:
            resp = self.client.get_object(self.bucket, key, offset=offset, length=length)
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

        return self._retry(op, f"read {key}")

    def _put_bytes(self, key: str, data: bytes) -> None:
        self._retry(
            lambda: self.client.put_object(self.bucket, key, io.BytesIO(data), len(data)), f"write {key}"
        )

    def _exists(self, key: str) -> bool:
        try:
            self._retry(lambda: self.client.stat_object(self.bucket, key), f"look up {key}")
        except S3Error as e:
            if e.code in _MISSING:
                return False
            raise
        return True

    def _list(self, prefix: str) -> list[str]:
        return self._retry(
            lambda: [o.object_name for o in self.client.list_objects(self.bucket, prefix=prefix)],
            f"list {prefix}",
        )

    # The interface.

    def writer(self, version: str, layout: Layout, metadata: dict[str, str]) -> ModelWriter:
        if self._exists(self._key(version, ".safetensors")):
            raise AlreadyExists(f"model {version} already exists")
        run_id, _ = parse_version(version)
        return _S3Writer(
            self, version, layout, metadata, self._key(version, ".safetensors"), self._key(version, ".json"),
            latest_key=self._run_prefix(run_id) + "LATEST", check_finite=True,
        )

    def _update_key(self, run_id: str, round_: int, agent_id: str) -> str:
        return f"{self.tenant}/updates/{check_run_id(run_id)}/{round_:06d}/{agent_key(agent_id)}"

    def update_writer(self, run_id: str, round_: int, agent_id: str, layout: Layout) -> ModelWriter:
        key = self._update_key(run_id, round_, agent_id)
        label = f"update of {agent_id!r} for round {round_} of {run_id}"
        return _S3Writer(self, label, layout, {}, key + ".safetensors", key + ".json", latest_key=None)

    def open_update(self, run_id: str, round_: int, agent_id: str) -> ModelReader:
        key = self._update_key(run_id, round_, agent_id)
        label = f"update of {agent_id!r} for round {round_} of {run_id}"
        info, start = self._read_info_at(label, key + ".safetensors", key + ".json")
        return _S3Reader(self, info, key + ".safetensors", start)

    def delete_updates(self, run_id: str, round_: int) -> None:
        prefix = self._update_key(run_id, round_, "x").rsplit("/", 1)[0] + "/"
        for name in self._list(prefix):
            self._retry(partial(self.client.remove_object, self.bucket, name), f"delete {name}")

    def state_writer(self, version: str, layout: Layout) -> ModelWriter:
        return _S3Writer(
            self, f"state of {version}", layout, {}, self._key(version, ".state.safetensors"),
            self._key(version, ".state.json"), latest_key=None, check_finite=True,
        )

    def open_state(self, version: str) -> ModelReader:
        key = self._key(version, ".state.safetensors")
        try:
            info, start = self._read_info_at(f"state of {version}", key, self._key(version, ".state.json"))
        except ModelNotFound:
            raise ModelNotFound(f"model {version} has no strategy state") from None
        return _S3Reader(self, info, key, start)

    def _read_info(self, version: str) -> tuple[ModelVersion, int]:
        return self._read_info_at(version, self._key(version, ".safetensors"), self._key(version, ".json"))

    def _read_info_at(self, version: str, model_key: str, manifest_key: str) -> tuple[ModelVersion, int]:
        try:
            raw = self._get_bytes(manifest_key)
            prefix = self._get_bytes(model_key, 0, 8)
        except S3Error as e:
            if e.code in _MISSING:
                raise ModelNotFound(f"model {version} not found") from None
            raise
        n = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if not 0 <= n <= MAX_HEADER_BYTES:
            raise CorruptModel(f"model {version} is corrupt: bad header length")
        header = prefix + self._get_bytes(model_key, 8, n) if n else prefix
        layout, metadata, start = read_header(io.BytesIO(header), f"model {version}")
        return version_from_manifest(version, layout, metadata, raw), start

    def info(self, version: str) -> ModelVersion:
        return self._read_info(version)[0]

    def open(self, version: str) -> ModelReader:
        info, start = self._read_info(version)
        return _S3Reader(self, info, self._key(version, ".safetensors"), start)

    def latest(self, run_id: str) -> str | None:
        try:
            return self._get_bytes(self._run_prefix(run_id) + "LATEST").decode().strip() or None
        except S3Error as e:
            if e.code in _MISSING:
                return None
            raise

    def versions(self, run_id: str) -> list[str]:
        prefix = self._run_prefix(run_id)
        names = self._list(prefix)
        manifests = {n[len(prefix) : -5] for n in names if n.endswith(".json")}
        models = {n[len(prefix) : -12] for n in names if n.endswith(".safetensors")}
        return [f"{run_id}/{r}" for r in sorted(manifests & models) if r.isdigit()]

    def delete(self, version: str) -> None:
        if not self._exists(self._key(version, ".json")):
            raise ModelNotFound(f"model {version} not found")
        self.check_deletable(version)
        suffixes = (".json", ".safetensors", ".state.json", ".state.safetensors", ".lineage.json")
        keys = [self._key(version, s) for s in suffixes]
        keys += self._list(self._key(version, ".eval/"))
        for key in keys:
            self._retry(partial(self.client.remove_object, self.bucket, key), f"delete {key}")

    def put_evaluation(self, version: str, name: str, record: dict[str, Any]) -> None:
        check_evaluation_name(name)
        if not self._exists(self._key(version, ".json")):
            raise ModelNotFound(f"model {version} not found")
        self._put_bytes(self._key(version, f".eval/{name}.json"), json.dumps(record, sort_keys=True).encode())

    def evaluations(self, version: str) -> dict[str, dict[str, Any]]:
        prefix = self._key(version, ".eval/")
        names = sorted(n for n in self._list(prefix) if n.endswith(".json"))
        return {n[len(prefix) : -5]: json.loads(self._get_bytes(n)) for n in names}

    def put_lineage(self, version: str, doc: dict[str, Any]) -> None:
        self._put_bytes(self._key(version, ".lineage.json"), json.dumps(doc, sort_keys=True).encode())

    def lineage(self, version: str) -> dict[str, Any]:
        try:
            if not self._exists(self._key(version, ".json")):
                raise ModelNotFound(f"model {version} not found")
            doc: dict[str, Any] = json.loads(self._get_bytes(self._key(version, ".lineage.json")))
        except S3Error as e:
            if e.code in _MISSING:
                raise ModelNotFound(f"model {version} has no lineage (committed before lineages were recorded)") from None
            raise
        return doc

    def pin(self, version: str) -> None:
        if not self._exists(self._key(version, ".json")):
            raise ModelNotFound(f"model {version} not found")
        self._put_bytes(self._key(version, ".pin"), b"")

    def unpin(self, version: str) -> None:
        key = self._key(version, ".pin")
        self._retry(lambda: self.client.remove_object(self.bucket, key), f"unpin {version}")

    def pinned(self, run_id: str) -> list[str]:
        prefix = self._run_prefix(run_id)
        return sorted(f"{run_id}/{n[len(prefix) : -4]}" for n in self._list(prefix) if n.endswith(".pin"))


class _S3Writer(ModelWriter):
    def __init__(
        self,
        store: S3ModelStore,
        version: str,
        layout: Layout,
        metadata: dict[str, str],
        model_key: str,
        manifest_key: str,
        latest_key: str | None,
        *,
        check_finite: bool = False,
    ) -> None:
        super().__init__(version, layout, check_finite=check_finite)
        self._store = store
        self._model_key = model_key
        self._manifest_key = manifest_key
        self._latest_key = latest_key
        self._metadata = dict(metadata)
        fd, name = tempfile.mkstemp(dir=store.staging, prefix=".stage-", suffix=".safetensors")
        self._path = Path(name)
        self._file = os.fdopen(fd, "wb")
        self._file.write(encode_header(layout, self._metadata))

    def _write(self, data: bytes | memoryview) -> None:
        self._file.write(data)

    def _commit(self, sha256: str, block_crcs: tuple[int, ...], set_latest: bool) -> ModelVersion:
        self._file.close()
        s = self._store
        info = ModelVersion(
            self.version, self.layout, self._metadata, sha256, time.time(), self.block_bytes, block_crcs
        )
        manifest = manifest_bytes(info)
        model_key = self._model_key
        part_bytes = part_bytes_for(self._path.stat().st_size, s.part_bytes)
        try:
            s._retry(
                lambda: s.client.fput_object(s.bucket, model_key, str(self._path), part_size=part_bytes),
                f"upload {model_key}",
            )
            s._put_bytes(self._manifest_key, manifest)
        finally:
            self._path.unlink(missing_ok=True)
        if set_latest and self._latest_key:
            try:
                read_back(info, lambda: s.open(self.version))
            except BaseException:
                # Never listed, never the latest: the round that wrote it can write it again.
                for key in (self._manifest_key, model_key):
                    s._retry(partial(s.client.remove_object, s.bucket, key), f"delete {key}")
                raise
            s._put_bytes(self._latest_key, self.version.encode())
        return info

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._path.unlink(missing_ok=True)


class _S3Reader(ModelReader):
    """Ranged reads; consecutive reads share one streaming GET."""

    def __init__(self, store: S3ModelStore, info: ModelVersion, key: str, data_start: int) -> None:
        super().__init__(info)
        self._store = store
        self._key = key
        self._start = data_start
        self._resp: Any = None
        self._pos = -1

    def _close_stream(self) -> None:
        if self._resp is not None:
            self._resp.close()
            self._resp.release_conn()
            self._resp = None
            self._pos = -1

    def read_at(self, offset: int, size: int) -> bytes:
        if size == 0:
            return b""
        if self._resp is None or self._pos != offset:
            self._close_stream()
            s = self._store
            self._resp = s._retry(
                lambda: s.client.get_object(s.bucket, self._key, offset=self._start + offset),
                f"read {self._key}",
            )
            self._pos = offset
        try:
            data: bytes = self._resp.read(size)
        except (urllib3.exceptions.HTTPError, OSError):
            self._close_stream()
            return self._store._get_bytes(self._key, self._start + offset, size)
        if len(data) != size:
            self._close_stream()
            raise CorruptModel(f"model {self.info.version} is corrupt: object is truncated")
        self._pos += size
        return data

    def close(self) -> None:
        self._close_stream()


instrument(S3ModelStore, STORE_METHODS, STORE_OPERATION_SECONDS, STORE_OPERATION_ERRORS, "s3")
