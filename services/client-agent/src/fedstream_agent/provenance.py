"""What this agent says of itself: with each update, for the lineage of the versions it helps make
(``fedstream.provenance``), its package version, its task plug-in's version and its data set's
fingerprint (file list and sizes, never contents: ``fedstream_tasks.fingerprint``); when it
registers, its capabilities (device, memory, disk, versions)."""

from __future__ import annotations

import functools
import logging
import os
import shutil

import psutil
import torch

from fedstream.provenance import Provenance, clip
from fedstream.v1 import scheduler_pb2
from fedstream.version import distribution_version
from fedstream_tasks.base import SiteDataSettings
from fedstream_tasks.fingerprint import data_fingerprint, task_version

log = logging.getLogger(__name__)

AGENT_DISTRIBUTION = "fedstream-agent"


@functools.cache
def agent_version() -> str:
    """This agent's package version (looked up once)."""
    return distribution_version(AGENT_DISTRIBUTION)


def provenance_of(task: str, data: SiteDataSettings) -> Provenance:
    """This agent's provenance for an update of ``task`` (fingerprints are computed once per
    process); a data folder that cannot be read leaves the fingerprint empty."""
    try:
        fingerprint = data_fingerprint(task, data)
    except OSError as e:
        log.warning("cannot fingerprint the data set of task %s: %s", task, e)
        fingerprint = ""
    return Provenance(clip(agent_version()), clip(task_version(task)), clip(fingerprint))


def capabilities(device: torch.device) -> scheduler_pb2.Capabilities:
    caps = scheduler_pb2.Capabilities(
        device=device.type,
        cpu_count=os.cpu_count() or 0,
        memory_bytes=psutil.virtual_memory().total,
        free_disk_bytes=shutil.disk_usage(os.getcwd()).free,
        agent_version=agent_version(),
        torch_version=str(torch.__version__),
    )
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        caps.gpu_name = props.name
        caps.gpu_memory_bytes = props.total_memory
    return caps
