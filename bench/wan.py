"""fedstream over emulated WAN links. Prints each figure with the command that reproduces it.

The scheduler and the aggregator run as processes in this network namespace, as deployed;
each agent (the real fedstream-agent, so that its retries and resumes are what is measured)
runs in a network namespace of its own, joined to this one by a veth pair whose two ends the
kernel's token bucket filter (tbf) limits to the link's rate. A delaying relay in this
namespace (fedstream_testing.wan_relay: the kernel's delay queue, netem, is not available
everywhere) holds each direction's bytes for half the round-trip time; every connection an
agent makes (enrollment, scheduler, aggregator) goes through it. Rounds are no-op rounds
(agents download the global model and upload it back), so only the transport is measured.

For each link, one run of ROUNDS rounds:
  echo RTT     TCP round trip through the link and the relay (median of 10): the added latency
  round        median round time (rounds 2.. when there are several) against the time the
               model's bytes need at the link's rate (download + upload, every agent on its own
               link), and the share of the link that makes
  goodput      each transfer's model bytes over the time the link carried them (the span of 98%
               of its bytes at the relay), as a share of the link's rate: download and upload
  re-sent      bytes that crossed the link beyond what the counted updates needed (uploads) and
               the downloads they followed, per cut: what a cut costs (links with /cutN)

Links are RATE_MBIT/RTT_MS[/cutSECONDS]. With several --windows (the aggregator's HTTP/2
flow-control window per stream, grpc.stream_window_bytes, in KiB), the first runs every link
and the --window-links, the others the --window-links only.

Needs root (network namespaces, tc); without, it prints why and exits 0.
Usage: python bench/wan.py [--agents 2] [--model-mb 100] [--rounds 3]
       [--links 100/40,20/150,100/40/cut12] [--windows 4096,256] [--window-links 100/150] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from run import MB, make_model, store_model

from fedstream.v1 import round_pb2, scheduler_pb2
from fedstream_testing.local import LocalFederation
from fedstream_testing.wan_links import LinkShape, Sites, sweep_stale, unavailable
from fedstream_testing.wan_relay import BIN_S, DOWN, UP, DelayRelay

SEED = "seed/000000"
AGG = "aggregator"


def echo_rtt_ms(sites: Sites, port: int) -> float:
    """Median TCP round trip (ms) from site 0 to the relay's echo route."""
    done = subprocess.run(
        [*sites.exec_prefix(0), sys.executable, "-m", "fedstream_testing.wan_relay", "echo", sites.host_ip, str(port)],
        capture_output=True, text=True, timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"echo through the link failed: {done.stderr.strip()[-500:]}")
    return 1000 * statistics.median(json.loads(done.stdout))


def busy_goodput(bins: dict[int, int], start: float, end: float, payload: int) -> float | None:
    """``payload`` bytes over the span in which the link carried 98% of the bytes counted
    between ``start`` and ``end`` (bytes/s); None when nothing moved."""
    inside = sorted((b, n) for b, n in bins.items() if start / BIN_S - 1 <= b <= end / BIN_S + 1)
    total = sum(n for _, n in inside)
    if total < payload // 2:
        return None
    seen, first, last = 0, None, None
    for b, n in inside:
        seen += n
        if first is None and seen >= 0.01 * total:
            first = b
        if last is None and seen >= 0.99 * total:
            last = b
    assert first is not None and last is not None
    return 0.98 * payload / max(BIN_S, (last - first + 1) * BIN_S)


def wire_bytes(traffic: dict[tuple[str, str, str], dict[int, int]], direction: str, since: float) -> int:
    return sum(n for (route, _, d), bins in traffic.items() if route == AGG and d == direction
               for b, n in bins.items() if b >= since / BIN_S)


