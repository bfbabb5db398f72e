"""`fedstream login`, `federations`, `runs`, `models`, `plot`: the CLI over the REST admin API.

Credentials come from flags (--api, --token), else the environment (FEDSTREAM_API,
FEDSTREAM_TOKEN), else the file `fedstream login` writes ($FEDSTREAM_CONFIG, default
~/.config/fedstream/credentials.json, readable by its owner only).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ERRORS_EXIT = 1


def config_path() -> Path:
    return Path(os.environ.get("FEDSTREAM_CONFIG") or Path.home() / ".config" / "fedstream" / "credentials.json")


class ApiError(Exception):
    pass


class Client:
    def __init__(self, api: str, token: str) -> None:
        self.api = api.rstrip("/")
        if not self.api.endswith("/api/v1"):
            self.api += "/api/v1"
        self.http = httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self.http.request(method, self.api + path, **kw)
        except httpx.HTTPError as e:
            raise ApiError(f"cannot reach the admin API at {self.api}: {e}") from None
        if r.status_code >= 400:
            try:
                body = r.json()
                raise ApiError(f"{body.get('code', r.status_code)}: {body.get('detail', r.text)}")
            except ValueError:
                raise ApiError(f"HTTP {r.status_code}: {r.text[:200]}") from None
        return r.json() if r.content else None

    def pages(self, path: str) -> list[Any]:
        items, token = [], ""
        sep = "&" if "?" in path else "?"
        while True:
            page = self.call("GET", f"{path}{sep}limit=500&page_token={token}")
            items += page["items"]
            token = page["next_page_token"]
            if not token:
                return items


def client_from(args: argparse.Namespace) -> Client:
    saved: dict[str, str] = {}
    path = config_path()
    if path.exists():
        saved = json.loads(path.read_text())
    api = args.api or os.environ.get("FEDSTREAM_API") or saved.get("api")
    token = args.token or os.environ.get("FEDSTREAM_TOKEN") or saved.get("token")
    if not api or not token:
        raise SystemExit("no admin API credentials: run `fedstream login --api URL --token TOKEN` "
                         "(or set FEDSTREAM_API and FEDSTREAM_TOKEN)")
    return Client(api, token)


class Bar:
    """A progress bar on stderr: redrawn in place on a terminal, a line per change otherwise."""

    def __init__(self, total: float, label: str, unit: str = "") -> None:
        self.total, self.label, self.unit = max(total, 1), label, unit
        self.tty = sys.stderr.isatty()
        self.last = ""

    def show(self, done: float, note: str = "") -> None:
        width = 30
        filled = int(width * min(done, self.total) / self.total)
        amount = f"{_bytes(done)}/{_bytes(self.total)}" if self.unit == "B" else f"{done:g}/{self.total:g}"
        line = f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {amount} {note}".rstrip()
        if line == self.last:
            return
        self.last = line
        if self.tty:
            sys.stderr.write("\r" + line + " " * 8)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def emit(args: argparse.Namespace, data: Any, lines: list[str]) -> None:
    if args.output == "json":
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print("\n".join(lines))


def _params(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--strategy-param takes KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


# Commands.

def cmd_login(args: argparse.Namespace) -> int:
    token = sys.stdin.readline().strip() if args.token == "-" else args.token
    client = Client(args.api, token)
    client.call("GET", "/runs?limit=1")  # any role may: proves the token
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"api": client.api, "token": token}, f)
    print(f"logged in to {client.api}; credentials in {path}")
    return 0


def cmd_federations_list(args: argparse.Namespace) -> int:
    feds = client_from(args).pages("/federations")
    lines = [f"{'FEDERATION':24} {'TASK':16} {'STRATEGY':10} {'ROUNDS':>6}  {'SCHEDULE':24} LATEST"]
    for f in feds:
        sched = f"{f['schedule']['cron']} {f['schedule']['timezone']}" if f["schedule"] else "-"
        lines.append(f"{f['federation_id']:24} {f['spec']['task']:16} {f['spec']['strategy']['name']:10} "
                     f"{f['spec']['rounds']:>6}  {sched:24} {f['latest_version'] or '-'}")
    emit(args, feds, lines)
    return 0


def cmd_federations_create(args: argparse.Namespace) -> int:
    spec: dict[str, Any] = {
        "task": args.task, "rounds": args.rounds, "min_agents": args.min_agents, "max_agents": args.max_agents,
        "fraction": args.fraction, "round_timeout_s": args.round_timeout,
        "training": {"local_epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": args.lr},
        "strategy": {"name": args.strategy, "params": _params(args.strategy_param)},
        "evaluate_every": args.evaluate_every,
    }
    body: dict[str, Any] = {"federation_id": args.federation, "description": args.description, "spec": spec}
    if args.cron:
        body["schedule"] = {"cron": args.cron, "timezone": args.timezone, "missed": args.missed}
    fed = client_from(args).call("POST", "/federations", json=body)
    emit(args, fed, [f"federation {fed['federation_id']} created"
                     + (f"; runs at '{args.cron}' ({args.timezone})" if args.cron else "")])
    return 0


def cmd_federations_delete(args: argparse.Namespace) -> int:
    client_from(args).call("DELETE", f"/federations/{args.federation}")
    print(f"federation {args.federation} deleted")
    return 0


def follow(client: Client, run_id: str, interval: float = 1.0) -> dict[str, Any]:
    """Shows a run's rounds as a progress bar until it ends; returns the finished run."""
    run = client.call("GET", f"/runs/{run_id}")
    bar = Bar(run["spec"].get("rounds", 1), f"run {run_id}")
    try:
        while True:
            current = next((r for r in reversed(run["rounds"]) if r["state"] not in ("committed", "failed")), None)
            note = ""
            if current is not None:
                note = (f"round {current['round']} ({current['kind']}) {current['state']}: "
                        f"{current['updates']}/{len(current['participants'])} updates, {_bytes(current['bytes_received'])}")
            elif run["rounds"]:
                last = run["rounds"][-1]
                note = f"round {last['round']} {last['state']}"
            bar.show(run["rounds_committed"], note)
            if run["state"] != "running":
                return run
            time.sleep(interval)
            run = client.call("GET", f"/runs/{run_id}")
    finally:
        bar.close()


