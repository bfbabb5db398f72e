"""docs/deploy.md's cluster commands are real: every helm command in it that installs one of the
charts renders (Helm SDK) into valid manifests, every secret those manifests read that the chart
does not create is one a kubectl command of the document creates, with that key, in that
namespace, and every object a kubectl command names (the pods it execs into, the deployments it
scales, the services it forwards) is one those renders make. Its blocks are fenced `sh` (run as
written by the documentation tests) or `sh example` (for a cluster); both are read here."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "deploy.md").read_text()


def commands() -> list[list[str]]:
    blocks = re.findall(r"^```sh(?: example)?\n(.*?)^```", DOC, re.S | re.M)
    lines = [line for block in blocks for line in block.strip().splitlines()]
    return [cmd for cmd in (shlex.split(line, comments=True) for line in lines) if cmd]


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def created_secrets() -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for cmd in commands():
        if cmd[:1] == ["kubectl"] and "create" in cmd and "secret" in cmd:
            ns = cmd[cmd.index("-n") + 1]
            kind = cmd[cmd.index("secret") + 1]
            name = cmd[cmd.index("secret") + 2]
            keys = {a.split("=", 2)[1] for a in cmd if a.startswith(("--from-literal=", "--from-file="))}
            if kind == "tls":
                keys = {"tls.crt", "tls.key"}
            out[(ns, name)] = keys
    return out


def helm_renders() -> list[tuple[str, list[dict]]]:
    """The releases the document installs or upgrades with the project's charts (helm/...)."""
    out = []
    for cmd in commands():
        if cmd[:2] not in (["helm", "install"], ["helm", "upgrade"]) or not cmd[3].startswith("helm/"):
            continue
        release, chart = cmd[2], cmd[3]
        namespace = cmd[cmd.index("--namespace") + 1]
        values: dict = {}
        for i, arg in enumerate(cmd):
            if arg == "-f":
                values = merge(values, yaml.safe_load((ROOT / cmd[i + 1]).read_text()) or {})
            if arg == "--set":
                values = merge(values, helm.parse_set_string(cmd[i + 1]))
        rendered = helm.Chart.load(str(ROOT / chart)).render(values, name=release, namespace=namespace, is_install=True)
        docs = [d for p, t in rendered.items() if not p.endswith("NOTES.txt") for d in yaml.safe_load_all(t) if d]
        out.append((namespace, docs))
    return out


def test_every_helm_command_renders_valid_manifests_whose_secrets_exist():
    secrets = created_secrets()
    renders = helm_renders()
    assert len(renders) >= 10
    for namespace, docs in renders:
        own = {d["metadata"]["name"]: set(d.get("data", {})) for d in docs if d["kind"] == "Secret"}
        for d in docs:
            assert d["metadata"]["namespace"] == namespace
            if d["apiVersion"] != "monitoring.coreos.com/v1":
                kubernetes_validate.validate(d, kubernetes_validate.latest_version(), strict=True)
            refs = []
            if d["kind"] in ("Deployment", "StatefulSet"):
                pod = d["spec"]["template"]["spec"]
                refs += [(e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
                         for c in pod["containers"] for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})]
                refs += [(v["secret"]["secretName"], i["key"]) for v in pod.get("volumes", []) if "secret" in v
                         for i in v["secret"].get("items", [])]
            if d["kind"] == "Ingress":
                refs += [(t["secretName"], "tls.crt") for t in d["spec"].get("tls", [])]
            for name, key in refs:
                keys = own.get(name) or secrets.get((namespace, name))
                assert keys is not None, f"{d['metadata']['name']} reads secret {name}, which nothing creates in {namespace}"
                assert key in keys, f"secret {name} is created without the key {key}"


KINDS = {"pod": "Pod", "pods": "Pod", "deployment": "Deployment", "statefulset": "StatefulSet",
         "service": "Service", "svc": "Service", "pvc": "PersistentVolumeClaim", "secret": "Secret"}


def rendered_objects() -> set[tuple[str, str, str]]:
    """(namespace, kind, name) of what the document's releases make, pods of StatefulSets included."""
    out = set()
    for namespace, docs in helm_renders():
        for d in docs:
            out.add((namespace, d["kind"], d["metadata"]["name"]))
            if d["kind"] == "StatefulSet":
                out |= {(namespace, "Pod", f"{d['metadata']['name']}-{i}") for i in range(d["spec"]["replicas"])}
    return out


def named_objects(cmd: list[str]) -> list[tuple[str, str, str]]:
    """The objects a kubectl command names: (namespace, kind, name)."""
    ns = cmd[cmd.index("-n") + 1] if "-n" in cmd else "default"
    ends = [i for i, w in enumerate(cmd) if w in ("--", "|", ">", "<", "&", ";")]
    cmd = cmd[: min(ends, default=len(cmd))]
    words = [w for i, w in enumerate(cmd) if not w.startswith("-") and (i == 0 or cmd[i - 1] not in ("-n", "-o"))][1:]
    verb, rest = words[0], words[1:]
    if verb in ("exec", "logs"):
        return [(ns, "Pod", rest[0])]
    if verb in ("wait", "port-forward"):
        kind, name = rest[0].split("/")
        return [(ns, KINDS[kind], name)]
    if verb == "rollout":
        rest = rest[1:]  # rollout status KIND NAME
    if verb in ("scale", "get", "delete", "rollout") and rest and rest[0] in KINDS:
        return [(ns, KINDS[rest[0]], name) for name in rest[1:] if not name.startswith("$")]
    return []


def test_objects_the_document_names_exist():
    made = rendered_objects()
    created = {(ns, "Secret", name) for ns, name in created_secrets()}
    named = [obj for cmd in commands() if cmd[:1] == ["kubectl"] for obj in named_objects(cmd)]
    assert len(named) >= 15
    for obj in named:
        assert obj in made or obj in created, obj