class Bench:
    """One federation (one window size) over the sites, run over links one after another."""

    def __init__(self, args: argparse.Namespace, sites: Sites, relay: DelayRelay, echo_port: int) -> None:
        self.args, self.sites, self.relay, self.echo_port = args, sites, relay, echo_port
        self.model_bytes = args.model_mb * MB
        # Wire bytes per model byte on a link without cuts (TLS, HTTP/2 and chunk framing).
        self.overhead = {UP: 1.0, DOWN: 1.0}

    def start(self, fed: LocalFederation, window: int) -> str:
        layout, arrays = make_model(self.model_bytes)
        store_model(fed.workdir / "models", SEED, layout, arrays)
        self.model_bytes = layout.total_bytes
        host = self.sites.host_ip
        common = {"LOG__LEVEL": "WARNING", "GRPC__STREAM_WINDOW_BYTES": str(window),
                  "TLS__SERVER_NAMES": json.dumps(["localhost", "127.0.0.1", host])}
        agg = fed.start_aggregator(common)
        agg_port = self.relay.route(host, agg, AGG)
        sched = fed.start_scheduler(agg, {**common, "AGGREGATOR_PUBLIC_ENDPOINT": f"{host}:{agg_port}"})
        sched_port = self.relay.route(host, sched, "scheduler")
        enroll_port = self.relay.route(host, fed.enroll_endpoint(sched), "enroll")
        for i in range(self.sites.count):
            fed.start_agent(f"wan-{i}", sched, i, self.sites.count, {
                "SCHEDULER_ENDPOINT": f"{host}:{sched_port}", "TLS__ENROLL_ENDPOINT": f"{host}:{enroll_port}",
                "DEVICE": "cpu", "LOG__LEVEL": "WARNING",
            }, wrap=self.sites.exec_prefix(i))
        return sched

    def over(self, fed: LocalFederation, sched: str, link: LinkShape, window: int) -> dict[str, Any]:
        self.sites.shape(link)
        self.relay.delay_s = link.rtt_ms / 2000
        rtt = echo_rtt_ms(self.sites, self.echo_port)
        ideal = 2 * self.model_bytes / link.bytes_per_s
        spec = scheduler_pb2.RunSpec(
            task="digits", rounds=self.args.rounds, min_agents=self.sites.count, max_agents=self.sites.count,
            round_timeout_s=int(60 + 20 * ideal), initial_version=SEED, wait_for_agents_s=300,
            training=round_pb2.TrainingConfig(no_op=True))
        cuts0, since = self.relay.cuts, time.time()
        self.relay.cut_every(link.cut_every_s)
        try:
            run = fed.run(sched, spec, f"wan-{link.spec.replace('/', '-')}-w{window >> 10}", link.label)
        finally:
            self.relay.cut_every(None)
        return self.figures(link, window, run, rtt, ideal, since, self.relay.cuts - cuts0)

    def figures(self, link: LinkShape, window: int, run: Any, rtt: float, ideal: float, since: float,
                cuts: int) -> dict[str, Any]:
        train = [r for r in run.rounds if r.kind == round_pb2.ROUND_KIND_TRAIN]
        done = [r for r in train if r.state == round_pb2.ROUND_STATE_COMMITTED]
        times = [r.finished_unix - r.started_unix for r in done]
        steady = times[1:] if len(times) > 1 else times
        traffic = self.relay.traffic()
        updates = sum(len(r.reports) for r in done)
        goodput: dict[str, list[float]] = {UP: [], DOWN: []}
        for r in done:
            for (route, _, d), bins in traffic.items():
                g = busy_goodput(bins, r.started_unix, r.finished_unix, self.model_bytes) if route == AGG else None
                if g is not None:
                    goodput[d].append(g / link.bytes_per_s)
        moved = {d: wire_bytes(traffic, d, since) for d in (UP, DOWN)}
        if not link.cut_every_s and updates:
            self.overhead = {d: moved[d] / (updates * self.model_bytes) for d in (UP, DOWN)}
        resent = {d: max(0.0, moved[d] - updates * self.model_bytes * self.overhead[d]) for d in (UP, DOWN)}
        round_s = statistics.median(steady) if steady else float("nan")
        return {
            "link": link.spec, "label": link.label, "window_kib": window >> 10, "echo_rtt_ms": rtt,
            "rounds_committed": len(done), "rounds": len(train), "updates": updates, "round_s": times,
            "round_median_s": round_s, "ideal_s": ideal, "round_share": ideal / round_s if steady else 0.0,
            "goodput_up_share": statistics.median(goodput[UP]) if goodput[UP] else 0.0,
            "goodput_down_share": statistics.median(goodput[DOWN]) if goodput[DOWN] else 0.0,
            "cuts": cuts, "bytes_up": moved[UP], "bytes_down": moved[DOWN],
            "resent_up_bytes": resent[UP], "resent_down_bytes": resent[DOWN],
            "run_state": scheduler_pb2.RunState.Name(run.state),
        }


