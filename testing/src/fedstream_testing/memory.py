"""The aggregator's resident memory, measured on a separate process: once requests are over
(idle, after a round of large uploads commits, and after a burst of refused and abandoned
uploads), shared by the end-to-end test and the benchmark (bench/run.py settle); and its peak
while agents upload into an asynchronous run's buffers (``buffered_peak``)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import psutil

from fedstream import wire
from fedstream.convert import buffer_to_proto
from fedstream.grpcutil import channel
from fedstream.staleness import BufferSpec, StalenessFunction
from fedstream.tensors import Layout
from fedstream.transfer import update_requests, upload_call, upload_update
from fedstream.v1 import aggregator_pb2 as pb
from fedstream.v1 import aggregator_pb2_grpc as pb_grpc
from fedstream.v1 import round_pb2
from fedstream_testing.benchmodels import start_simulated_aggregator, store_model
from fedstream_testing.local import LocalFederation

RUN = "mem"
# Resident memory counts as settled when it moves less than this between two looks.
STEADY_BYTES = 4 << 20


def model_of(size: int, tensor_bytes: int = 4 << 20) -> tuple[Layout, list[np.ndarray]]:
    n = max(1, size // tensor_bytes)
    elems = size // n // 4
    rng = np.random.default_rng(0)
    layout = Layout.build((f"layer{i}.weight", "float32", (elems,)) for i in range(n))
    return layout, [rng.standard_normal(elems, dtype=np.float32) for _ in range(n)]


def settled_rss(proc: psutil.Process, timeout: float = 15.0) -> int:
    """The process's resident bytes once they stop moving (or at ``timeout``)."""
    last, end = int(proc.memory_info().rss), time.monotonic() + timeout
    while time.monotonic() < end:
        time.sleep(0.5)
        now = int(proc.memory_info().rss)
        if abs(now - last) < STEADY_BYTES:
            return now
        last = now
    return last


def memory_after(workdir: Path, agents: int, size: int) -> dict[str, int]:
    """Resident bytes of a fresh aggregator: ``idle``, after a committed ``round`` of ``agents``
    uploads of a ``size``-byte model, and after a ``burst`` of refused and abandoned uploads."""
    layout, arrays = model_of(size)
    procs = LocalFederation(workdir)
    try:
        store_model(workdir / "models", f"{RUN}/000000", layout, arrays)
        addr, pid = start_simulated_aggregator(procs)
        proc = psutil.Process(pid)
        idle = settled_rss(proc)
        names = [f"agent-{i}" for i in range(agents)]
        _round(procs, addr, names, layout, arrays)
        after_round = settled_rss(proc)
        _burst(procs, addr, names, layout, arrays)
        after_burst = settled_rss(proc)
    finally:
        procs.stop()
    return {"idle": idle, "round": after_round, "burst": after_burst, "model": layout.total_bytes}


def _open(procs: LocalFederation, addr: str, names: list[str], round_: int) -> pb_grpc.AggregatorControlStub:
    control = pb_grpc.AggregatorControlStub(channel(addr, procs.identity("service", "bench")))
    control.OpenRound(pb.RoundPlan(
        run_id=RUN, round=round_, kind=round_pb2.ROUND_KIND_TRAIN, base_version=f"{RUN}/000000",
        participants=names, min_updates=len(names), deadline_unix=time.time() + 600,
    ), timeout=60)
    return control


