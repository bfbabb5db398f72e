"""The client agent: dials out to the scheduler, takes assignments, trains locally, uploads."""

from __future__ import annotations

import functools
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from typing import Any

import grpc
import numpy as np
import torch

from fedstream.compression import SCALE_SUFFIX, quantize_with_feedback
from fedstream.convert import assignment_from_proto
from fedstream.errors import InvalidArgument, RoundCancelled, RoundClosed, SecureAggregationFailed
from fedstream.grpcutil import channel, error_code_of
from fedstream.logs import log_context
from fedstream.pki import TlsIdentity
from fedstream.protocol import PROTOCOL_VERSION
from fedstream.rounds import Assignment, RoundKind
from fedstream.tensors import FlatBuffer, Layout
from fedstream.transfer import DownloadedModel
from fedstream.v1 import scheduler_pb2, scheduler_pb2_grpc
from fedstream_agent import metrics as m
from fedstream_agent.budget import SiteBudget
from fedstream_agent.changes import as_changes
from fedstream_agent.identity import (
    AgentDisabledError,
    AgentIdentity,
    CallFailed,
    EnrollmentError,
    expired,
    renew_after_unix,
)
from fedstream_agent.pacing import stretch
from fedstream_agent.privacy import is_private, private_changes, privatize, reported
from fedstream_agent.provenance import capabilities, provenance_of
from fedstream_agent.reconnect import Reconnect
from fedstream_agent.secagg import SecureTraining
from fedstream_agent.settings import AgentSettings
from fedstream_agent.transfers import CONFIRMED_FILE, ConfirmedUploads, Transfers
from fedstream_tasks import get_task
from fedstream_tasks.base import Task, TrainParams, TrainResult, pick_device
from fedstream_tasks.torchio import buffers_of, layout_of, state_of

log = logging.getLogger(__name__)



class RoundCancelledHere(Exception):
    """The round this agent works on was cancelled (its run was): its work stops."""


class RoundClosedHere(Exception):
    """The round this agent works on closed with the updates it needed: its work stops,
    no longer needed (over-selection)."""