def show(f: dict[str, Any], model_bytes: int, agents: int) -> None:
    print(f"wan {f['label']} (window {f['window_kib']} KiB), {agents} agent(s), {model_bytes / MB:.0f} MB model: "
          f"echo RTT {f['echo_rtt_ms']:.1f} ms; {f['rounds_committed']}/{f['rounds']} rounds committed "
          f"({f['run_state']}); round {f['round_median_s']:.2f} s against {f['ideal_s']:.2f} s for the bytes at "
          f"the link's rate ({100 * f['round_share']:.0f}%; all: {', '.join(f'{t:.2f}' for t in f['round_s'])}); "
          f"goodput download {100 * f['goodput_down_share']:.0f}%, upload {100 * f['goodput_up_share']:.0f}% "
          f"of the rate")
    if f["cuts"]:
        print(f"wan {f['label']}: {f['cuts']} cuts; re-sent {f['resent_up_bytes'] / MB:.1f} MB up "
              f"({f['resent_up_bytes'] / MB / f['cuts']:.1f} MB per cut), {f['resent_down_bytes'] / MB:.1f} MB down "
              f"({f['resent_down_bytes'] / MB / f['cuts']:.1f} MB per cut); {f['updates']} updates counted")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=2, help="agents, each behind a link of its own")
    p.add_argument("--model-mb", type=int, default=100, help="model size (MB)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per link")
    p.add_argument("--links", default="100/40,20/150,100/40/cut12",
                   help="comma-separated RATE_MBIT/RTT_MS[/cutSECONDS]")
    p.add_argument("--windows", default="4096,256",
                   help="the aggregator's HTTP/2 window per stream (KiB), comma-separated")
    p.add_argument("--window-links", default="100/150", help="links the second and later windows run over")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return p.parse_args()


def measure(args: argparse.Namespace, sites: Sites, relay: DelayRelay, work: Path) -> list[dict[str, Any]]:
    links = [LinkShape.parse(x) for x in args.links.split(",") if x.strip()]
    extra = [LinkShape.parse(x) for x in args.window_links.split(",") if x.strip()]
    echo_port = relay.route(sites.host_ip, relay.echo_server(), "echo")
    out = []
    for k, kib in enumerate(int(w) for w in args.windows.split(",")):
        bench = Bench(args, sites, relay, echo_port)
        with LocalFederation(work / f"window-{kib}") as fed:
            sched = bench.start(fed, kib << 10)
            for link in [*links, *(x for x in extra if x not in links)] if k == 0 else extra:
                out.append(bench.over(fed, sched, link, kib << 10))
                show(out[-1], bench.model_bytes, sites.count)
    return out


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through every finally: links and processes go


def main() -> int:
    args = parse_args()
    reason = unavailable()
    if reason is not None:
        print(f"wan: skipped: {reason}")
        return 0
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    for name in sweep_stale():
        print(f"wan: removed {name}, left by a run that is gone", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="fedstream-wan-") as tmp, Sites(args.agents) as sites, \
            DelayRelay() as relay:
        figures = measure(args, sites, relay, Path(tmp))
    print(f"Reproduce: .venv/bin/python bench/wan.py --agents {args.agents} --model-mb {args.model_mb} "
          f"--rounds {args.rounds} --links {args.links} --windows {args.windows} --window-links '{args.window_links}'")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if all(f["rounds_committed"] == f["rounds"] for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
