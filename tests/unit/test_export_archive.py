"""`fedstream models export` checks the archive it wrote against the archive's own manifest."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from fedstream_cli.api import ApiError
from fedstream_cli.releases import EXPORT_MEMBERS, verify_archive


def archive(path: Path, members: dict[str, bytes], listed: dict[str, bytes] | None = None) -> Path:
    listed = members if listed is None else listed
    manifest = {"members": {n: {"sha256": hashlib.sha256(b).hexdigest(), "bytes": len(b)} for n, b in listed.items()}}
    with tarfile.open(path, "w") as tar:
        for name, body in {**members, "MANIFEST.json": json.dumps(manifest).encode()}.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return path


def whole() -> dict[str, bytes]:
    return {name: f"body of {name}".encode() for name in EXPORT_MEMBERS}


def test_a_whole_archive_passes(tmp_path):
    manifest = verify_archive(archive(tmp_path / "a.tar", whole()))
    assert sorted(manifest["members"]) == sorted(EXPORT_MEMBERS)


def test_an_archive_whose_manifest_lists_nothing_is_refused(tmp_path):
    with pytest.raises(ApiError, match="missing"):
        verify_archive(archive(tmp_path / "a.tar", whole(), listed={}))


def test_a_member_the_manifest_does_not_list_is_refused(tmp_path):
    members = {**whole(), "run.sh": b"rm -rf /"}
    with pytest.raises(ApiError, match=r"run\.sh"):
        verify_archive(archive(tmp_path / "a.tar", members, listed=whole()))


def test_a_member_changed_after_the_manifest_is_refused(tmp_path):
    members = {**whole(), "model.safetensors": b"other weights"}
    with pytest.raises(ApiError, match=r"model\.safetensors does not match"):
        verify_archive(archive(tmp_path / "a.tar", members, listed=whole()))


def test_an_archive_without_a_manifest_is_refused(tmp_path):
    path = tmp_path / "a.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("model.safetensors")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(ApiError, match=r"no MANIFEST\.json"):
        verify_archive(path)
