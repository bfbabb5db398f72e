"""The aggregator's logic, independent of gRPC: a facade over its parts.

An upload is verified chunk by chunk as it arrives and spooled to a file; once the stream is
complete and sound it is counted in the round's journal in the state store (atomically, once
per agent) and folded into the round's accumulator under the round's lock (``ingest``). A bad
upload therefore never touches the accumulator, and memory stays at one accumulator plus a
chunk per stream. A round closes when every participant reported or its deadline passed, and
its finisher, chosen when it opened, writes the result (``commit``, ``finishers``).

With ``durable=True`` (a shared state store) each counted update is also kept in the model
store until its round is committed, and ``recover`` rebuilds every unfinished round from the
journal after a restart (``recovery``): folding the kept updates again gives the same
accumulator, so a crash neither loses nor double-counts an update.

Hierarchical aggregation (``hierarchy``): a root aggregator given leaves shares each training
round of a linear strategy among them (participants dealt round-robin). Each leaf folds its
share like a single aggregator, but its round is ``partial``: it never commits; the root follows
the leaves' reports, and when the round closes collects each leaf's weighted sums, adds them
into one accumulator and commits the version as a single aggregator would. Every aggregator
keeps its own journal (``journal``), so they can share one state store.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from fedstream.aggregation import DEFAULT_ACCUMULATOR_MEMORY_BUDGET_BYTES, make_accumulator
from fedstream.errors import FedstreamError
from fedstream.rounds import RoundPlan, RoundSnapshot, UpdateReport
from fedstream.state import StateStore
from fedstream.store import ModelStore, ModelVersion
from fedstream.tensors import DEFAULT_MIN_DOWNLOAD_CHUNK_BYTES, MAX_CHUNK_BYTES, Chunk, Layout
from fedstream_aggregator.aborting import Aborter
from fedstream_aggregator.commit import Committer
from fedstream_aggregator.distill import Distiller
from fedstream_aggregator.finishers import Storage
from fedstream_aggregator.hierarchy import Hierarchy, LeafLink
from fedstream_aggregator.ingest import Chunks, Ingest, UpdateHeader
from fedstream_aggregator.journal import Journal
from fedstream_aggregator.opening import Opener, RoundFactory
from fedstream_aggregator.partials import PartialUploads
from fedstream_aggregator.recovery import Recovery
from fedstream_aggregator.rounds import Round, RoundTable
from fedstream_aggregator.serving import Message, SharedBlocks, check_download_chunk_bytes, open_model
from fedstream_aggregator.spool import SpoolPool, remove_dead_spools

__all__ = ["AggregatorService", "LeafLink", "RoundPlan", "RoundSnapshot", "UpdateHeader"]

log = logging.getLogger(__name__)


class AggregatorService:
    """Rounds opened by the scheduler, uploads from agents, downloads of model versions."""

    def __init__(
        self,
        state: StateStore,
        store: ModelStore,
        spool_dir: Path,
        *,
        chunk_bytes: int,
        keep_last: int = 0,
        durable: bool = False,
        journal: str = "",
        leaves: Iterable[LeafLink] = (),
        distiller: Distiller | None = None,
        clock: Callable[[], float] = time.time,
        accumulator_memory_budget_bytes: int = DEFAULT_ACCUMULATOR_MEMORY_BUDGET_BYTES,
    ) -> None:
        self.state = state
        self.store = store
        self.chunk_bytes = chunk_bytes
        # The chunk sizes a client may ask for in a download (the server's limits set it).
        self.download_chunk_bytes = (DEFAULT_MIN_DOWNLOAD_CHUNK_BYTES, MAX_CHUNK_BYTES)
        remove_dead_spools(Path(spool_dir))
        self.spools = SpoolPool(Path(spool_dir) / f"{os.getpid()}-{uuid.uuid4().hex[:8]}")
        self.shared_blocks = SharedBlocks()
        self.journal = Journal(state, journal)
        self.rounds = RoundTable(clock, self._on_deadline)
        self.hierarchy = Hierarchy(leaves, self.rounds, self.journal, store, self.spools, chunk_bytes=chunk_bytes)
        self.committer = Committer(
            self.journal, store, self.spools, self.hierarchy, tenant=state.tenant, keep_last=keep_last
        )
        self.hierarchy.bind(self.committer)
        self.hierarchy.accumulators = functools.partial(
            make_accumulator, memory_budget_bytes=accumulator_memory_budget_bytes, directory=self.spools.directory
        )
        storage = Storage(store, self.spools, chunk_bytes)
        factory = RoundFactory(
            storage, self.hierarchy, distiller, clock, durable=durable, run_cancelled=self.committer.run_cancelled,
            accumulators=self.hierarchy.accumulators, fail=self.committer.fail, tenant=state.tenant,
        )
        self.recovery = Recovery(self.rounds, self.journal, factory, self.hierarchy, self.committer)
        self.aborter = Aborter(self.rounds, self.journal, self.committer)
        self.opener = Opener(self.rounds, self.journal, factory, self.recovery, self.hierarchy, distiller)
        # Cut resumable uploads, kept apart per journal in a directory that outlives the process.
        self.partials = PartialUploads(
            Path(spool_dir) / "partial" / (journal.replace("/", "-") or "main"), self.rounds, tenant=state.tenant,
            spools=self.spools,
        )
        self.ingest = Ingest(
            self.rounds, self.journal, store, self.spools, self.hierarchy, self.committer, self.partials,
            tenant=state.tenant, chunk_bytes=chunk_bytes,
        )

    def _on_deadline(self, rnd: Round) -> None:
        self.committer.on_deadline(rnd)

    @property
    def ready(self) -> bool:
        """False while a restarted process is rebuilding its rounds: callers are told to retry."""
        return self.rounds.ready

    @ready.setter
    def ready(self, value: bool) -> None:
        self.rounds.ready = value

    @property
    def max_update_bytes(self) -> int:
        """Largest update accepted (its declared bytes); the server sets it from its limits."""
        return self.ingest.max_update_bytes

    @max_update_bytes.setter
    def max_update_bytes(self, value: int) -> None:
        self.ingest.max_update_bytes = value

    def open_round(self, plan: RoundPlan) -> dict[str, str]:
        """See ``Opener.open``."""
        return self.opener.open(plan)

    def abort_round(self, run_id: str, round_: int, reason: str) -> RoundSnapshot:
        """See ``Aborter.abort``."""
        return self.aborter.abort(run_id, round_, reason)

    def recover(self) -> int:
        """See ``Recovery.recover``; then the partial uploads of the recovered rounds are taken
        back (``PartialUploads.reload``)."""
        recovered = self.recovery.recover()
        kept = self.partials.reload()
        if kept:
            log.info("took back %d partial uploads", kept)
        return recovered

    def upload_status(self, run_id: str, round_: int, agent_id: str, upload_id: str) -> tuple[bool, int]:
        """See ``Ingest.status``."""
        return self.ingest.status(run_id, round_, agent_id, upload_id)

    def snapshot(self, run_id: str, round_: int) -> RoundSnapshot:
        """The round now; raises RoundNotFound."""
        return self.rounds.snapshot(run_id, round_)

    def watch(
        self, run_id: str, round_: int, is_active: Callable[[], bool] = lambda: True
    ) -> Iterator[RoundSnapshot]:
        """See ``RoundTable.watch``."""
        return self.rounds.watch(run_id, round_, is_active)

    def receive_update(
        self, header: UpdateHeader, chunks: Chunks, before_count: Callable[[], object] = lambda: None,
        on_close: Callable[[FedstreamError], None] = lambda error: None,
    ) -> tuple[bool, int]:
        """Verifies, spools and counts one agent's update; returns (duplicate, bytes received).
        ``before_count`` runs once the update is verified, before it counts; what it raises
        refuses the update (an agent revoked during its upload). ``on_close`` is called, with
        the reason, if the round stops taking updates while this one streams: it ends the
        stream. See ``Ingest``."""
        return self.ingest.receive(header, chunks, before_count, on_close)

    def collect_partial(self, run_id: str, round_: int) -> tuple[Layout, float, list[UpdateReport], Iterator[Chunk]]:
        """See ``Hierarchy.collect_partial``."""
        return self.hierarchy.collect_partial(run_id, round_)

    def finish_partial(self, run_id: str, round_: int, version: str, reason: str) -> None:
        """See ``Hierarchy.finish_partial``."""
        self.hierarchy.finish_partial(run_id, round_, version, reason)

    def open_model(
        self, run_id: str, version: str, chunk_bytes: int, offset: int = 0
    ) -> tuple[ModelVersion, Iterator[Message]]:
        """See ``serving.open_model`` (downloads at the same time share their blocks);
        ``chunk_bytes`` 0 means this aggregator's, any other must be within ``download_chunk_bytes``."""
        if chunk_bytes:
            check_download_chunk_bytes(self.state.tenant, chunk_bytes, self.download_chunk_bytes)
        return open_model(
            self.store, self.state.tenant, run_id, version, chunk_bytes or self.chunk_bytes, offset, self.shared_blocks
        )

    def close(self) -> None:
        """Disarms every deadline, stops following leaves and deletes idle spool files."""
        for rnd in self.rounds.close():
            if rnd.timer is not None:
                rnd.timer.cancel()
            rnd.stop_following()
        self.partials.close()
        self.spools.close()
