"""A lightweight agent that speaks the real protocol without PyTorch: for tests and benchmarks.

It registers, heartbeats, receives assignments on its stream (read into the round vocabulary
of ``fedstream.rounds``, as the real agent does), downloads the base model and uploads an update
computed by a function of (base arrays, assignment), or a random model for init rounds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import grpc
import numpy as np

from fedstream.convert import assignment_from_proto
from fedstream.errors import InvalidArgument
from fedstream.grpcutil import channel
from fedstream.pki import TlsIdentity
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
                 identity: TlsIdentity | None = None, metrics: dict[str, float] | None = None) -> None:
        self.agent_id = agent_id
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
        self._channel = channel(scheduler, identity)
        self._stub = scheduler_pb2_grpc.AgentServiceStub(self._channel)
        self._stop = threading.Event()
        self._stream: grpc.Call | None = None
        self.done: list[tuple[str, int]] = []
        self.assignments: list[Assignment] = []
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"sim-{agent_id}")

    def start(self) -> SimAgent:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._stream is not None:
            self._stream.cancel()
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
            try:
                self._stub.Heartbeat(scheduler_pb2.HeartbeatRequest(agent_id=self.agent_id), timeout=5)
            except grpc.RpcError:
                pass

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
        ch = channel(a.upload_endpoint, self.identity)
        try:
            if a.kind is RoundKind.INIT:
                model = self.init(a) if self.init is not None else random_model(self.init_seed)
                layout = layout_of(model)
                buffers = buffers_of(layout, model)
            else:
                base = download_model(ch, a.run_id, a.base_version)
                out = self.update(base.buffer, a)
                layout = out.layout
                buffers = [memoryview(out.data)[t.offset : t.end] for t in layout.tensors]
            upload_update(
                ch,
                timeout=max(1.0, a.deadline_unix - time.time()),
                run_id=a.run_id, round_=a.round, agent_id=self.agent_id, layout=layout,
                buffers=buffers, num_examples=self.examples, metrics=self.metrics,
            )
            self.done.append((a.run_id, a.round))
        except grpc.RpcError as e:
            self.errors.append(f"round {a.round}: {e.code().name}: {e.details()}")
        finally:
            ch.close()


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