def _run_summary(run: dict[str, Any]) -> list[str]:
    lines = [f"run {run['run_id']} {run['state']}{': ' + run['reason'] if run['reason'] else ''}; "
             f"{run['rounds_committed']} rounds committed; latest {run['latest_version'] or '-'}"]
    for r in run.get("rounds", []):
        metrics = "  ".join(f"{k} {v:.4f}" for k, v in sorted({**r["update_metrics"], **r["metrics"]}.items())
                            if k in ("train_loss", "accuracy", "map50", "map", "rank1") or k.startswith("distill_mse"))
        took = f"{r['duration_s']:.1f} s" if r["duration_s"] is not None else "-"
        lines.append(f"  round {r['round']:>3} {r['kind']:8} {r['state']:10} {r['updates']:>3} updates "
                     f"{_bytes(r['bytes_received']):>10} {took:>8}  {metrics}")
    return lines


def cmd_federations_run(args: argparse.Namespace) -> int:
    client = client_from(args)
    run = client.call("POST", f"/federations/{args.federation}/runs",
                      json={"run_id": args.run_id, "initial_version": args.initial_version})
    if not args.follow:
        emit(args, run, [f"run {run['run_id']} started"])
        return 0
    run = follow(client, run["run_id"])
    emit(args, run, _run_summary(run))
    return 0 if run["state"] == "succeeded" else 1


def cmd_runs_list(args: argparse.Namespace) -> int:
    query = "&".join(f"{k}={v}" for k, v in (("federation", args.federation), ("state", args.state)) if v)
    runs = client_from(args).pages("/runs" + (f"?{query}" if query else ""))
    lines = [f"{'RUN':32} {'FEDERATION':20} {'STATE':10} {'TRIGGER':9} {'ROUNDS':>6} LATEST"]
    lines += [f"{r['run_id']:32} {r['federation'] or '-':20} {r['state']:10} {r['trigger']:9} "
              f"{r['rounds_committed']:>6} {r['latest_version'] or '-'}" for r in runs]
    emit(args, runs, lines)
    return 0


def cmd_runs_follow(args: argparse.Namespace) -> int:
    run = follow(client_from(args), args.run)
    emit(args, run, _run_summary(run))
    return 0 if run["state"] == "succeeded" else 1


