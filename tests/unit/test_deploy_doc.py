"""docs/deploy.md's commands are real: every helm command in it renders (Helm SDK) into valid
manifests, every secret those manifests read that the chart does not create is one a kubectl
command of the document creates, with that key, in that namespace, and the pods the document
execs into exist."""

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
    blocks = re.findall(r"```sh\n(.*?)```", DOC, re.S)
    return [shlex.split(line) for block in blocks for line in block.strip().splitlines()]


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
    out = []
    for cmd in commands():
        if cmd[:2] not in (["helm", "install"], ["helm", "upgrade"]):
            continue
        release, chart = cmd[2], cmd[3]
        namespace = cmd[cmd.index("--namespace") + 1]
        values: dict = {}
        for i, arg in enumerate(cmd):
            if arg == "-f":
                values = {**values, **(yaml.safe_load((ROOT / cmd[i + 1]).read_text()) or {})}
            if arg == "--set":
                values = {**values, **helm.parse_set_string(cmd[i + 1])}
        rendered = helm.Chart.load(str(ROOT / chart)).render(values, name=release, namespace=namespace, is_install=True)
        docs = [d for p, t in rendered.items() if not p.endswith("NOTES.txt") for d in yaml.safe_load_all(t) if d]
        out.append((namespace, docs))
    return out


def test_every_helm_command_renders_valid_manifests_whose_secrets_exist():
    secrets = created_secrets()
    renders = helm_renders()
    assert len(renders) >= 8
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


def test_pods_the_document_execs_into_exist():
    pods = {f"{d['metadata']['name']}-0" for ns, docs in helm_renders() for d in docs if d["kind"] == "StatefulSet"}
    for cmd in commands():
        if cmd[:1] == ["kubectl"] and ("exec" in cmd or "cp" in cmd):
            target = cmd[cmd.index("exec") + 1] if "exec" in cmd else cmd[cmd.index("cp") + 1].split(":")[0]
            assert target in pods, target
