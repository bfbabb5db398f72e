"""What `fedstream local` leaves in its directory and reads back: the record of the processes it
started (``local.json``, a ``<name>.pid`` file each), whether each still runs, how to stop
them, and what each answers about its health."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RECORD = "local.json"
ADMIN_TOKEN = "admin-token"
MODULES = {"aggregator": "fedstream_aggregator", "scheduler": "fedstream_scheduler"}
AGENT_MODULE = "fedstream_agent"


@dataclass
class Process:
    """One process of a local deployment: the module it runs, its pid, its ports by role
    (grpc, api, enroll, metrics) and its log file (relative to the directory)."""

    name: str
    module: str
    pid: int
    ports: dict[str, int] = field(default_factory=dict)
    log: str = ""


@dataclass
class Deployment:
    """A local control plane and its agents, as ``fedstream local up`` started them in ``dir``."""

    dir: Path
    api: str
    scheduler: str
    aggregator: str
    started_unix: float
    processes: list[Process]

    def save(self) -> None:
        body = {**asdict(self), "dir": str(self.dir)}
        tmp = self.dir / (RECORD + ".tmp")
        tmp.write_text(json.dumps(body, indent=2) + "\n")
        tmp.replace(self.dir / RECORD)
        for p in self.processes:
            (self.dir / f"{p.name}.pid").write_text(f"{p.pid}\n")

    @classmethod
    def load(cls, directory: Path) -> Deployment | None:
        """The deployment recorded in ``directory``, or None when nothing was started there."""
        path = directory / RECORD
        if not path.exists():
            return None
        body: dict[str, Any] = json.loads(path.read_text())
        body["processes"] = [Process(**p) for p in body["processes"]]
        body["dir"] = directory
        return cls(**body)

    def admin_token(self) -> str:
        return (self.dir / ADMIN_TOKEN).read_text().strip()

    def running(self) -> list[Process]:
        return [p for p in self.processes if is_running(p)]

    def forget_pids(self) -> None:
        for p in self.processes:
            (self.dir / f"{p.name}.pid").unlink(missing_ok=True)


def write_secret(path: Path, secret: str) -> None:
    """A file only its owner reads."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")


def is_running(p: Process) -> bool:
    """Whether ``p.pid`` is alive and still runs ``p.module`` (a pid the system gave to another
    program since, or a process that exited and awaits its parent, is not)."""
    proc = Path(f"/proc/{p.pid}")
    if not Path("/proc/self").exists():  # no procfs: whether the pid exists at all
        try:
            os.kill(p.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        state = (proc / "stat").read_text().rpartition(")")[2].split()[0]
        argv = (proc / "cmdline").read_bytes().split(b"\0")
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X") and p.module.encode() in argv


def stop(processes: list[Process], timeout: float) -> dict[str, str]:
    """SIGTERM to each process that runs, SIGKILL to any still running ``timeout`` seconds
    later; what happened to each, by name: ``stopped``, ``killed`` or ``not running``."""
    outcome = {p.name: "not running" for p in processes}
    alive = [p for p in processes if is_running(p)]
    for p in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGTERM)
        outcome[p.name] = "stopped"
    give_up = time.monotonic() + timeout
    while alive and time.monotonic() < give_up:
        time.sleep(0.1)
        alive = [p for p in alive if is_running(p)]
    for p in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGKILL)
        outcome[p.name] = "killed"
    give_up = time.monotonic() + 5
    while any(is_running(p) for p in alive) and time.monotonic() < give_up:
        time.sleep(0.05)
    return outcome


def grpc_health(target: str, identity_dir: Path) -> str:
    """The gRPC health service's answer for a service of this deployment, as its operator."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from fedstream.grpcutil import channel
    from fedstream.pki import TlsIdentity

    try:
        with channel(target, TlsIdentity.load(identity_dir)) as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=3)
    except grpc.RpcError as e:
        return f"no answer ({e.code().name})"
    except OSError as e:
        return f"no operator certificate ({e})"
    return "serving" if reply.status == health_pb2.HealthCheckResponse.SERVING else "not serving"


def api_health(deployment: Deployment) -> tuple[str, dict[str, dict[str, Any]]]:
    """The admin API's health and the agents it knows, by id."""
    import httpx

    headers = {"Authorization": f"Bearer {deployment.admin_token()}"}
    try:
        ok = httpx.get(f"{deployment.api}/health", timeout=3).status_code == 200
        reply = httpx.get(f"{deployment.api}/agents?limit=500", headers=headers, timeout=3)
        agents = {a["agent_id"]: a for a in reply.json()["items"]} if reply.status_code == 200 else {}
    except (httpx.HTTPError, ValueError, KeyError):
        return "admin API: no answer", {}
    return ("admin API ok" if ok else "admin API unhealthy"), agents


def health(deployment: Deployment) -> dict[str, str]:
    """Each running process's health: the services' gRPC health and the admin API; for each
    agent, how the scheduler sees it (alive or stale, its stream connected or not)."""
    running = {p.name for p in deployment.running()}
    identity = deployment.dir / "pki" / "operator"
    api, agents = api_health(deployment) if "scheduler" in running else ("", {})
    out: dict[str, str] = {}
    for p in deployment.processes:
        if p.name not in running:
            out[p.name] = "-"
        elif p.module != AGENT_MODULE:
            grpc_state = grpc_health(f"127.0.0.1:{p.ports['grpc']}", identity)
            out[p.name] = f"{grpc_state}; {api}" if p.name == "scheduler" else grpc_state
        elif p.name in agents:
            a = agents[p.name]
            out[p.name] = f"{a['status']}, {'connected' if a['connected'] else 'not connected'}"
        else:
            out[p.name] = "not registered"
    return out
