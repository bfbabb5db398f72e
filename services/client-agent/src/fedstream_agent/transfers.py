"""The agent's downloads and uploads, retried until the round's deadline and resumed where a cut
left them: a download from its last verified byte of the same version, an upload from the last
chunk the aggregator verified and kept (asked with UploadStatus). An upload is done only when
the aggregator confirms that it counted; a confirmed (run, round) is never sent again."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import grpc

from fedstream.pki import TlsIdentity
from fedstream.provenance import Provenance
from fedstream.rounds import Assignment
from fedstream.tensors import FlatBuffer, Layout
from fedstream.transfer import (
    DownloadedModel,
    DownloadProgress,
    download_model,
    upload_id_of,
    upload_status,
    upload_update,
)
from fedstream_agent import metrics as m
from fedstream_agent.reconnect import Reconnect

log = logging.getLogger(__name__)

RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    # A stream the server ended in favour of this agent's resumed one, or a cut connection.
    grpc.StatusCode.CANCELLED,
}
# Confirmed uploads remembered (the newest); a scheduler repeats only a current round's assignment.
KEEP_CONFIRMED = 256
CONFIRMED_FILE = "confirmed-uploads.json"


class ConfirmedUploads:
    """The (run, round) pairs whose upload the aggregator confirmed, kept in ``path`` (a small
    JSON file, replaced whole) when one is given, so that they survive a restart."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._done: list[tuple[str, int]] = []
        if path is not None and path.is_file():
            try:
                self._done = [(str(r), int(n)) for r, n in json.loads(path.read_text())][-KEEP_CONFIRMED:]
            except (OSError, ValueError, TypeError) as e:
                log.warning("cannot read the confirmed uploads in %s (%s); starting without them", path, e)
        self._lock = threading.Lock()

    def __contains__(self, key: tuple[str, int]) -> bool:
        with self._lock:
            return key in self._done

    def add(self, key: tuple[str, int]) -> None:
        with self._lock:
            if key in self._done:
                return
            self._done = [*self._done, key][-KEEP_CONFIRMED:]
            done = list(self._done)
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(done))
            os.replace(tmp, self.path)
        except OSError as e:
            log.warning("cannot record the confirmed upload in %s: %s", self.path, e)


class Transfers:
    """Downloads and uploads of one agent."""

    def __init__(
        self, agent_id: str, channel: Callable[[str], grpc.Channel], reconnect: Reconnect, stop: threading.Event,
        tls: Callable[[], TlsIdentity | None], confirmed: ConfirmedUploads, *, max_model_bytes: int,
        provenance: Callable[[str], Provenance] = lambda task: Provenance(),
    ) -> None:
        self.agent_id = agent_id
        self.channel = channel
        self.reconnect = reconnect
        self.stop = stop
        self.tls = tls
        self.confirmed = confirmed
        self.max_model_bytes = max_model_bytes
        # What the agent says of itself with an update of a task (for the version's lineage).
        self.provenance = provenance

    def _retry(self, what: str, endpoint: str, e: grpc.RpcError, deadline: float, delay: float) -> float:
        """Waits before the next attempt; raises ``e`` when it is not worth one."""
        if e.code() not in RETRYABLE or time.time() + delay > deadline or self.stop.is_set():
            raise e
        log.warning("%s %s failed (%s); retrying in %.1f s", what, endpoint,
                    self.reconnect.why(e, endpoint, self.tls()), delay)
        time.sleep(delay)
        return min(delay * 2, 5.0)

    def download(self, a: Assignment, chunk_bytes: int, reuse: FlatBuffer | None) -> DownloadedModel:
        """Downloads the base model, retrying transient failures until the deadline; a retry
        resumes from the last verified byte of the version the first attempt got."""
        progress = DownloadProgress()
        delay = 0.2
        while True:
            try:
                return download_model(
                    self.channel(a.model_endpoint), a.run_id, a.base_version, chunk_bytes=chunk_bytes,
                    timeout=max(1.0, a.deadline_unix - time.time()), reuse=reuse,
                    max_bytes=self.max_model_bytes, progress=progress,
                )
            except grpc.RpcError as e:
                delay = self._retry("download from", a.model_endpoint, e, a.deadline_unix, delay)
                if progress.received:
                    log.info("resuming the download of %s at byte %d", progress.version, progress.received)

    def upload(
        self, a: Assignment, layout: Layout, buffers: Callable[[], Iterable[memoryview]], num_examples: int,
        metrics: dict[str, float], chunk_bytes: int, check_cancelled: Callable[[], None],
    ) -> None:
        """Uploads until the aggregator confirms the update counted, retrying transient
        failures until the deadline, each retry resuming where the aggregator says."""
        key = (a.run_id, a.round)
        if key in self.confirmed:
            log.info("the update for round %d of %s was confirmed already; not sent again", a.round, a.run_id)
            return
        upload_id = upload_id_of(layout, buffers()) if layout.total_bytes else ""
        endpoint, delay = a.upload_endpoint, 0.2
        while True:
            check_cancelled()
            timeout = max(1.0, a.deadline_unix - time.time())
            try:
                offset = self._resume_offset(a, upload_id, timeout) if upload_id else 0
                if offset is None:
                    break
                reply = upload_update(
                    self.channel(endpoint), timeout=timeout, run_id=a.run_id, round_=a.round, agent_id=self.agent_id,
                    layout=layout, buffers=buffers(), num_examples=num_examples, metrics=metrics,
                    chunk_bytes=chunk_bytes, upload_id=upload_id, resume_offset=offset,
                    provenance=self.provenance(a.task),
                )
                log.info("update uploaded: %d bytes%s%s", reply.bytes_received,
                         f" (resumed at byte {offset})" if offset else "", " (duplicate)" if reply.duplicate else "")
                m.BYTES_UPLOADED.labels(a.task).inc(reply.bytes_received - offset)
                break
            except grpc.RpcError as e:
                delay = self._retry("upload to", endpoint, e, a.deadline_unix, delay)
        self.confirmed.add(key)

    def _resume_offset(self, a: Assignment, upload_id: str, timeout: float) -> int | None:
        """Where the upload resumes; None when the aggregator says the update counted already."""
        status = upload_status(self.channel(a.upload_endpoint), a.run_id, a.round, self.agent_id, upload_id,
                               timeout=min(timeout, 30.0))
        if status is None:  # an aggregator that does not resume uploads
            return 0
        if status.counted:
            log.info("the aggregator had counted the update already")
            return None
        return int(status.offset)