def cmd_runs_cancel(args: argparse.Namespace) -> int:
    run = client_from(args).call("POST", f"/runs/{args.run}/cancel")
    emit(args, run, [f"run {run['run_id']} {run['state']}"])
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    models = client_from(args).pages(f"/federations/{args.federation}/models")
    lines = [f"{'VERSION':32} {'SIZE':>10} {'PINNED':6} CREATED"]
    lines += [f"{m['version']:32} {_bytes(m['size_bytes']):>10} {'yes' if m['pinned'] else '':6} "
              f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(m['created_unix']))}" for m in models]
    emit(args, models, lines)
    return 0


def cmd_models_download(args: argparse.Namespace) -> int:
    client = client_from(args)
    out = args.out or Path(args.version.replace("/", "-") + ".safetensors")
    tmp = out.with_name(out.name + ".part")
    digest = hashlib.sha256()
    try:
        with client.http.stream("GET", f"{client.api}/models/{args.version}/download") as r:
            if r.status_code >= 400:
                r.read()
                body = r.json()
                raise ApiError(f"{body.get('code')}: {body.get('detail')}")
            total = int(r.headers.get("content-length", 0))
            expected = r.headers.get("x-fedstream-sha256", "")
            bar = Bar(total, f"downloading {args.version}", unit="B")
            done, header_left, prefix = 0, -1, b""
            with tmp.open("wb") as f:
                for piece in r.iter_bytes(1 << 20):
                    f.write(piece)
                    done += len(piece)
                    # The SHA-256 covers the data section: after the 8-byte length and the header.
                    if header_left < 0:
                        prefix += piece
                        if len(prefix) < 8:
                            continue
                        header_left = 8 + struct.unpack("<Q", prefix[:8])[0]
                        piece = prefix
                    skip = min(header_left, len(piece))
                    header_left -= skip
                    digest.update(piece[skip:])
                    bar.show(done)
            bar.close()
    except httpx.HTTPError as e:
        tmp.unlink(missing_ok=True)
        raise ApiError(f"download failed: {e}") from None
    if expected and digest.hexdigest() != expected:
        tmp.unlink(missing_ok=True)
        raise ApiError(f"download of {args.version} is corrupt: SHA-256 {digest.hexdigest()} != {expected}")
    tmp.replace(out)
    emit(args, {"version": args.version, "path": str(out), "bytes": done, "sha256": digest.hexdigest()},
         [f"{out}: {args.version}, {_bytes(done)}, data SHA-256 verified"])
    return 0


def cmd_models_pin(args: argparse.Namespace) -> int:
    model = client_from(args).call("POST", f"/models/{args.version}/{'pin' if args.pin else 'unpin'}")
    emit(args, model, [f"{model['version']} {'pinned' if model['pinned'] else 'unpinned'}"])
    return 0


def cmd_enrollment_create(args: argparse.Namespace) -> int:
    body = {"agent_id": args.agent_id, "ttl_s": args.ttl, "name": args.name}
    tok = client_from(args).call("POST", "/enrollment-tokens", json=body)
    if args.write:
        fd = os.open(args.write, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(tok["token"] + "\n")
    who = f"agent {tok['agent_id']}" if tok["agent_id"] else "any agent id"
    lines = [f"enrollment token {tok['token_id']} for {who}, usable once until "
             f"{time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(tok['expires_unix']))}"]
    lines.append(f"written to {args.write}" if args.write else tok["token"])
    emit(args, tok, lines)
    return 0


def cmd_enrollment_list(args: argparse.Namespace) -> int:
    toks = client_from(args).pages("/enrollment-tokens")
    lines = [f"{'TOKEN':18} {'AGENT':24} {'EXPIRES':20} NAME"]
    for t in toks:
        lines.append(f"{t['token_id']:18} {t['agent_id'] or '(any)':24} "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(t['expires_unix'])):20} {t['name']}")
    emit(args, toks, lines)
    return 0


def cmd_enrollment_delete(args: argparse.Namespace) -> int:
    client_from(args).call("DELETE", f"/enrollment-tokens/{args.token_id}")
    print(f"enrollment token {args.token_id} deleted")
    return 0


