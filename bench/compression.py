"""Update compression on the digits federation: bytes uploaded per round and final held-out
accuracy for each mode, at a fixed seed, against float32 (3 agents, 5 rounds, 2 local epochs,
FedAvg), the services as separate processes.

Usage: python bench/compression.py       (part of make bench)
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

from fedstream.memtune import tune_allocator
from fedstream.transfer import download_model
from fedstream.v1 import round_pb2, scheduler_pb2, scheduler_pb2_grpc
from fedstream_tasks import get_task
from fedstream_tasks.base import SiteDataSettings, pick_device
from fedstream_tasks.torchio import state_of
from fedstream_testing.local import LocalFederation

MODES = ("none", "float16", "bfloat16", "int8")
AGENTS, ROUNDS, SEED = 3, 5, 0


def run_mode(mode: str) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp, LocalFederation(Path(tmp)) as fed:
        agg = fed.start_aggregator({"LOG__LEVEL": "WARNING"})
        sched = fed.start_scheduler(agg, {"LOG__LEVEL": "WARNING", "HEARTBEAT_INTERVAL_S": "0.5"})
        for i in range(AGENTS):
            fed.start_agent(f"site-{i}", sched, i, AGENTS, {"CPU_THREADS": "1", "DEVICE": "cpu", "LOG__LEVEL": "WARNING"})
        runs = scheduler_pb2_grpc.RunServiceStub(fed.channel(sched))
        run = runs.StartRun(scheduler_pb2.StartRunRequest(spec=scheduler_pb2.RunSpec(
            task="digits", rounds=ROUNDS, min_agents=AGENTS, round_timeout_s=120, wait_for_agents_s=120,
            training=round_pb2.TrainingConfig(local_epochs=2, batch_size=32, learning_rate=0.05, seed=SEED,
                                              compression=mode),
        )), timeout=10)
        final = None
        for update in runs.WatchRun(scheduler_pb2.GetRunRequest(run_id=run.run_id)):
            fed.check_alive()
            final = update
        assert final is not None and final.state == scheduler_pb2.RUN_STATE_SUCCEEDED, final
        per_round = [sum(r.bytes_received for r in rnd.reports) for rnd in final.rounds
                     if rnd.kind == round_pb2.ROUND_KIND_TRAIN]
        task = get_task("digits")
        model = task.build_model(0)
        model.load_state_dict(state_of(download_model(fed.channel(agg), run.run_id).buffer))
        heldout = task.load_heldout(SiteDataSettings(num_sites=AGENTS, partition_seed=SEED))
        accuracy = task.evaluate(model, heldout, pick_device())["accuracy"]
    return statistics.mean(per_round), accuracy


def main() -> int:
    tune_allocator()
    print("compression on the digits federation (3 agents, 5 rounds, seed 0); reproduce with: "
          ".venv/bin/python bench/compression.py")
    base_bytes = None
    for mode in MODES:
        sent, accuracy = run_mode(mode)
        base_bytes = base_bytes or sent
        print(f"compression {mode:9s}: {sent / 1000:7.1f} kB uploaded per round "
              f"({sent / base_bytes:5.1%} of float32), final held-out accuracy {accuracy:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
