"""What a platform team relies on when it installs the charts (docs/deploy.md), rendered with the
real Helm SDK and validated with kubernetes-validate: the agent's identity on a persistent volume
that an upgrade keeps, the images `make images` builds, the agent-facing Services of each type,
and every documented value set on the oldest Kubernetes the charts accept."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHARTS = {"fedstream": ROOT / "helm" / "fedstream", "fedstream-agent": ROOT / "helm" / "fedstream-agent"}
VALUE_SETS = [(chart, f) for chart, path in CHARTS.items() for f in sorted((path / "ci").glob("*.yaml"))]
IDS = [f"{c}:{f.stem}" for c, f in VALUE_SETS]
SITE = {"scheduler": {"endpoint": "scheduler.tenant-a.example.com:443"}, "data": {"hostPath": "/srv/data"}}
IDENTITY_DIR = "/var/lib/fedstream/identity"


def render_files(chart: str, values: dict, name: str = "lyon", namespace: str = "fedstream",
                 **how: object) -> dict[str, str]:
    how = how or {"is_install": True}
    out: dict[str, str] = helm.Chart.load(str(CHARTS[chart])).render(values, name=name, namespace=namespace, **how)
    return out


def render(chart: str, values: dict, name: str = "lyon", namespace: str = "fedstream", **how: object) -> list[dict]:
    out = render_files(chart, values, name, namespace, **how)
    return [d for path, text in sorted(out.items()) if not path.endswith("NOTES.txt")
            for d in yaml.safe_load_all(text) if d]


def notes(chart: str, values: dict, name: str = "lyon") -> str:
    return next(t for p, t in render_files(chart, values, name).items() if p.endswith("NOTES.txt"))


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def one(docs: list[dict], kind: str, suffix: str = "") -> dict:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    return found


def identity_volume(docs: list[dict]) -> dict:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == IDENTITY_DIR]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["FEDSTREAM_AGENT_TLS__IDENTITY_DIR"] == IDENTITY_DIR
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    return volume


def claims(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] == "PersistentVolumeClaim"]


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# --- the agent's identity ----------------------------------------------------------------------


def test_agent_identity_is_on_a_claim_the_chart_creates_and_keeps():
    docs = render("fedstream-agent", SITE)

    (claim,) = claims(docs)
    assert claim["metadata"]["name"] == "lyon-fedstream-agent-identity"
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert "storageClassName" not in claim["spec"]  # the cluster's default class
    assert identity_volume(docs) == {"name": "identity", "persistentVolumeClaim": {"claimName": "lyon-fedstream-agent-identity"}}
    # One pod at a time on a ReadWriteOnce claim: the old pod lets go before the new one mounts it.
    assert one(docs, "Deployment")["spec"]["strategy"]["type"] == "Recreate"
    kubernetes_validate.validate(claim, kubernetes_validate.latest_version(), strict=True)
    assert "lyon-fedstream-agent-identity" in notes("fedstream-agent", SITE)


def test_agent_identity_claim_takes_the_storage_values():
    values = merge(SITE, {"identity": {"persistence": {
        "storageClass": "ssd", "size": "64Mi", "accessModes": ["ReadWriteOncePod"], "annotations": {"backup": "daily"}}}})
    (claim,) = claims(render("fedstream-agent", values))
    assert claim["spec"]["storageClassName"] == "ssd"
    assert claim["spec"]["accessModes"] == ["ReadWriteOncePod"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "64Mi"
    assert claim["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep", "backup": "daily"}
    # "-": no class at all (a volume bound by hand).
    (claim,) = claims(render("fedstream-agent", merge(SITE, {"identity": {"persistence": {"storageClass": "-"}}})))
    assert claim["spec"]["storageClassName"] == ""


def test_agent_identity_on_an_existing_claim_creates_none():
    docs = render("fedstream-agent", merge(SITE, {"identity": {"existingClaim": "lyon-keys"}}))

    assert claims(docs) == []
    assert identity_volume(docs)["persistentVolumeClaim"] == {"claimName": "lyon-keys"}
    assert "lyon-keys" in notes("fedstream-agent", merge(SITE, {"identity": {"existingClaim": "lyon-keys"}}))


def test_agent_identity_in_an_empty_dir_only_when_asked_and_then_warned():
    values = merge(SITE, {"identity": {"persistence": {"enabled": False}}})
    docs = render("fedstream-agent", values)

    assert claims(docs) == []
    assert "emptyDir" in identity_volume(docs)
    assert "LOST with the pod" in notes("fedstream-agent", values)
    with pytest.raises(helm.HelmRenderError, match=re.escape("identity.existingClaim is set but identity.persistence.enabled is false")):
        render("fedstream-agent", merge(values, {"identity": {"existingClaim": "lyon-keys"}}))


def test_an_upgrade_keeps_the_same_identity_claim():
    installed = render("fedstream-agent", SITE, is_install=True, revision=1)
    upgraded_values = merge(SITE, {"image": {"tag": "0.2.0"}, "tasks": ["digits", "fedreid"],
                                   "resources": {"limits": {"memory": "16Gi"}}})
    upgraded = render("fedstream-agent", upgraded_values, is_upgrade=True, revision=2)

    # The pod changes (a new image: a new pod, maybe on another node) ...
    assert one(installed, "Deployment")["spec"]["template"] != one(upgraded, "Deployment")["spec"]["template"]
    assert one(upgraded, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":0.2.0")
    # ... and mounts the very claim the first release made, whose immutable spec is unchanged.
    assert identity_volume(installed) == identity_volume(upgraded)
    (before,), (after,) = claims(installed), claims(upgraded)
    assert before["metadata"]["name"] == after["metadata"]["name"]
    assert before["spec"] == after["spec"]
    assert after["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def documented_agent_values() -> list[tuple[str, dict]]:
    """Every agent value set the project documents: the chart's examples and docs/deploy.md's installs."""
    out = [(f"ci/{f.name}", load(f)) for f in sorted((CHARTS["fedstream-agent"] / "ci").glob("*.yaml"))]
    doc = (ROOT / "docs" / "deploy.md").read_text()
    for block in re.findall(r"```sh(?: example)?\n(.*?)```", doc, re.S):
        for line in block.strip().splitlines():
            cmd = shlex.split(line, comments=True)
            if cmd[:2] in (["helm", "install"], ["helm", "upgrade"]) and cmd[3] == "helm/fedstream-agent":
                values: dict = {}
                for i, arg in enumerate(cmd):
                    if arg == "-f":
                        values = merge(values, load(ROOT / cmd[i + 1]))
                    if arg == "--set":
                        values = merge(values, helm.parse_set_string(cmd[i + 1]))
                out.append((line, values))
    return out


def test_every_documented_agent_install_keeps_its_identity_on_a_volume():
    documented = documented_agent_values()
    assert len([d for d in documented if d[0].startswith("helm")]) >= 2
    for where, values in documented:
        volume = identity_volume(render("fedstream-agent", values))
        assert "persistentVolumeClaim" in volume, where


# --- images --------------------------------------------------------------------------------------


def make_images(**variables: str) -> list[str]:
    """The image names `make images` would build (make -n prints the commands, runs none)."""
    done = subprocess.run(["make", "-s", "-n", "images", *(f"{k}={v}" for k, v in variables.items())],
                          cwd=ROOT, capture_output=True, text=True, check=True, timeout=60)
    return re.findall(r"docker build .* -t (\S+) \.$", done.stdout, re.M)


def chart_images(values: dict) -> list[str]:
    plain = render("fedstream", values, "t1", "tenant-a")
    distill = render("fedstream", merge(values, {"aggregator": {"distill": {"enabled": True, "publicDataClaim": "pub"}}}),
                     "t1", "tenant-a")
    gpu = render("fedstream-agent", merge(SITE, values))
    cpu = render("fedstream-agent", merge(SITE, merge(values, {"gpu": {"enabled": False}})))
    return [one(docs, "Deployment", suffix)["spec"]["template"]["spec"]["containers"][0]["image"]
            for docs, suffix in ((plain, "-scheduler"), (plain, "-aggregator"), (distill, "-aggregator"),
                                 (gpu, ""), (cpu, ""))]


def test_chart_default_images_are_what_make_images_builds():
    built = make_images()
    assert built == ["fedstream-scheduler:0.1.0", "fedstream-aggregator:0.1.0", "fedstream-aggregator:0.1.0-distill",
                     "fedstream-agent:0.1.0", "fedstream-agent:0.1.0-cpu"]
    assert chart_images({}) == built
    for chart in CHARTS.values():  # the charts' appVersion is the Makefile's default IMAGE_TAG
        assert load(chart / "Chart.yaml")["appVersion"] == built[0].rsplit(":", 1)[1]


def test_chart_images_from_a_registry_are_what_make_images_pushes():
    built = make_images(IMAGE_REGISTRY="registry.example.com:5000/fedstream", IMAGE_TAG="1.4.2")
    assert built[0] == "registry.example.com:5000/fedstream/fedstream-scheduler:1.4.2"
    assert chart_images({"image": {"registry": "registry.example.com:5000/fedstream", "tag": "1.4.2"}}) == built
    pushed = subprocess.run(["make", "-s", "-n", "push-images", "IMAGE_REGISTRY=registry.example.com:5000/fedstream",
                             "IMAGE_TAG=1.4.2"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60)
    assert all(name in pushed.stdout for name in built)


def test_pull_secrets_reach_every_fedstream_pod():
    values = {"image": {"pullSecrets": ["regcred"]}}
    for docs in (render("fedstream", values, "t1", "tenant-a"), render("fedstream-agent", merge(SITE, values))):
        for d in docs:
            if d["kind"] in ("Deployment",) or d["metadata"]["name"].endswith("-leaf"):
                assert d["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}], d["metadata"]["name"]


# --- exposing the control plane ------------------------------------------------------------------

EXPOSED = {"tls": {"serverNames": ["scheduler.tenant-a.example.com", "aggregator.tenant-a.example.com"]},
           "scheduler": {"aggregatorPublicEndpoint": "aggregator.tenant-a.example.com:50052"}}


def edge_services(docs: list[dict]) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service" and d["metadata"]["name"].endswith("-edge")}


def test_cluster_ip_exposes_nothing_beyond_the_in_cluster_services():
    docs = render("fedstream", {}, "t1", "tenant-a")
    assert edge_services(docs) == {}
    assert all(d["spec"].get("type", "ClusterIP") == "ClusterIP" for d in docs if d["kind"] == "Service")


@pytest.mark.parametrize("kind", ["LoadBalancer", "NodePort"])
def test_agent_facing_services_of_each_type_carry_the_agents_ports_only(kind):
    values = merge(EXPOSED, {"service": {
        "type": kind, "annotations": {"external-dns.alpha.kubernetes.io/ttl": "60"},
        "loadBalancerSourceRanges": ["203.0.113.0/24"], "loadBalancerClass": "service.k8s.aws/nlb" if kind == "LoadBalancer" else "",
        "externalTrafficPolicy": "Local", "nodePorts": {"scheduler": 31051, "enroll": 31053, "aggregator": 0}}})
    docs = render("fedstream", values, "t1", "tenant-a")
    edge = edge_services(docs)

    assert sorted(edge) == ["t1-fedstream-aggregator-edge", "t1-fedstream-scheduler-edge"]
    sched, agg = edge["t1-fedstream-scheduler-edge"], edge["t1-fedstream-aggregator-edge"]
    for svc in (sched, agg):
        kubernetes_validate.validate(svc, kubernetes_validate.latest_version(), strict=True)
        kubernetes_validate.validate(svc, "1.27.0", strict=True)
        assert svc["spec"]["type"] == kind and svc["spec"]["externalTrafficPolicy"] == "Local"
        assert svc["metadata"]["annotations"] == {"external-dns.alpha.kubernetes.io/ttl": "60"}
        if kind == "LoadBalancer":
            assert svc["spec"]["loadBalancerSourceRanges"] == ["203.0.113.0/24"]
            assert svc["spec"]["loadBalancerClass"] == "service.k8s.aws/nlb"
        else:
            assert "loadBalancerSourceRanges" not in svc["spec"] and "loadBalancerClass" not in svc["spec"]
    # Never the REST API (plain HTTP) or /metrics: only the ports agents dial, to the right pods.
    assert {p["name"]: (p["port"], p["targetPort"], p.get("nodePort")) for p in sched["spec"]["ports"]} == {
        "grpc": (50051, "grpc", 31051), "enroll": (50053, "enroll", 31053)}
    assert {p["name"]: (p["port"], p.get("nodePort")) for p in agg["spec"]["ports"]} == {"grpc": (50052, None)}
    assert sched["spec"]["selector"]["app.kubernetes.io/component"] == "scheduler"
    assert agg["spec"]["selector"]["app.kubernetes.io/component"] == "aggregator"
    # Agents are sent to the aggregator's public address, which its certificate names.
    sched_env = {e["name"]: e.get("value") for e in one(docs, "Deployment", "-scheduler")["spec"]["template"]["spec"]["containers"][0]["env"]}
    agg_env = {e["name"]: e.get("value") for e in one(docs, "Deployment", "-aggregator")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert sched_env["FEDSTREAM_SCHEDULER_AGGREGATOR_PUBLIC_ENDPOINT"] == "aggregator.tenant-a.example.com:50052"
    assert "aggregator.tenant-a.example.com" in yaml.safe_load(agg_env["FEDSTREAM_AGGREGATOR_TLS__SERVER_NAMES"])
    assert "scheduler.tenant-a.example.com" in yaml.safe_load(sched_env["FEDSTREAM_SCHEDULER_TLS__SERVER_NAMES"])
    # NOTES.txt sends the operator to the edge Services for the agents' endpoints.
    text = next(t for p, t in render_files("fedstream", values, "t1", "tenant-a").items() if p.endswith("NOTES.txt"))
    assert "svc/t1-fedstream-scheduler-edge>:" + ("31051" if kind == "NodePort" else "50051") in text


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"service": {"type": "LoadBalancer"}, "tls": {"serverNames": ["a.example.com"]}},
         "scheduler.aggregatorPublicEndpoint is required with service.type LoadBalancer"),
        ({"service": {"type": "NodePort"}, "scheduler": {"aggregatorPublicEndpoint": "10.0.0.7:30052"}},
         "tls.serverNames is required with service.type NodePort"),
    ],
)
def test_exposed_services_without_the_addresses_agents_dial_fail_the_render(values, message):
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        render("fedstream", values, "t1", "tenant-a")


@pytest.mark.parametrize(
    ("chart", "values", "message"),
    [
        ("fedstream", {"service": {"type": "ExternalName"}}, "/service/type"),
        ("fedstream", {"service": {"nodePorts": {"scheduler": 70000}}}, "/service/nodePorts/scheduler"),
        ("fedstream", {"service": {"loadBalancerSourceRanges": ["edge sites"]}}, "/service/loadBalancerSourceRanges/0"),
        ("fedstream", {"image": {"registry": "https://registry.example.com"}}, "/image/registry"),
        ("fedstream", {"scheduler": {"repository": "Fedstream"}}, "/scheduler/repository"),
        ("fedstream-agent", merge(SITE, {"identity": {"persistence": {"accessModes": ["ReadOnlyMany"]}}}),
         "/identity/persistence/accessModes/0"),
        ("fedstream-agent", merge(SITE, {"identity": {"persistence": {"size": "a lot"}}}), "/identity/persistence/size"),
        ("fedstream-agent", merge(SITE, {"identity": {"persistence": {"enable": True}}}), "'enable' not allowed"),
        ("fedstream-agent", merge(SITE, {"image": {"tag": "0.1.0 cpu"}}), "/image/tag"),
    ],
)
def test_bad_deploy_values_are_refused_naming_the_key(chart, values, message):
    with pytest.raises(helm.HelmValuesError) as e:
        render(chart, values)
    assert message in str(e.value)


# --- the bundled Redis -------------------------------------------------------------------------


def test_bundled_redis_keeps_an_append_only_file_on_its_volume():
    redis = one(render("fedstream", {}, "t1", "tenant-a"), "StatefulSet", "-redis")
    script = redis["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    assert "--appendonly yes" in script and "--dir /data" in script
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


# --- the oldest Kubernetes the charts accept -----------------------------------------------------


@pytest.mark.parametrize(("chart", "values"), VALUE_SETS, ids=IDS)
def test_every_documented_value_set_is_valid_on_the_oldest_supported_kubernetes(chart, values):
    oldest = re.fullmatch(r">=(\d+\.\d+)\.0-0", load(CHARTS[chart] / "Chart.yaml")["kubeVersion"])
    assert oldest, "kubeVersion is '>=X.Y.0-0'"
    for doc in render(chart, load(values), "t1", "tenant-a"):
        if doc["apiVersion"] != "monitoring.coreos.com/v1":
            kubernetes_validate.validate(doc, f"{oldest.group(1)}.0", strict=True)
