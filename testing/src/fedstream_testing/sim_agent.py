"""A lightweight agent that speaks the real protocol without PyTorch: for tests and benchmarks.

It registers, heartbeats, receives assignments on its stream (read into the round vocabulary
of ``fedstream.rounds``, as the real agent does), downloads the base model and uploads an update
computed by a function of (base arrays, assignment), or a random model for init rounds. As the
real agent does, it uploads the change from the base when the assignment says so (an
asynchronous run's ``upload_delta``), and stops work that is no longer needed without an error:
when a heartbeat reply says its round closed (or was cancelled), or an upload is refused because
the round closed (``round_closed``). ``work_s`` simulates the time its training takes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import grpc
import numpy as np

from fedstream.aggregation import from_accumulator, to_accumulator
from fedstream.convert import assignment_from_proto
from fedstream.errors import InvalidArgument, RoundClosed
from fedstream.grpcutil import channel, error_code_of
from fedstream.pki import TlsIdentity
from fedstream.provenance import Provenance
from fedstream.rounds import Assignment, RoundKind
from fedstream.tensors import FlatBuffer
from fedstream.transfer import download_model, upload_update
from fedstream.v1 import scheduler_pb2, scheduler_pb2_grpc
from fedstream_testing.helpers import buffers_of, layout_of, random_model

UpdateFn = Callable[[FlatBuffer, Assignment], FlatBuffer]


def echo(base: FlatBuffer, _: Assignment) -> FlatBuffer:
    return base


class SimAgent:
    def __init__(self, agent_id: str, scheduler: str, *, examples: int = 10, update: UpdateFn = echo,
                 tasks: tuple[str, ...] = ("digits",), init_seed: int = 0,
                 init: Callable[[Assignment], dict[str, tuple[str, np.ndarray]]] | None = None,
                 identity: TlsIdentity | None = None, metrics: dict[str, float] | None = None,
                 work_s: float = 0.0, provenance: Provenance | None = None) -> None:
        self.agent_id = agent_id
        # What its updates say of the agent (versions, data fingerprint); nothing by default.
        self.provenance = provenance
        # What each of its updates reports.
        self.metrics = {"train_loss": 1.0} if metrics is None else metrics
        # Mutual TLS as this identity (LocalFederation.enroll); plaintext without.
        self.identity = identity
        # The initial model it uploads when chosen for an init round: random_model by default.
        self.init = init
        self.examples = examples
        self.update = update
        self.tasks = tasks
        self.init_seed = init_seed
        # Seconds each training assignment takes before its upload (stopped early when the
        # scheduler says the round no longer needs it).
        self.work_s = work_s
        self._channel = channel(scheduler, identity)
        self._stub = scheduler_pb2_grpc.AgentServiceStub(self._channel)
        self._stop = threading.Event()
        self._stream: grpc.Call | None = None
        self.done: list[tuple[str, int]] = []
        self.assignments: list[Assignment] = []
        self.errors: list[str] = []
        # (run, round, how) of work stopped as not needed: "heartbeat" (the reply said the round
        # closed or was cancelled) or "refused" (the upload was refused: the round had closed).
        self.not_needed: list[tuple[str, int, str]] = []
        self._current: tuple[str, int] | None = None
        self._ended = threading.Event()  # set by a heartbeat reply: the current work is over
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"sim-{agent_id}")

    def start(self) -> SimAgent:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._stream is not None:
            self._stream.cancel()
        if self._thread.ident is not None:
            self._thread.join(timeout=10)
        self._channel.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                reply = self._stub.Register(scheduler_pb2.RegisterRequest(agent=scheduler_pb2.AgentInfo(
                    agent_id=self.agent_id, tasks=list(self.tasks),
                    capabilities=scheduler_pb2.Capabilities(device="cpu"))), timeout=5)
                threading.Thread(target=self._heartbeat, args=(reply.heartbeat_interval_s,), daemon=True).start()
                self._stream = stream = self._stub.ReceiveAssignments(
                    scheduler_pb2.ReceiveAssignmentsRequest(agent_id=self.agent_id))
                for event in stream:
                    if event.WhichOneof("event") == "assignment":
                        self._receive(event.assignment)
            except grpc.RpcError as e:
                if self._stop.is_set():
                    return
                self.errors.append(f"stream: {e.code().name}")
            self._stop.wait(0.2)

    def _heartbeat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            current = self._current
            try:
                reply = self._stub.Heartbeat(scheduler_pb2.HeartbeatRequest(
                    agent_id=self.agent_id, run_id=current[0] if current else "", round=current[1] if current else 0,
                ), timeout=5)
            except grpc.RpcError:
                continue
            if current is not None and current == self._current and (reply.round_closed or reply.round_cancelled):
                self._ended.set()

    def _receive(self, msg: scheduler_pb2.Assignment) -> None:
        """An assignment of a kind the vocabulary does not know is recorded as an error and skipped."""
        try:
            a = assignment_from_proto(msg)
        except InvalidArgument as e:
            self.errors.append(f"round {msg.round}: {e.public}")
            return
        self._handle(a)

    def _handle(self, a: Assignment) -> None:
        self.assignments.append(a)
        self._current, key = (a.run_id, a.round), (a.run_id, a.round)
        self._ended.clear()
        ch = channel(a.upload_endpoint, self.identity)
        try:
            if a.kind is RoundKind.INIT:
                model = self.init(a) if self.init is not None else random_model(self.init_seed)
                layout = layout_of(model)
                buffers = buffers_of(layout, model)
            else:
                base = download_model(ch, a.run_id, a.base_version)
                out = self.update(base.buffer, a)
                if a.training.upload_delta:  # an asynchronous run: the change from the base travels
                    out = changes(out, base.buffer)
                layout = out.layout
                buffers = [memoryview(out.data)[t.offset : t.end] for t in layout.tensors]
                if self._ended.wait(self.work_s) if self.work_s > 0 else self._ended.is_set():
                    self.not_needed.append((*key, "heartbeat"))
                    return
            upload_update(
                ch,
                timeout=max(1.0, a.deadline_unix - time.time()),
                run_id=a.run_id, round_=a.round, agent_id=self.agent_id, layout=layout,
                buffers=buffers, num_examples=self.examples, metrics=self.metrics, provenance=self.provenance,
            )
            self.done.append(key)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.FAILED_PRECONDITION and (
                error_code_of(e) == RoundClosed.code or RoundClosed.is_closure(e.details() or "")
            ):
                self.not_needed.append((*key, "refused"))
            else:
                self.errors.append(f"round {a.round}: {e.code().name}: {e.details()}")
        finally:
            self._current = None
            ch.close()


def changes(out: FlatBuffer, base: FlatBuffer) -> FlatBuffer:
    """``out`` as changes from ``base``: each floating tensor minus the base's (computed in
    float32 or wider, stored in its own dtype), other tensors as they are; what an agent uploads
    in an asynchronous run."""
    delta = FlatBuffer(out.layout)
    delta.data[:] = out.data
    before, views = base.arrays(), delta.arrays()
    for t in out.layout.tensors:
        if t.dt.is_float and t.numel:
            arr = views[t.name]
            arr[...] = from_accumulator(t.dt, to_accumulator(t.dt, arr) - to_accumulator(t.dt, before[t.name]))
    return delta


def add_constant(value: float) -> UpdateFn:
    """An update that adds ``value`` to every float32 tensor of the base."""

    def fn(base: FlatBuffer, _: Assignment) -> FlatBuffer:
        out = FlatBuffer(base.layout)
        out.data[:] = base.data
        for _name, arr in out.arrays().items():
            if arr.dtype == np.float32:
                arr += np.float32(value)
        return out

    return fn
