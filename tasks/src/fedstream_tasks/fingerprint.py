"""What an agent says of its task and data in the lineage of the versions it helps make: the task
plug-in's version, and a fingerprint of the site's data set that reveals nothing of the data.

The fingerprint of a data folder is the SHA-256 (hex) of one line per file, ``<relative
path>\\t<size in bytes>\\n``, sorted by path: the same files give the same fingerprint however
they were listed, and adding, removing, renaming or resizing a file changes it. Contents are
never read. A task whose data is bundled (no ``path``, a partition of a built-in set) is
fingerprinted by its name and partition settings instead. Computed once per process.
"""

from __future__ import annotations

import functools
import hashlib
import os
from importlib.metadata import PackageNotFoundError, entry_points, packages_distributions, version
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedstream_tasks.base import SiteDataSettings

TASKS_DISTRIBUTION = "fedstream-tasks"


def _listing(root: Path) -> list[tuple[str, int]]:
    """(path relative to ``root`` with "/" separators, size) of every regular file below it;
    links are not followed."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in files:
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink():
                found.append((path.relative_to(root).as_posix(), path.stat().st_size))
    return found


def fingerprint_listing(listing: list[tuple[str, int]]) -> str:
    """SHA-256 (hex) of ``<path>\\t<size>\\n`` lines sorted by path."""
    sha = hashlib.sha256()
    for rel, size in sorted(listing):
        sha.update(f"{rel}\t{size}\n".encode("utf-8", "surrogateescape"))
    return sha.hexdigest()


@functools.lru_cache(maxsize=16)
def folder_fingerprint(root: Path) -> str:
    """The fingerprint of a data folder's file list and sizes (see the module); raises
    OSError when it cannot be read."""
    if not root.is_dir():
        raise NotADirectoryError(f"data path {root} is not a directory")
    return fingerprint_listing(_listing(root))


def data_fingerprint(task: str, settings: SiteDataSettings) -> str:
    """The fingerprint of this site's data for ``task``: its folder's when it has one, else
    of the bundled set's partition (task name and partition settings)."""
    if settings.path is not None:
        return folder_fingerprint(settings.path.resolve())
    line = (f"bundled:{task}:site {settings.site_index} of {settings.num_sites}:"
            f"alpha {settings.partition_alpha}:seed {settings.partition_seed}")
    return hashlib.sha256(line.encode()).hexdigest()


@functools.lru_cache(maxsize=64)
def task_version(name: str) -> str:
    """``name@version``: the version of the distribution that provides the task (an entry
    point's, a ``module:Class``'s top package's, else fedstream-tasks'); ``unknown`` when it
    cannot be told."""
    dist = TASKS_DISTRIBUTION
    found = [ep for ep in entry_points(group="fedstream.tasks") if ep.name == name]
    if found and found[0].dist is not None:
        dist = found[0].dist.name
    elif ":" in name:
        owners = packages_distributions().get(name.partition(":")[0].split(".")[0], [])
        dist = owners[0] if owners else ""
    try:
        return f"{name}@{version(dist)}" if dist else f"{name}@unknown"
    except PackageNotFoundError:
        return f"{name}@unknown"