def cmd_agents_list(args: argparse.Namespace) -> int:
    agents = client_from(args).pages("/agents")
    lines = [f"{'AGENT':24} {'STATUS':9} {'CONNECTED':9} {'DEVICE':6} {'CERTS':>5}  TASKS"]
    for a in agents:
        lines.append(f"{a['agent_id']:24} {a['status']:9} {'yes' if a['connected'] else 'no':9} "
                     f"{a['capabilities'].get('device', '-'):6} {a['certificates']:>5}  {','.join(a['tasks'])}")
    emit(args, agents, lines)
    return 0


def cmd_agents_change(args: argparse.Namespace) -> int:
    client = client_from(args)
    if args.action == "delete":
        client.call("DELETE", f"/agents/{args.agent_id}")
    else:
        client.call("POST", f"/agents/{args.agent_id}/{args.action}")
    print(f"agent {args.agent_id} {args.action}d")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("fedstream plot needs matplotlib: pip install 'fedstream-core[plot]'") from None
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    run = client_from(args).call("GET", f"/runs/{args.run}")
    rounds = [r for r in run["rounds"] if r["state"] == "committed"]
    if not rounds:
        raise SystemExit(f"run {args.run} has no committed round to plot")
    fig, axes = plt.subplots(3, 1, figsize=(8, 9), dpi=100, sharex=True)
    series: dict[str, list[tuple[int, float]]] = {}
    for r in rounds:
        for k, v in {**r["update_metrics"], **r["metrics"]}.items():
            if not k.endswith(("_seconds", "examples_seen")) and k != "examples":
                series.setdefault(k, []).append((r["round"], v))
    for k, points in sorted(series.items()):
        axes[0].plot(*zip(*points, strict=True), marker="o", label=k)
    axes[0].set_ylabel("metric")
    axes[0].legend(fontsize=8)
    axes[1].bar([r["round"] for r in rounds], [r["duration_s"] or 0 for r in rounds])
    axes[1].set_ylabel("round duration (s)")
    axes[2].bar([r["round"] for r in rounds], [r["bytes_received"] / (1 << 20) for r in rounds])
    axes[2].set_ylabel("updates received (MiB)")
    axes[2].set_xlabel("round")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"run {run['run_id']} ({run['state']})")
    fig.tight_layout()
    out = args.out or Path(f"{args.run}.png")
    fig.savefig(out)
    plt.close(fig)
    print(f"{out}: {len(rounds)} rounds, {len(series)} metrics")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--api", default="", help="admin API URL (default: FEDSTREAM_API, else the saved login)")
    common.add_argument("--token", default="", help="bearer token (default: FEDSTREAM_TOKEN, else the saved login)")
    common.add_argument("--output", choices=["text", "json"], default="text", help="json: machine-readable output")

    login = sub.add_parser("login", help="check and save the admin API URL and a token")
    login.add_argument("--api", required=True, help="the scheduler's admin API, e.g. https://fedstream.example.com")
    login.add_argument("--token", required=True, help="a token of the tenant; '-' reads it from standard input")
    login.set_defaults(func=cmd_login)

    feds = sub.add_parser("federations", help="federations (admin API)").add_subparsers(dest="fed_command", required=True)
    ls = feds.add_parser("list", parents=[common], help="list federations")
    ls.set_defaults(func=cmd_federations_list)
    create = feds.add_parser("create", parents=[common], help="create a federation")
    create.add_argument("federation", help="id: lowercase letters, digits and '-'")
    create.add_argument("--task", required=True)
    create.add_argument("--description", default="")
    create.add_argument("--strategy", default="fedavg")
    create.add_argument("--strategy-param", action="append", default=[], metavar="KEY=VALUE")
    create.add_argument("--rounds", type=int, default=1)
    create.add_argument("--min-agents", type=int, default=1)
    create.add_argument("--max-agents", type=int, default=0, help="0: no limit")
    create.add_argument("--fraction", type=float, default=1.0, help="share of live agents selected per round")
    create.add_argument("--round-timeout", type=float, default=300.0, help="seconds")
    create.add_argument("--epochs", type=int, default=1)
    create.add_argument("--batch-size", type=int, default=32)
    create.add_argument("--lr", type=float, default=0.05)
    create.add_argument("--evaluate-every", type=int, default=0)
    create.add_argument("--cron", default="", help="run on this five-field cron schedule, e.g. '0 2 * * *'")
    create.add_argument("--timezone", default="UTC")
    create.add_argument("--missed", choices=["skip", "run_once"], default="skip")
    create.set_defaults(func=cmd_federations_create)
    delete = feds.add_parser("delete", parents=[common], help="delete a federation")
    delete.add_argument("federation")
    delete.set_defaults(func=cmd_federations_delete)
    run = feds.add_parser("run", parents=[common], help="start a run of a federation now")
    run.add_argument("federation")
    run.add_argument("--run-id", default="")
    run.add_argument("--initial-version", default="", help="default: the newest pinned, else latest model")
    run.add_argument("--follow", action="store_true", help="show progress until the run ends")
    run.set_defaults(func=cmd_federations_run)

    runs = sub.add_parser("runs", help="runs (admin API)").add_subparsers(dest="runs_command", required=True)
    rls = runs.add_parser("list", parents=[common], help="list runs")
    rls.add_argument("--federation", default="")
    rls.add_argument("--state", default="", choices=["", "running", "succeeded", "failed", "cancelled"])
    rls.set_defaults(func=cmd_runs_list)
    fol = runs.add_parser("follow", parents=[common], help="show a run's progress until it ends")
    fol.add_argument("run")
    fol.set_defaults(func=cmd_runs_follow)
    cancel = runs.add_parser("cancel", parents=[common], help="cancel a run")
    cancel.add_argument("run")
    cancel.set_defaults(func=cmd_runs_cancel)

    models = sub.add_parser("models", help="model versions (admin API)").add_subparsers(dest="models_command", required=True)
    mls = models.add_parser("list", parents=[common], help="a federation's model versions")
    mls.add_argument("federation")
    mls.set_defaults(func=cmd_models_list)
    dl = models.add_parser("download", parents=[common], help="download a version as a safetensors file")
    dl.add_argument("version", help="RUN/NNNNNN")
    dl.add_argument("-o", "--out", type=Path, default=None)
    dl.set_defaults(func=cmd_models_download)
    for name, pin in (("pin", True), ("unpin", False)):
        p = models.add_parser(name, parents=[common], help=f"{name} a version")
        p.add_argument("version", help="RUN/NNNNNN")
        p.set_defaults(func=cmd_models_pin, pin=pin)

    agents = sub.add_parser("agents", help="agents (admin API)").add_subparsers(dest="agents_command", required=True)
    als = agents.add_parser("list", parents=[common], help="list agents")
    als.set_defaults(func=cmd_agents_list)
    for action, text in (("disable", "refuse its calls and close its stream until enabled"),
                         ("enable", "let a disabled agent back"),
                         ("delete", "forget it and revoke its certificates (it must enroll again)")):
        p = agents.add_parser(action, parents=[common], help=f"{action} an agent: {text}")
        p.add_argument("agent_id")
        p.set_defaults(func=cmd_agents_change, action=action)

    enr = sub.add_parser("enrollment-tokens", help="one-time agent enrollment tokens (admin API)").add_subparsers(
        dest="enrollment_command", required=True)
    ecreate = enr.add_parser("create", parents=[common], help="make a token an agent enrolls with once")
    ecreate.add_argument("--agent-id", default="", help="the agent id it enrolls (default: any id the agent names)")
    ecreate.add_argument("--ttl", type=float, default=3600.0, help="seconds until it expires unused (default 3600)")
    ecreate.add_argument("--name", default="", help="what it is for")
    ecreate.add_argument("--write", default="", metavar="FILE",
                         help="write the secret to FILE (mode 0600) instead of printing it")
    ecreate.set_defaults(func=cmd_enrollment_create)
    els = enr.add_parser("list", parents=[common], help="tokens not yet used")
    els.set_defaults(func=cmd_enrollment_list)
    edel = enr.add_parser("delete", parents=[common], help="withdraw a token")
    edel.add_argument("token_id")
    edel.set_defaults(func=cmd_enrollment_delete)

    plot = sub.add_parser("plot", parents=[common], help="write a PNG of a run's metrics per round")
    plot.add_argument("run")
    plot.add_argument("-o", "--out", type=Path, default=None, help="default: RUN.png")
    plot.set_defaults(func=cmd_plot)
