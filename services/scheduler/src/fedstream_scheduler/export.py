"""A model version as a self-describing archive: an uncompressed tar streamed member by member,
never held whole: lineage.json, card.md and card.json, the weights as model.safetensors, then
MANIFEST.json with the SHA-256 and size of each member (computed as they stream), the version's
data SHA-256 and the releases that published it."""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fedstream.errors import ModelNotFound
from fedstream.safetensors_io import encode_header
from fedstream.store import ModelReader
from fedstream_scheduler.admin import AdminServices
from fedstream_scheduler.lineage import LineageService

BLOCK = 512
MEMBERS = ("lineage.json", "card.md", "card.json", "model.safetensors", "MANIFEST.json")


def _header(name: str, size: int, mtime: float) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, int(mtime), 0o644
    return info.tobuf(format=tarfile.PAX_FORMAT)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


@dataclass
class Export:
    """An archive ready to stream: its small members, the model's reader, and its total size."""

    version: str
    small: dict[str, bytes]
    reader: ModelReader
    safetensors_header: bytes
    extra: dict[str, Any]
    mtime: float

    @property
    def model_bytes(self) -> int:
        return len(self.safetensors_header) + self.reader.info.layout.total_bytes

    def stream(self, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        """The tar, piece by piece; the reader is closed at the end."""
        members: dict[str, dict[str, Any]] = {}
        with self.reader:
            for name, body in self.small.items():
                members[name] = {"sha256": hashlib.sha256(body).hexdigest(), "bytes": len(body)}
                yield _header(name, len(body), self.mtime) + body + _padding(len(body))
            digest = hashlib.sha256(self.safetensors_header)
            yield _header("model.safetensors", self.model_bytes, self.mtime) + self.safetensors_header
            for chunk in self.reader.iter_chunks(chunk_bytes):
                piece = bytes(chunk.data)
                digest.update(piece)
                yield piece
            yield _padding(self.model_bytes)
        members["model.safetensors"] = {"sha256": digest.hexdigest(), "bytes": self.model_bytes}
        manifest = json.dumps({**self.extra, "members": members}, indent=2, sort_keys=True).encode() + b"\n"
        yield _header("MANIFEST.json", len(manifest), self.mtime) + manifest + _padding(len(manifest))
        yield b"\0" * (2 * BLOCK)


def lineage_and_card(admin: AdminServices, version: str) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """The version's lineage document and card (Markdown, JSON); for a version without a
    recorded lineage (committed before lineages were), a document that says so."""
    lineage = LineageService(admin.state, admin.models)
    try:
        doc = lineage.document(version)
        card_md, card_json = lineage.card(version)
    except ModelNotFound:
        doc = {"version": version, "missing": True}
        card_md, card_json = f"# Model {version}\n\nNo lineage was recorded for this version.\n", doc
    return doc, card_md, card_json


def build_export(admin: AdminServices, version: str) -> Export:
    """The export of one of the tenant's versions; raises ModelNotFound."""
    info, pinned = admin.models.info(version)
    doc, card_md, card_json = lineage_and_card(admin, version)
    run_id = version.split("/", 1)[0]
    run = admin.state.get_run(run_id)
    releases = [{"release_id": r.release_id, "channel": r.channel, "state": r.state, "decided_unix": r.decided_unix}
                for r in admin.state.list_releases(run.federation) if r.version == version]
    small = {
        "lineage.json": json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n",
        "card.md": card_md.encode(),
        "card.json": json.dumps(card_json, indent=2, sort_keys=True).encode() + b"\n",
    }
    extra = {"version": version, "federation_id": run.federation, "data_sha256": info.sha256, "pinned": pinned,
             "releases": releases, "exported_unix": admin.clock()}
    reader = admin.models.open(version)
    return Export(version, small, reader, encode_header(reader.info.layout, reader.info.metadata), extra, admin.clock())