def _is_closure(e: grpc.RpcError) -> bool:
    """Whether a refusal says the round closed without this agent's update (RoundClosed)."""
    return error_code_of(e) == RoundClosed.code or RoundClosed.is_closure(e.details() or "")


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.agent_id = settings.agent_id
        self.device = pick_device() if settings.device == "auto" else torch.device(settings.device)
        if settings.cpu_threads:
            torch.set_num_threads(settings.cpu_threads)
        self.stop = threading.Event()
        self._tasks: dict[str, Task] = {}
        self._data: dict[str, Any] = {}
        self._heldout: dict[str, Any] = {}
        self._channels: dict[str, grpc.Channel] = {}
        tls = settings.tls
        self.identity: AgentIdentity | None = None
        if tls.insecure_plaintext:
            log.warning("gRPC is PLAINTEXT (tls.insecure_plaintext=true): for development only")
        else:
            if tls.ca_file is None:
                raise EnrollmentError("tls.ca_file is required (or tls.insecure_plaintext=true, for development only)")
            self.identity = AgentIdentity(
                tls.identity_dir, self.agent_id, tls.ca_file, tls.enroll_endpoint, tls.enrollment_token_file
            )
        # The certificate the channels present; replaced on renewal.
        self._tls: TlsIdentity | None = None
        self._renew_at = float("inf")
        self._scheduler: grpc.Channel | None = None
        self._agents: Any = None
        self._stream: Any = None
        # The last downloaded model's buffer, reused while the layout stays the same.
        self._buffer: FlatBuffer | None = None
        # Private tensors per run under partial averaging (FedPav): they never leave the site.
        self._private: dict[str, dict[str, torch.Tensor]] = {}
        # int8 compression: the rounding error of each tensor, per run, added to the next change.
        self._residuals: dict[str, dict[str, np.ndarray]] = {}
        self.rounds_done = 0
        # Each (run, round) is done once: a scheduler repeats assignments to agents that
        # (re)connect mid-round.
        self._handled: set[tuple[str, int]] = set()
        # The round being worked on (told with each heartbeat), and the reason it was cancelled
        # once a heartbeat's reply says so.
        self._current: tuple[str, int] | None = None
        self._cancelled: dict[tuple[str, int], str] = {}
        # The same for a round that closed without this agent's update (its work not needed).
        self._closed: dict[tuple[str, int], str] = {}
        self._reconnect = Reconnect(settings)
        self._budget = SiteBudget.of(settings, self.identity is not None)  # this site's own privacy budget
        # Uploads the aggregator confirmed; with an identity, kept beside it across restarts.
        self._confirmed = ConfirmedUploads(
            tls.identity_dir / CONFIRMED_FILE if self.identity is not None else None
        )
        self._transfers = Transfers(
            self.agent_id, self._channel, self._reconnect, self.stop, lambda: self._tls, self._confirmed,
            max_model_bytes=settings.max_model_bytes, provenance=functools.partial(provenance_of, data=settings.data),
        )

    def _task(self, name: str) -> tuple[Task, Any]:
        if name not in self._tasks:
            task = get_task(name)
            self._data[name] = task.load_site(self.settings.data)
            self._tasks[name] = task
        return self._tasks[name], self._data[name]

    def _heldout_of(self, name: str) -> Any:
        if name not in self._heldout:
            self._heldout[name] = self._task(name)[0].load_heldout(self.settings.data)
        return self._heldout[name]

    def _channel(self, endpoint: str) -> grpc.Channel:
        if endpoint not in self._channels:
            self._channels[endpoint] = channel(endpoint, self._tls)
        return self._channels[endpoint]

    def _connect(self) -> None:
        """(Re)builds the scheduler channel with the current certificate, enrolling (or
        renewing an expired certificate) first when there is none. Raises EnrollmentError,
        CallFailed."""
        if self._tls is not None and expired(self._tls):
            log.warning("this agent's certificate expired at %s (the scheduler was out of reach); renewing it",
                        time.ctime(self._tls.peer.not_after_unix))
            self._tls, self._scheduler, self._channels = None, None, {}
        if self.identity is not None and self._tls is None:
            self._tls = self.identity.ensure()
            self._renew_at = renew_after_unix(self._tls)
        if self._scheduler is None:
            self._scheduler = channel(self.settings.scheduler_endpoint, self._tls)
            self._agents = scheduler_pb2_grpc.AgentServiceStub(self._scheduler)

    def _renew_if_due(self) -> None:
        """Renews the certificate two thirds into its life; the channels are rebuilt with the
        new one (the assignment stream reconnects)."""
        scheduler = self._scheduler
        if self.identity is None or self._tls is None or scheduler is None or time.time() < self._renew_at:
            return
        try:
            fresh = self.identity.renew(scheduler, self._tls)
        except grpc.RpcError as e:
            log.warning("certificate renewal failed (%s: %s); retrying at the next heartbeat", e.code().name, e.details())
            return
        # Calls in flight finish on the old channels: the replaced certificate stays valid
        # until it expires or the next renewal.
        self._tls, self._renew_at = fresh, renew_after_unix(fresh)
        self._scheduler, self._channels = None, {}
        if self._stream is not None:
            self._stream.cancel()

    def register_request(self) -> scheduler_pb2.RegisterRequest:
        return scheduler_pb2.RegisterRequest(
            agent=scheduler_pb2.AgentInfo(
                agent_id=self.agent_id,
                labels=self.settings.labels,
                capabilities=capabilities(self.device),
                tasks=self.settings.tasks,
            ),
            protocol_version=PROTOCOL_VERSION,
        )

    def run(self) -> None:
        """Registers, heartbeats and serves assignments until ``stop`` is set, reconnecting
        with backoff whenever the scheduler is unreachable (each retry logged with the endpoint
        and why), waiting while an operator has disabled the agent. Raises ProtocolRefused
        when the control plane does not accept this agent's protocol, EnrollmentError when it
        has no usable identity and cannot get one without an operator."""
        for name in self.settings.tasks:
            self._task(name)  # load data once, before the first round, and fail early
        heartbeat = threading.Thread(target=self._heartbeat_loop, daemon=True, name="heartbeat")
        while not self.stop.is_set():
            try:
                self._connect()
                reply = self._agents.Register(self.register_request(), timeout=10)
                self._interval = reply.heartbeat_interval_s
                if not heartbeat.is_alive():
                    heartbeat.start()
                log.info("registered with %s (device %s, control plane protocol %d)",
                         self.settings.scheduler_endpoint, self.device, reply.protocol_version or 1)
                self._reconnect.connected()
                self._stream = self._agents.ReceiveAssignments(
                    scheduler_pb2.ReceiveAssignmentsRequest(agent_id=self.agent_id)
                )
                if self.stop.is_set():
                    # shutdown() ran before the stream existed: it could not cancel it. (It sets
                    # stop before it reads the stream, so one of the two always cancels it.)
                    self._stream.cancel()
                for event in self._stream:
                    if event.WhichOneof("event") == "assignment":
                        self._receive(event.assignment)
                    if self.stop.is_set():
                        break
            except (grpc.RpcError, CallFailed, AgentDisabledError) as e:
                if self.stop.is_set():
                    break
                if isinstance(e, grpc.RpcError) and e.code() == grpc.StatusCode.CANCELLED and self._scheduler is None:
                    continue  # the stream was closed for a renewed certificate
                if isinstance(e, grpc.RpcError) and e.code() == grpc.StatusCode.UNAUTHENTICATED and (
                    self.identity is not None
                ):
                    # Revoked (the agent was deleted) or replaced: only a new enrollment helps,
                    # with a new token in the token file; without one the agent exits.
                    log.error("the scheduler refused this agent's certificate: %s; enrolling again", e.details())
                    self.identity.discard()
                    self._tls, self._scheduler, self._channels = None, None, {}
                self.stop.wait(self._reconnect.wait_after(e, self._tls))

    def _heartbeat_loop(self) -> None:
        while not self.stop.wait(self._interval):
            self._renew_if_due()
            current = self._current
            try:
                if self._agents is not None:
                    reply = self._agents.Heartbeat(scheduler_pb2.HeartbeatRequest(
                        agent_id=self.agent_id, run_id=current[0] if current else "", round=current[1] if current else 0,
                    ), timeout=5)
                    if current is not None and reply.round_closed:
                        self._closed[current] = reply.reason or "the round closed"
                    elif current is not None and reply.round_cancelled:
                        self._cancelled[current] = reply.reason or "cancelled"
            except grpc.RpcError as e:
                log.debug("heartbeat failed: %s", e.code().name)

    def shutdown(self) -> None:
        self.stop.set()
        if self._stream is not None:
            self._stream.cancel()

    def _receive(self, msg: scheduler_pb2.Assignment) -> None:
        """The edge: an assignment from the stream in the round vocabulary, handled; one the
        vocabulary cannot read (a kind newer than this agent) is logged and skipped."""
        try:
            a = assignment_from_proto(msg)
        except InvalidArgument as e:
            log.error("assignment for round %d of %s skipped: %s", msg.round, msg.run_id, e.public)
            return
        self.handle(a)

    def handle(self, a: Assignment) -> None:
        """Does one assignment, once per (run, round); a failure abandons the round (logged
        and counted), it does not stop the agent."""
        key = (a.run_id, a.round)
        if key in self._confirmed:
            log.info("assignment for round %d of %s: its update was confirmed already", a.round, a.run_id)
            return
        if key in self._handled:
            log.debug("assignment for round %d of %s received again; done already", a.round, a.run_id)
            return
        self._handled.add(key)
        if not self._budget.admits(a):  # one more local release would pass the site's own limit
            return
        outcome = "abandoned"
        self._current = key
        with log_context(run_id=a.run_id, round=a.round, agent_id=self.agent_id):
            try:
                self._handle(a)
                self.rounds_done += 1
                outcome = "done"
            except RoundCancelledHere as e:
                outcome = "cancelled"
                log.info("round %d of %s was cancelled; its work stopped: %s", a.round, a.run_id, e)
            except RoundClosedHere as e:
                outcome = "not_needed"
                log.info("%s; this agent's work was not needed", e)
            except SecureAggregationFailed as e:
                log.error("round %d of %s abandoned: %s", a.round, a.run_id, e.public)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.FAILED_PRECONDITION and _is_closure(e):
                    outcome = "not_needed"
                    log.info("round %d of %s closed without this agent's update; its work was not needed (%s)",
                             a.round, a.run_id, e.details())
                elif e.code() == grpc.StatusCode.FAILED_PRECONDITION and RoundCancelled.is_cancellation(e.details() or ""):
                    outcome = "cancelled"
                    log.info("round %d of %s was cancelled; its work stopped: %s", a.round, a.run_id, e.details())
                else:
                    log.error("round abandoned: %s: %s", e.code().name, e.details())
            except Exception:
                log.exception("round abandoned")
            finally:
                self._current = None
                self._cancelled.pop(key, None)
                self._closed.pop(key, None)
                m.ROUNDS.labels(a.task, a.kind.value, outcome).inc()

    def _check_cancelled(self, a: Assignment) -> None:
        """Raises RoundCancelledHere once a heartbeat's reply said the round was cancelled,
        RoundClosedHere once it said the round closed without this agent's update."""
        reason = self._cancelled.get((a.run_id, a.round))
        if reason is not None:
            raise RoundCancelledHere(reason)
        reason = self._closed.get((a.run_id, a.round))
        if reason is not None:
            raise RoundClosedHere(reason)

    def _handle(self, a: Assignment) -> None:
        task, data = self._task(a.task)
        chunk_bytes = a.chunk_bytes or self.settings.chunks.chunk_bytes
        if a.kind is RoundKind.INIT:
            model = task.build_model(a.training.seed)
            state = self._outgoing(task, a, model)
            layout = layout_of(state)
            log.info("uploading initial model: %d tensors, %d bytes", len(layout.tensors), layout.total_bytes)
            self._upload(a, layout, lambda: buffers_of(layout, state), 0, {}, chunk_bytes)
            return
        secure = SecureTraining.start(self._channel, a, self.agent_id, self._tls)  # None: a plain upload
        started = time.perf_counter()
        base = self._download(a, chunk_bytes)
        self._check_cancelled(a)
        self._buffer = base.buffer
        download_s = time.perf_counter() - started
        log.info("downloaded %s: %d bytes in %.2f s", base.version, base.layout.total_bytes, download_s)
        if a.training.no_op and a.kind is RoundKind.TRAIN:
            examples, metrics = reported(a.training, task.num_examples(data), {"download_seconds": download_s})
            self._upload_unchanged(a, base, examples, metrics, chunk_bytes, secure)
            return
        model = task.build_model(a.training.seed)
        incoming = state_of(base.buffer)
        if a.kind is RoundKind.EVALUATE:
            self._load(task, a, model, incoming)
            del base, incoming
            self._evaluate(task, a, model, download_s, chunk_bytes)
            return
        self._load(task, a, model, incoming)
        compression = a.training.compression
        keep = compression == "int8" or a.training.upload_delta or is_private(a.training)
        global_floats = {k: v.clone() for k, v in incoming.items() if v.is_floating_point()} if keep else {}
        del base, incoming
        result = self._train(task, a, model, data)
        state = self._outgoing(task, a, model)
        examples, metrics = reported(a.training, result.num_examples, {**result.metrics, "download_seconds": download_s})
        if secure is not None:  # the masked change travels instead (fedstream_agent.secagg)
            upload = functools.partial(self._upload, a, metrics=metrics, chunk_bytes=chunk_bytes)
            return secure.upload(state, global_floats, examples, upload)
        if is_private(a.training):  # the change travels, clipped (and noised) under privacy
            state = privatize(a.training, state, global_floats)
        elif a.training.upload_delta:  # a buffered asynchronous run: the change from the base travels
            state = as_changes(state, global_floats)
        state = self._compress(a, state, compression, global_floats)
        layout = layout_of(state)
        log.info("trained: %d examples, loss %.4f", result.num_examples, result.metrics.get("train_loss", float("nan")))
        self._upload(a, layout, lambda: buffers_of(layout, state), examples, metrics, chunk_bytes)

    def _train(self, task: Task, a: Assignment, model: torch.nn.Module, data: Any) -> TrainResult:
        """Local training, stopped at the next batch once the round's work is over; with the
        slowdown setting (tests, benchmarks) it then waits until it took that many times longer."""
        params = TrainParams(
            local_epochs=a.training.local_epochs,
            batch_size=a.training.batch_size,
            learning_rate=a.training.learning_rate,
            seed=zlib.crc32(f"{a.training.seed}:{a.round}:{self.agent_id}".encode()),
            proximal_mu=a.training.proximal_mu,
            mixed_precision=self.settings.mixed_precision,
            stop=lambda: self._check_cancelled(a),
        )
        started = time.perf_counter()
        result = task.train(model, data, params, self.device)
        if self.settings.slowdown > 1:
            waited = stretch(time.perf_counter() - started, self.settings.slowdown, lambda: self._check_cancelled(a),
                             self.stop)
            log.info("training slowed down %gx (slowdown setting): waited %.2f s more", self.settings.slowdown, waited)
        m.TRAIN_SECONDS.labels(a.task).observe(result.metrics.get("train_seconds", 0.0))
        m.SAMPLES.labels(a.task).inc(result.metrics.get("examples_seen", 0.0))
        return result

    def _upload_unchanged(
        self, a: Assignment, base: DownloadedModel, examples: int, metrics: dict[str, float], chunk_bytes: int,
        secure: SecureTraining | None,
    ) -> None:
        """A no-op round's upload: the base model as it came, or no change from it (masked
        under secure aggregation, like any change)."""
        buf = base.buffer
        if secure is not None:
            unchanged = state_of(buf)
            upload = functools.partial(self._upload, a, metrics=metrics, chunk_bytes=chunk_bytes)
            return secure.upload(unchanged, unchanged, examples, upload)
        if a.training.upload_delta or is_private(a.training):
            unchanged = state_of(buf)
            state = (private_changes if is_private(a.training) else as_changes)(unchanged, unchanged)
            layout = layout_of(state)
            self._upload(a, layout, lambda: buffers_of(layout, state), examples, metrics, chunk_bytes)
            return
        views = lambda: (memoryview(buf.data)[t.offset : t.end] for t in buf.layout.tensors)  # noqa: E731
        self._upload(a, buf.layout, views, examples, metrics, chunk_bytes)

    def _load(self, task: Task, a: Assignment, model: torch.nn.Module, incoming: dict[str, torch.Tensor]) -> None:
        """Loads the global model; under partial averaging, with this site's private tensors."""
        if a.training.shared_only:
            # The global model holds the shared tensors; this site's private ones come from
            # its own previous round of the run (or the fresh model in its first).
            incoming = {**self._private.get(a.run_id, {}), **incoming}
            missing, unexpected = model.load_state_dict(incoming, strict=False)
            if unexpected or any(task.is_shared(n) for n in missing):
                raise ValueError(f"global model does not fit task {a.task!r}: missing {missing}, unexpected {unexpected}")
        else:
            model.load_state_dict(incoming)

    def _evaluate(
        self, task: Task, a: Assignment, model: torch.nn.Module, download_s: float, chunk_bytes: int
    ) -> None:
        """Federated evaluation: the task's metrics of the version on this site's held-out
        data, reported with an empty layout (no tensor leaves the site)."""
        heldout = self._heldout_of(a.task)
        started = time.perf_counter()
        metrics = task.evaluate(model, heldout, self.device)
        examples = int(metrics.pop("examples")) if "examples" in metrics else task.num_examples(heldout)
        metrics.update(eval_seconds=time.perf_counter() - started, download_seconds=download_s)
        log.info("evaluated %s on %d held-out examples: %s", a.base_version, examples,
                 ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))
        self._upload(a, Layout(()), lambda: iter(()), examples, metrics, chunk_bytes)

    def _outgoing(self, task: Task, a: Assignment, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """What leaves the site: the whole model, or under partial averaging only its shared
        tensors, the private ones being kept here for the run's next round."""
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        if not a.training.shared_only:
            return state
        self._private[a.run_id] = {k: v.clone() for k, v in state.items() if not task.is_shared(k)}
        return {k: v for k, v in state.items() if task.is_shared(k)}

    def _compress(
        self,
        a: Assignment,
        state: dict[str, torch.Tensor],
        mode: str,
        global_floats: dict[str, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """The update as it travels (fedstream.compression): floating tensors narrowed, or their
        change from the global model in int8 with this site's rounding error carried over."""
        if mode == "none":
            return state
        if mode in ("float16", "bfloat16"):
            dtype = torch.float16 if mode == "float16" else torch.bfloat16
            return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        residuals = self._residuals.setdefault(a.run_id, {})
        out: dict[str, torch.Tensor] = {}
        for name, value in state.items():
            if not value.is_floating_point():
                out[name] = value
                continue
            delta = (value.float() - global_floats[name].float()).numpy()
            q, scale, residuals[name] = quantize_with_feedback(delta, residuals.get(name))
            out[name] = torch.from_numpy(q)
            out[name + SCALE_SUFFIX] = torch.tensor(float(scale), dtype=torch.float32)
        return out

    def _download(self, a: Assignment, chunk_bytes: int) -> DownloadedModel:
        """See ``Transfers.download``."""
        return self._transfers.download(a, chunk_bytes, self._buffer)

    def _upload(
        self,
        a: Assignment,
        layout: Layout,
        buffers: Callable[[], Iterable[memoryview]],
        num_examples: int,
        metrics: dict[str, float],
        chunk_bytes: int,
    ) -> None:
        """See ``Transfers.upload``: done once the aggregator confirms the update counted."""
        self._budget.release(a)  # recorded before a locally noised change leaves the site
        self._transfers.upload(a, layout, buffers, num_examples, metrics, chunk_bytes, lambda: self._check_cancelled(a))

