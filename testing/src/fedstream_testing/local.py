"""The services as child processes on this machine, on free loopback ports: the demo's
federation, also used by end-to-end tests and benchmarks."""

from __future__ import annotations

import datetime as dt
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from fedstream.pki import CA_CERT, CA_KEY, CertificateAuthority, Identity, TlsIdentity


def _write_secret(path: Path, secret: str) -> None:
    """A file only its owner reads (made so before the secret is in it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret)


class LocalFederation:
    """Starts services as child processes, each logging to ``<workdir>/<name>.log``, and stops
    every one of them on ``stop`` (or on leaving a ``with`` block).

    Each service binds port 0 and writes the port it got to a file, so no port is ever guessed.
    Services run on the embedded defaults: the scheduler and the aggregators share one SQLite
    state file, ``<workdir>/state.db`` (``state_file``), and one model directory,
    ``<workdir>/models``, as a single-node install does.
    ``settings`` are the service's settings without its prefix, e.g. ``{"LOG__LEVEL": "INFO"}``.

    With ``tls`` (the default) the federation is what a deployment is: a certificate authority
    for the tenant under ``<workdir>/pki``, mutual TLS on every gRPC connection, and agents
    that enroll with one-time tokens made through the scheduler's admin API. Without, every
    process runs in plaintext development mode.
    """

    def __init__(self, workdir: Path, tls: bool = True, tenant: str = "default") -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.tls = tls
        self.tenant = tenant
        # Each scheduler's gRPC address -> its name, and its bootstrap admin token.
        self._schedulers: dict[str, str] = {}
        self._admin_tokens: dict[str, str] = {}
        self.operator: TlsIdentity | None = None
        if tls:
            ca = CertificateAuthority.create(tenant)
            ca.save(self.pki / "ca")
            self.operator = ca.issue_identity(Identity(tenant, "operator", "local"), dt.timedelta(days=1))
            self.operator.save(self.pki / "operator")

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    @property
    def state_file(self) -> Path:
        """The SQLite state file that the services started here share (unless their settings
        name another backend)."""
        return self.workdir / "state.db"

    def _tls_env(self, prefix: str) -> dict[str, str]:
        if not self.tls:
            return {f"{prefix}TLS__INSECURE_PLAINTEXT": "true"}
        return {f"{prefix}TLS__CA_FILE": str(self.pki / "ca" / CA_CERT),
                f"{prefix}TLS__CA_KEY_FILE": str(self.pki / "ca" / CA_KEY)}

    def identity(self, role: str, name: str) -> TlsIdentity | None:
        """A certificate straight from this federation's authority (None without TLS): for
        services and, against an aggregator that does not share the scheduler's state,
        agents simulated in-process."""
        if not self.tls:
            return None
        ca = CertificateAuthority.load(self.pki / "ca" / CA_CERT, self.pki / "ca" / CA_KEY)
        return ca.issue_identity(Identity(self.tenant, role, name), dt.timedelta(days=1))

    def channel(self, target: str) -> Any:
        """A gRPC channel to a service started here, as this federation's operator."""
        from fedstream.grpcutil import channel

        return channel(target, self.operator)

    def start(self, name: str, module: str, env: dict[str, str], wrap: Sequence[str] = ()) -> subprocess.Popen[bytes]:
        """Starts ``python -m module``, after the command prefix ``wrap`` when given (e.g.
        ``ip netns exec NS``, which replaces itself with the program)."""
        log = (self.workdir / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [*wrap, sys.executable, "-m", module],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs.append((name, proc))
        return proc

    def _start_server(self, name: str, module: str, prefix: str, settings: dict[str, str]) -> str:
        port_file = self.workdir / f"{name}.port"
        port_file.unlink(missing_ok=True)
        env = {
            f"{prefix}GRPC__HOST": "127.0.0.1",
            f"{prefix}GRPC__PORT": "0",
            f"{prefix}GRPC__PORT_FILE": str(port_file),
            f"{prefix}TENANT__TENANT": self.tenant,
            **self._tls_env(prefix),
            **self._metrics_env(name, prefix),
            **{prefix + k: v for k, v in settings.items()},
        }
        proc = self.start(name, module, env)
        return f"127.0.0.1:{self.wait_port(name, proc, port_file)}"

    def start_aggregator(self, settings: dict[str, str] | None = None, name: str = "aggregator") -> str:
        """Starts an aggregator storing its state, models and spool files under the workdir; its
        address. An aggregator that agents simulated in-process (``identity``) talk to without
        a scheduler takes ``{"STATE__BACKEND": "memory"}``: agents' records are the scheduler's."""
        defaults = {
            "STATE__SQLITE__PATH": str(self.state_file),
            "STORE__PATH": str(self.workdir / "models"),
            "SPOOL_DIR": str(self.workdir / "spool"),
        }
        return self._start_server(
            name, "fedstream_aggregator", "FEDSTREAM_AGGREGATOR_", {**defaults, **(settings or {})}
        )

    def start_scheduler(
        self, aggregator: str, settings: dict[str, str] | None = None, name: str = "scheduler"
    ) -> str:
        """Starts a scheduler that reaches the aggregator at ``aggregator``; its gRPC address.
        Its admin API listens on a free loopback port too (``api_url``)."""
        api_port_file = self.workdir / f"{name}.api-port"
        api_port_file.unlink(missing_ok=True)
        enroll_port_file = self.workdir / f"{name}.enroll-port"
        enroll_port_file.unlink(missing_ok=True)
        settings = dict(settings or {})
        token = settings.setdefault("API__BOOTSTRAP_TOKEN", "fst_local_" + secrets.token_urlsafe(24))
        address = self._start_server(
            name,
            "fedstream_scheduler",
            "FEDSTREAM_SCHEDULER_",
            {"AGGREGATOR_ENDPOINT": aggregator, "STORE__PATH": str(self.workdir / "models"),
             "STATE__SQLITE__PATH": str(self.state_file),
             "API__HOST": "127.0.0.1", "API__PORT": "0",
             "API__PORT_FILE": str(api_port_file),
             "ENROLLMENT__PORT": "0", "ENROLLMENT__PORT_FILE": str(enroll_port_file), **settings},
        )
        self._schedulers[address] = name
        self._admin_tokens[name] = token
        return address

    def enroll_endpoint(self, scheduler: str) -> str:
        """host:port of the enrollment service of the scheduler at ``scheduler``."""
        name = self._schedulers[scheduler]
        proc = next(p for n, p in self.procs if n == name)
        return f"127.0.0.1:{self.wait_port(name, proc, self.workdir / f'{name}.enroll-port')}"

    def enrollment_token(self, scheduler: str, agent_id: str, ttl_s: float = 600.0) -> str:
        """A one-time enrollment token for ``agent_id``, made through the admin API of the
        scheduler at ``scheduler`` (waiting until it answers)."""
        import httpx

        name = self._schedulers[scheduler]
        headers = {"Authorization": f"Bearer {self._admin_tokens[name]}"}
        give_up = time.monotonic() + 60
        while True:
            try:
                reply = httpx.post(f"{self.api_url(name)}/enrollment-tokens", headers=headers, timeout=10,
                                   json={"agent_id": agent_id, "ttl_s": ttl_s, "name": "local federation"})
                if reply.status_code == 201:
                    return str(reply.json()["token"])
                problem = f"HTTP {reply.status_code}: {reply.text}"
            except (httpx.HTTPError, OSError, ValueError) as e:
                problem = str(e)
            if time.monotonic() > give_up:
                raise RuntimeError(f"{name} made no enrollment token: {problem}\n{self.tail(name)}")
            time.sleep(0.1)

    def enroll(self, scheduler: str, agent_id: str) -> TlsIdentity | None:
        """Enrolls ``agent_id`` as an agent does (a token, a key made here, a signing request);
        its identity, or None without TLS. For agents simulated in-process."""
        if not self.tls:
            return None
        from fedstream_agent.identity import enroll

        assert self.operator is not None
        token = self.enrollment_token(scheduler, agent_id)
        return enroll(self.enroll_endpoint(scheduler), self.operator.ca_pem, token, agent_id)

    def api_url(self, name: str = "scheduler") -> str:
        """The admin API's base URL of a scheduler started here."""
        return f"http://127.0.0.1:{int((self.workdir / f'{name}.api-port').read_text())}/api/v1"

    def start_agent(
        self, agent_id: str, scheduler: str, site_index: int, num_sites: int,
        settings: dict[str, str] | None = None, wrap: Sequence[str] = (),
    ) -> subprocess.Popen[bytes]:
        """Starts an agent holding slice ``site_index`` of ``num_sites`` of the task's data;
        with TLS it enrolls with a token made for it (by the scheduler at ``scheduler``, when
        it was started here). ``wrap`` is a command prefix it runs under (``start``)."""
        tls: dict[str, str] = {"TLS__INSECURE_PLAINTEXT": "true"}
        if self.tls:
            home = self.workdir / "agents" / agent_id
            home.mkdir(parents=True, exist_ok=True)
            tls = {"TLS__CA_FILE": str(self.pki / "ca" / CA_CERT), "TLS__IDENTITY_DIR": str(home / "identity")}
            if scheduler in self._schedulers:
                token_file = home / "enrollment-token"
                _write_secret(token_file, self.enrollment_token(scheduler, agent_id))
                tls.update({"TLS__ENROLLMENT_TOKEN_FILE": str(token_file),
                            "TLS__ENROLL_ENDPOINT": self.enroll_endpoint(scheduler)})
        env = {
            "AGENT_ID": agent_id,
            "SCHEDULER_ENDPOINT": scheduler,
            "DATA__SITE_INDEX": str(site_index),
            "DATA__NUM_SITES": str(num_sites),
            **tls,
            **(settings or {}),
        }
        return self.start(agent_id, "fedstream_agent", {
            **self._metrics_env(agent_id, "FEDSTREAM_AGENT_"), **{f"FEDSTREAM_AGENT_{k}": v for k, v in env.items()},
        }, wrap)

    def _metrics_env(self, name: str, prefix: str) -> dict[str, str]:
        """Each process's /metrics on a free loopback port, written to ``<name>.metrics-port``."""
        port_file = self.workdir / f"{name}.metrics-port"
        port_file.unlink(missing_ok=True)
        return {f"{prefix}METRICS__HOST": "127.0.0.1", f"{prefix}METRICS__PORT": "0",
                f"{prefix}METRICS__PORT_FILE": str(port_file)}

    def metrics_address(self, name: str, timeout: float = 60) -> str:
        """host:port of a process's /metrics (waiting for it to bind)."""
        port_file = self.workdir / f"{name}.metrics-port"
        give_up = time.monotonic() + timeout
        while not port_file.exists():
            if time.monotonic() > give_up:
                raise RuntimeError(f"{name} never served its metrics:\n{self.tail(name)}")
            time.sleep(0.05)
        return f"127.0.0.1:{int(port_file.read_text())}"

    def wait_port(self, name: str, proc: subprocess.Popen[bytes], port_file: Path, timeout: float = 60) -> int:
        give_up = time.monotonic() + timeout
        while time.monotonic() < give_up:
            if port_file.exists():
                return int(port_file.read_text())
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{name} did not start; see {self.workdir / (name + '.log')}:\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 20) -> str:
        path = self.workdir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def check_alive(self) -> None:
        """Raises RuntimeError, with the end of its log, if any process has exited."""
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {proc.returncode}:\n{self.tail(name)}")

    def pid(self, name: str) -> int:
        return next(proc.pid for n, proc in self.procs if n == name)

    def stop(self) -> None:
        """SIGTERM to every process, SIGKILL to any still running 10 seconds later."""
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def run(self, scheduler: str, spec: Any, run_id: str, label: str) -> Any:
        """Starts a run (a fedstream.v1.RunSpec) over gRPC and follows it to its end, printing
        each newly committed training round to stderr and checking that every process lives;
        returns the finished fedstream.v1.Run."""
        from fedstream.convert import kind_from_proto, state_from_proto
        from fedstream.rounds import RoundKind, RoundState
        from fedstream.v1 import scheduler_pb2, scheduler_pb2_grpc

        runs = scheduler_pb2_grpc.RunServiceStub(self.channel(scheduler))
        started = runs.StartRun(scheduler_pb2.StartRunRequest(spec=spec, run_id=run_id), timeout=10)
        run, shown = started, -1
        for run in runs.WatchRun(scheduler_pb2.GetRunRequest(run_id=started.run_id)):
            self.check_alive()
            done = sum(
                kind_from_proto(r.kind) is RoundKind.TRAIN and state_from_proto(r.state) is RoundState.COMMITTED
                for r in run.rounds
            )
            if done != shown:
                print(f"{label}: {done}/{spec.rounds} rounds committed", file=sys.stderr)
                shown = done
        return run

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