def _round(procs: LocalFederation, addr: str, names: list[str], layout: Layout, arrays: list[np.ndarray]) -> None:
    control = _open(procs, addr, names, 1)

    def send(agent: str) -> None:
        upload_update(channel(addr, procs.identity("agent", agent)), timeout=600, run_id=RUN, round_=1,
                      agent_id=agent, layout=layout, buffers=[a.data for a in arrays],
                      num_examples=10, metrics={})

    threads = [threading.Thread(target=send, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for _ in control.WatchRound(pb.WatchRoundRequest(run_id=RUN, round=1), timeout=600):
        pass


def _requests(
    agent: str, round_: int, layout: Layout, arrays: list[np.ndarray], stop: threading.Event
) -> Iterator[pb.UploadUpdateRequest | wire.ChunkFrame]:
    """An upload's requests: all of them, or, once ``stop`` is set, nothing more."""
    requests = update_requests(run_id=RUN, round_=round_, agent_id=agent, layout=layout,
                               buffers=[a.data for a in arrays], num_examples=10, metrics={})
    for msg in requests:
        if stop.is_set():
            return
        yield msg


def _burst(procs: LocalFederation, addr: str, names: list[str], layout: Layout, arrays: list[np.ndarray]) -> None:
    """Uploads to the committed round (refused), then uploads to an open one cut off halfway."""
    _open(procs, addr, names, 2)
    never = threading.Event()
    for agent, _ in itertools.product(names, range(4)):
        try:
            upload_call(channel(addr, procs.identity("agent", agent)))(
                _requests(agent, 1, layout, arrays, never), timeout=60)
        except grpc.RpcError:
            pass
    stop = threading.Event()
    calls = [upload_call(channel(addr, procs.identity("agent", n))).future(
        _requests(n, 2, layout, arrays, stop), timeout=600) for n in names]
    time.sleep(2.0)  # well into each upload, which is then abandoned
    for call in calls:
        call.cancel()
    stop.set()


def vm_hwm(pid: int) -> int:
    """The process's peak resident bytes (VmHWM) since it started or its counter was reset."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def buffered_peak(workdir: Path, agents: int, updates: int, size: int, buffer_size: int = 2) -> dict[str, int]:
    """Resident bytes of a fresh aggregator: ``idle``, and its ``peak`` (VmHWM, reset once idle)
    while ``agents`` upload ``updates`` changes of a ``size``-byte model in all, at once, into an
    asynchronous run's buffers of ``buffer_size`` (opened here one after another, as the
    scheduler does), until every update has counted."""
    layout, arrays = model_of(size)
    procs = LocalFederation(workdir)
    try:
        store_model(workdir / "models", f"{RUN}/000000", layout, arrays)
        addr, pid = start_simulated_aggregator(procs)
        idle = settled_rss(psutil.Process(pid))
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM from here: the buffers alone
        names = [f"agent-{i}" for i in range(agents)]
        _buffers(procs, addr, names, updates, buffer_size, layout, arrays)
        peak = vm_hwm(pid)
    finally:
        procs.stop()
    return {"idle": idle, "peak": peak, "model": layout.total_bytes}


def _buffers(procs: LocalFederation, addr: str, names: list[str], updates: int, buffer_size: int,
             layout: Layout, arrays: list[np.ndarray]) -> None:
    """Opens buffer after buffer while the agents' threads upload ``updates`` in all, each
    assigned in the buffer open when it starts and, as the scheduler does, never twice in the
    same buffer, until the last buffer commits."""
    control = pb_grpc.AggregatorControlStub(channel(addr, procs.identity("service", "bench")))
    buffers = updates // buffer_size
    spec = buffer_to_proto(BufferSpec(buffer_size, len(names), StalenessFunction.CONSTANT, max_staleness=buffers))
    current, opened = [0], threading.Condition()
    share = [updates // len(names) + (i < updates % len(names)) for i in range(len(names))]

    def open_buffer(round_: int, base: str) -> None:
        control.OpenRound(pb.RoundPlan(
            run_id=RUN, round=round_, kind=round_pb2.ROUND_KIND_TRAIN, base_version=base, participants=names,
            min_updates=1, deadline_unix=time.time() + 120, buffer=spec,
        ), timeout=60)
        with opened:
            current[0] = round_
            opened.notify_all()

    def newer_than(assigned: int) -> int:
        with opened:
            opened.wait_for(lambda: current[0] > assigned, timeout=120)
            return current[0]

    def agent(name: str, n: int) -> None:
        ch, assigned = channel(addr, procs.identity("agent", name)), 0
        for _ in range(n):
            assigned = newer_than(assigned)
            upload_update(ch, timeout=120, run_id=RUN, round_=assigned, agent_id=name, layout=layout,
                          buffers=[a.data for a in arrays], num_examples=10, metrics={})

    threads = [threading.Thread(target=agent, args=(n, k), daemon=True) for n, k in zip(names, share, strict=True)]
    for t in threads:
        t.start()
    open_buffer(1, f"{RUN}/000000")
    for round_ in range(1, buffers + 1):
        events = list(control.WatchRound(pb.WatchRoundRequest(run_id=RUN, round=round_), timeout=150))
        last_event = events[-1] if events else None
        assert last_event is not None and last_event.state == round_pb2.ROUND_STATE_COMMITTED, last_event
        if round_ < buffers:
            open_buffer(round_ + 1, last_event.version)
    for t in threads:
        t.join(timeout=60)
