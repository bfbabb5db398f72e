"""`fedstream local up|status|down`: a control plane (aggregator and scheduler) and N agents
left running in the background on this machine, for the other commands to use, like a proof
of concept deployment.

Everything lives in one directory (``--dir``): the tenant's certificate authority and the
operator's certificate (``pki/``), the bootstrap admin token (``admin-token``), each agent's
enrollment token and identity (``agents/<id>/``), the model store (``models/``), a log, a pid
file and port files per process, and ``local.json``, the record that ``status`` and ``down``
read. Every process binds 127.0.0.1 on ports chosen free at start, and runs in its own
session, so that it outlives the command that started it.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

from fedstream_cli.api import Client, save_login
from fedstream_cli.local_deploy import (
    ADMIN_TOKEN,
    AGENT_MODULE,
    MODULES,
    Deployment,
    Process,
    health,
    stop,
    write_secret,
)

DEFAULT_DIR = "fedstream-local"
TASK = "digits"


def _dir_flag(directory: Path) -> str:
    """`` --dir DIR`` when the deployment is not in the default directory, for printed commands."""
    default = Path(DEFAULT_DIR).resolve()
    return "" if directory == default else f" --dir {shlex.quote(str(directory))}"


def _ports(workdir: Path, name: str) -> dict[str, int]:
    files = {"grpc": "port", "api": "api-port", "enroll": "enroll-port", "metrics": "metrics-port"}
    return {role: int(path.read_text()) for role, suffix in files.items()
            if (path := workdir / f"{name}.{suffix}").exists()}


def _wait_for_agents(fed: Any, client: Client, agents: list[str], timeout: float) -> None:
    """Until every agent is alive with its stream open on the scheduler; RuntimeError, naming
    the process and the end of its log, when one exits or the time is up."""
    give_up = time.monotonic() + timeout
    while True:
        fed.check_alive()
        alive = {a["agent_id"] for a in client.pages("/agents?status=alive") if a["connected"]}
        missing = [a for a in agents if a not in alive]
        if not missing:
            return
        if time.monotonic() > give_up:
            raise RuntimeError(f"agents {', '.join(missing)} did not register within {timeout:g} s; "
                               f"see their logs:\n{fed.tail(missing[0])}")
        time.sleep(0.5)


def _start(fed: Any, args: argparse.Namespace, token: str) -> tuple[str, str, list[str]]:
    """Starts the aggregator, the scheduler and the agents; their addresses and the agents' ids."""
    aggregator = fed.start_aggregator()
    print(f"aggregator on {aggregator}", flush=True)
    scheduler = fed.start_scheduler(aggregator, {"API__BOOTSTRAP_TOKEN": token, "HEARTBEAT_INTERVAL_S": "1",
                                                 "HEARTBEAT_TTL_S": "5"})
    print(f"scheduler on {scheduler}, admin API on {fed.api_url()}", flush=True)
    agents = [f"site-{i}" for i in range(args.agents)]
    threads = max(1, (os.cpu_count() or 1) // args.agents)
    for i, agent in enumerate(agents):
        fed.start_agent(agent, scheduler, i, args.agents, {"DEVICE": args.device, "CPU_THREADS": str(threads)})
    print(f"agents {', '.join(agents)} started (task {TASK}, each with its own 1/{args.agents} of the data); "
          "waiting for them to register", flush=True)
    return aggregator, scheduler, agents


def _record(fed: Any, directory: Path, aggregator: str, scheduler: str) -> Deployment:
    processes = [
        Process(name, MODULES.get(name, AGENT_MODULE), proc.pid, _ports(directory, name), f"{name}.log")
        for name, proc in fed.procs
    ]
    return Deployment(directory, fed.api_url(), scheduler, aggregator, time.time(), processes)


def _refuse_if_up(directory: Path) -> None:
    previous = Deployment.load(directory)
    if previous is None:
        return
    running = previous.running()
    if running:
        names = ", ".join(f"{p.name} (pid {p.pid})" for p in running)
        flag = _dir_flag(directory)
        raise SystemExit(f"error: fedstream local is already up in {directory}: {names} running. "
                         f"See `fedstream local status{flag}`; stop it with `fedstream local down{flag}` first")
    # A stopped deployment: the new one has a new certificate authority, so the agents'
    # identities of the old one can no longer be used; models and logs stay.
    for stale in (directory / "pki", directory / "agents"):
        shutil.rmtree(stale, ignore_errors=True)


def _next_steps(deployment: Deployment, agents: list[str], path: Path) -> list[str]:
    flag = _dir_flag(deployment.dir)
    return [
        f"fedstream local is up in {deployment.dir}: aggregator, scheduler and {len(agents)} agents "
        f"({', '.join(agents)}) on 127.0.0.1",
        f"  admin API   {deployment.api} (logged in: credentials in {path})",
        f"  admin token {deployment.dir / ADMIN_TOKEN}",
        f"  logs        {deployment.dir}/<process>.log",
        "Next: a federation of the agents, run to its end:",
        f"  fedstream federations create quickstart --task {TASK} --rounds 3 --min-agents {len(agents)}",
        "  fedstream federations run quickstart --follow",
        f"Status: fedstream local status{flag}    Stop everything: fedstream local down{flag}",
    ]


def cmd_up(args: argparse.Namespace) -> int:
    try:
        from fedstream_testing.local import LocalFederation
    except ImportError:
        raise SystemExit("fedstream local needs the services: pip install 'fedstream-cli[demo]'") from None
    if args.agents < 1:
        raise SystemExit("error: --agents must be at least 1")
    directory = Path(args.dir).resolve()
    _refuse_if_up(directory)
    token = "fst_local_" + secrets.token_urlsafe(24)
    fed = LocalFederation(directory)
    write_secret(directory / ADMIN_TOKEN, token)
    try:
        aggregator, scheduler, agents = _start(fed, args, token)
        client = Client(fed.api_url(), token)
        _wait_for_agents(fed, client, agents, args.wait)
        for agent in agents:
            fed.metrics_address(agent)  # its port file, for the record
        deployment = _record(fed, directory, aggregator, scheduler)
        deployment.save()
        client.call("GET", "/runs?limit=1")  # the token works: what `fedstream login` checks
        path = save_login(client.api, token)
    except BaseException as e:
        fed.stop()
        if isinstance(e, RuntimeError):
            raise SystemExit(f"error: fedstream local did not come up: {e}\nstopped what had started; "
                             f"logs in {directory}") from None
        raise
    print("\n".join(_next_steps(deployment, agents, path)))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    directory = Path(args.dir).resolve()
    deployment = Deployment.load(directory)
    if deployment is None:
        raise SystemExit(f"error: no fedstream local in {directory} (start one: `fedstream local up`)")
    running = {p.name for p in deployment.running()}
    states = health(deployment)
    rows: list[dict[str, Any]] = [
        {"name": p.name, "state": "alive" if p.name in running else "dead", "pid": p.pid, "ports": p.ports,
         "health": states[p.name], "log": str(directory / p.log)} for p in deployment.processes]
    if args.format == "json":
        print(json.dumps({"dir": str(directory), "api": deployment.api, "processes": rows}, indent=2))
    else:
        print(f"fedstream local in {directory}; admin API {deployment.api}")
        print(f"{'PROCESS':12} {'STATE':6} {'PID':>8}  {'PORTS':52} HEALTH")
        for r in rows:
            ports = "  ".join(f"{role} {port}" for role, port in r["ports"].items())
            print(f"{r['name']:12} {r['state']:6} {r['pid']:>8}  {ports:52} {r['health']}")
    return 0 if len(running) == len(deployment.processes) else 1


def cmd_down(args: argparse.Namespace) -> int:
    directory = Path(args.dir).resolve()
    deployment = Deployment.load(directory)
    if deployment is None or not deployment.running():
        print(f"nothing to stop: no fedstream local is running in {directory}")
        if deployment is not None:
            deployment.forget_pids()
        return 0
    # Agents first, so that they do not log the control plane's going away.
    order = sorted(deployment.processes, key=lambda p: (p.module != AGENT_MODULE, p.module == MODULES["aggregator"]))
    outcome = stop(order, args.timeout)
    for p in order:
        what = {"stopped": "stopped", "killed": f"killed (still running {args.timeout:g} s after SIGTERM)",
                "not running": "was not running"}[outcome[p.name]]
        print(f"{p.name} (pid {p.pid}) {what}")
    deployment.forget_pids()
    print(f"fedstream local in {directory} is down; its logs and models stay there "
          f"(`fedstream local up{_dir_flag(directory)}` starts it again)")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    local = sub.add_parser(
        "local", help="a control plane and agents left running on this machine for the CLI (up, status, down)",
        description="A local deployment to try the CLI against: `up` starts an aggregator, a scheduler and N "
        "agents of the digits task in the background on 127.0.0.1 (ports chosen free), everything in one "
        "directory, and logs the CLI in; `status` shows each process; `down` stops them all.",
    ).add_subparsers(dest="local_command", required=True, metavar="COMMAND")
    up = local.add_parser("up", help="start the control plane and the agents, and log in to them")
    up.add_argument("--agents", type=int, default=2, help="agents to start, each with its slice of the data (default 2)")
    up.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="agents' device (default auto)")
    up.add_argument("--wait", type=float, default=180.0,
                    help="seconds to wait for the agents to register before giving up (default 180)")
    status = local.add_parser(
        "status", help="each process: alive or dead, pid, ports, health; exit 1 unless all run",
        description="Shows each process of the deployment: alive or dead, pid, ports, health. Exits 0 when every "
        "process runs, 1 when the deployment is down or any process is dead (after printing the table).")
    status.add_argument("--format", choices=["table", "json"], default="table",
                        help="how it prints: a table for people (default), or JSON")
    down = local.add_parser("down", help="stop every process (SIGTERM, then SIGKILL); nothing running is fine")
    down.add_argument("--timeout", type=float, default=10.0,
                      help="seconds from SIGTERM to SIGKILL for a process still running (default 10)")
    for p, func in ((up, cmd_up), (status, cmd_status), (down, cmd_down)):
        p.add_argument("--dir", default=DEFAULT_DIR,
                       help=f"the deployment's directory: CA, tokens, stores, logs, pid files (default ./{DEFAULT_DIR})")
        p.set_defaults(func=func)
