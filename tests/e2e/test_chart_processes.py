"""The rendered manifests drive a real run: the control-plane chart and two agent releases are
rendered with test values, and each container's image entrypoint, arguments, environment
(secrets resolved from the rendered Secret, volumes mapped to directories) and ports are
started as processes here, with Redis and the S3 test server standing in for the in-cluster
ones and the services' host names mapped to loopback. A federation round then runs through
them, driven over the REST admin API with the bootstrap token from the rendered Secret. A
wrong port, a missing variable or a misnamed secret key in a template fails this test."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import time
from pathlib import Path

import helm_python as helm
import httpx
import yaml

from fedstream.pki import CertificateAuthority
from fedstream_testing.servers import RedisServer, S3Server, free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RELEASE, NAMESPACE = "t1", "tenant-a"


def render(chart: str, values: dict, name: str) -> list[dict]:
    out = helm.Chart.load(str(ROOT / "helm" / chart)).render(values, name=name, namespace=NAMESPACE, is_install=True)
    return [d for path, text in sorted(out.items()) if not path.endswith("NOTES.txt")
            for d in yaml.safe_load_all(text) if d]


def entrypoint(image: str) -> str:
    """The console script the image runs: the ENTRYPOINT of the Dockerfile that builds it."""
    name = image.rsplit("/", 1)[-1].split(":")[0].removeprefix("fedstream-")
    text = (ROOT / "docker" / f"{name}.Dockerfile").read_text()
    (script,) = re.findall(r'^ENTRYPOINT \["([^"]+)"\]', text, re.M)
    return script


class Cluster:
    """Where the manifests' names point on this machine."""

    def __init__(self, docs: list[dict], workdir: Path) -> None:
        self.secrets = {d["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in d["data"].items()}
                        for d in docs if d["kind"] == "Secret"}
        self.hosts: dict[str, str] = {}  # "service:port" -> "127.0.0.1:port"
        self.workdir = workdir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def map_service(self, service: str, port: int, local: int) -> None:
        for host in (service, f"{service}.{NAMESPACE}.svc", f"{service}.{NAMESPACE}.svc.cluster.local"):
            self.hosts[f"{host}:{port}"] = f"127.0.0.1:{local}"

    def value(self, env: dict, mounts: dict[str, Path]) -> str:
        if "valueFrom" in env:
            ref = env["valueFrom"].get("secretKeyRef")
            assert ref is not None, env
            secret = self.secrets.get(ref["name"])
            assert secret is not None, f"{env['name']}: secret {ref['name']} is not in the render"
            assert ref["key"] in secret, f"{env['name']}: secret {ref['name']} has no key {ref['key']}"
            return secret[ref["key"]]
        text = env["value"]
        for target, local in sorted(self.hosts.items(), key=lambda kv: -len(kv[0])):
            text = text.replace(target, local)
        for path, local in mounts.items():
            if text == path or text.startswith(path + "/"):
                text = str(local) + text[len(path):]
        return text

    def start(self, workload: dict, name: str, extra_env: dict[str, str] | None = None) -> dict[str, str]:
        pod = workload["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        mounts = {}
        for m in container.get("volumeMounts", []):
            local = self.workdir / name / m["name"]
            local.mkdir(parents=True, exist_ok=True)
            mounts[m["mountPath"]] = local
        env = {e["name"]: self.value(e, mounts) for e in container["env"]}
        env.update(extra_env or {})
        # Probes and ports must name the ports the service is told to listen on (probes: the
        # plaintext health port, since the kubelet cannot present a client certificate).
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe in ("readinessProbe", "livenessProbe"):
            spec = container.get(probe, {})
            if "grpc" in spec:
                prefix = env_prefix(env)
                assert str(spec["grpc"]["port"]) == env[f"{prefix}GRPC__HEALTH_PORT"], (name, probe)
        log = (self.workdir / f"{name}.log").open("wb")
        command = [str(BIN / entrypoint(container["image"])), *container.get("args", [])]
        proc = subprocess.Popen(command, env={"PATH": str(BIN), "HOME": str(self.workdir), **env},
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((name, proc))
        return {"ports": ports, **env}

    def tail(self, name: str) -> str:
        return f"--- {name}\n" + (self.workdir / f"{name}.log").read_text()[-3000:]

    def stop(self) -> None:
        for _, proc in self.procs:
            proc.terminate()
        for _, proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def env_prefix(env: dict[str, str]) -> str:
    return next(p for p in ("FEDSTREAM_SCHEDULER_", "FEDSTREAM_AGGREGATOR_", "FEDSTREAM_AGENT_") if any(k.startswith(p) for k in env))


def workload(docs: list[dict], kind: str, suffix: str) -> dict:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix))


def wait_http(url: str, proc_tail, give_up: float = 60) -> None:
    deadline = time.time() + give_up
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.time() < deadline, proc_tail()
        time.sleep(0.2)


def test_rendered_manifests_run_a_federation_round(tmp_path):
    ports = {k: free_port() for k in ("sched_grpc", "api", "sched_metrics", "agg_grpc", "agg_metrics", "enroll",
                                      "sched_health", "agg_health")}
    values = {
        "scheduler": {"replicaCount": 1, "grpcPort": ports["sched_grpc"], "apiPort": ports["api"],
                      "metricsPort": ports["sched_metrics"], "heartbeatIntervalSeconds": 0.5,
                      "enrollPort": ports["enroll"], "healthPort": ports["sched_health"]},
        "aggregator": {"grpcPort": ports["agg_grpc"], "metricsPort": ports["agg_metrics"],
                       "healthPort": ports["agg_health"]},
        # The services' host names become 127.0.0.1 here: their certificates must name it.
        "tls": {"serverNames": ["127.0.0.1"]},
    }
    docs = render("fedstream", values, RELEASE)
    cluster = Cluster(docs, tmp_path)
    # The tenant's authority, as `fedstream pki init-ca` makes it for the CA secret.
    ca = CertificateAuthority.create(NAMESPACE)
    for name in ("aggregator", "scheduler"):
        ca.save(tmp_path / name / "tenant-ca")
    redis_secret = workload(docs, "StatefulSet", "-redis")["spec"]["template"]["spec"]["containers"][0]["env"][0]
    redis = RedisServer(tmp_path / "redis", password=cluster.value(redis_secret, {})).start()
    s3 = S3Server().start()
    cluster.map_service(f"{RELEASE}-fedstream-redis", 6379, redis.port)
    cluster.map_service(f"{RELEASE}-fedstream-minio", 9000, s3.port)
    cluster.map_service(f"{RELEASE}-fedstream-aggregator", ports["agg_grpc"], ports["agg_grpc"])
    cluster.map_service(f"{RELEASE}-fedstream-scheduler", ports["sched_grpc"], ports["sched_grpc"])
    cluster.map_service(f"{RELEASE}-fedstream-scheduler", ports["enroll"], ports["enroll"])
    try:
        agg = cluster.start(workload(docs, "Deployment", "-aggregator"), "aggregator",
                            {"FEDSTREAM_AGGREGATOR_GRPC__HOST": "127.0.0.1", "FEDSTREAM_AGGREGATOR_METRICS__HOST": "127.0.0.1"})
        sched = cluster.start(workload(docs, "Deployment", "-scheduler"), "scheduler",
                              {"FEDSTREAM_SCHEDULER_GRPC__HOST": "127.0.0.1", "FEDSTREAM_SCHEDULER_API__HOST": "127.0.0.1",
                               "FEDSTREAM_SCHEDULER_METRICS__HOST": "127.0.0.1"})
        assert agg["ports"]["grpc"] == ports["agg_grpc"] and sched["ports"]["api"] == ports["api"]
        api = f"http://127.0.0.1:{sched['ports']['api']}/api/v1"
        wait_http(f"{api}/health", lambda: cluster.tail("scheduler"))
        wait_http(f"http://127.0.0.1:{agg['ports']['metrics']}/metrics", lambda: cluster.tail("aggregator"))

        token = cluster.secrets[f"{RELEASE}-fedstream-credentials"]["bootstrap-token"]
        headers = {"Authorization": f"Bearer {token}"}
        for site in ("lyon", "depot"):
            agent_values = {"scheduler": {"endpoint": f"{RELEASE}-fedstream-scheduler:{ports['sched_grpc']}",
                                          "enrollEndpoint": f"{RELEASE}-fedstream-scheduler:{ports['enroll']}"},
                            "data": {"hostPath": "/srv/fedstream/data"}, "gpu": {"enabled": False},
                            "cpuThreads": 1, "metricsPort": free_port(), "labels": {"site": site}}
            agent_docs = render("fedstream-agent", agent_values, site)
            # The site's enrollment secret: a one-time token from the admin API and the CA certificate.
            made = httpx.post(f"{api}/enrollment-tokens", headers=headers, timeout=10, json={"agent_id": site})
            assert made.status_code == 201, made.text
            secret = tmp_path / site / "enrollment"
            secret.mkdir(parents=True)
            (secret / "token").write_text(made.json()["token"])
            (secret / "ca.pem").write_bytes(ca.cert_pem)
            cluster.start(workload(agent_docs, "Deployment", "-fedstream-agent"), site,
                          {"FEDSTREAM_AGENT_METRICS__HOST": "127.0.0.1"})

        deadline = time.time() + 90
        while len(httpx.get(f"{api}/agents?status=alive", headers=headers, timeout=10).json()["items"]) < 2:
            assert time.time() < deadline, cluster.tail("scheduler") + cluster.tail("lyon")
            time.sleep(0.3)
        agents = httpx.get(f"{api}/agents", headers=headers, timeout=10).json()["items"]
        assert {a["agent_id"]: a["labels"] for a in agents} == {"lyon": {"site": "lyon"}, "depot": {"site": "depot"}}
        body = {"federation_id": "digits", "spec": {"task": "digits", "rounds": 1, "min_agents": 2, "round_timeout_s": 120}}
        assert httpx.post(f"{api}/federations", json=body, headers=headers, timeout=10).status_code == 201
        run = httpx.post(f"{api}/federations/digits/runs", json={}, headers=headers, timeout=10).json()
        deadline = time.time() + 180
        while (run := httpx.get(f"{api}/runs/{run['run_id']}", headers=headers, timeout=10).json())["state"] == "running":
            assert time.time() < deadline, cluster.tail("scheduler") + cluster.tail("aggregator")
            time.sleep(0.5)
        assert run["state"] == "succeeded", run["reason"] + cluster.tail("aggregator")
        assert [r["kind"] for r in run["rounds"]] == ["init", "train"] and run["rounds"][1]["updates"] == 2
        # The model went to the S3 stand-in through the rendered store settings.
        models = httpx.get(f"{api}/federations/digits/models", headers=headers, timeout=10).json()["items"]
        assert [m["version"] for m in models] == [f"{run['run_id']}/000000", f"{run['run_id']}/000001"]
        for name, proc in cluster.procs:
            assert proc.poll() is None, cluster.tail(name)
    finally:
        cluster.stop()
        s3.stop()
        redis.stop()
