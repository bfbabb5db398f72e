"""`fedstream models lineage` and `fedstream models card`: where a version came from (its parents,
rounds, participants, data fingerprints, code), its lineage graph, the rounds between two
versions, and its model card."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fedstream_cli.api import client_from, emit
from fedstream_cli.progress import local_time


def _metrics(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in sorted(metrics.items()))


def document_lines(doc: dict[str, Any]) -> list[str]:
    """A lineage document for people."""
    strategy, task = doc["strategy"], doc["task"]
    lines = [
        f"{doc['version']}: round {doc['round']} ({doc['kind']}) of run {doc['run_id']}, committed "
        f"{local_time(doc['committed_unix'])}",
        f"parents       {', '.join(doc['parents']) or 'none'}",
        f"federation    {doc['federation_id'] or '-'}",
        f"started by    {doc['started_by'] or '-'}",
        f"task          {task['name']} {task['version']}".rstrip(),
        f"strategy      {strategy['name']} {json.dumps(strategy['params'], sort_keys=True)}",
        f"compression   {doc['compression']}",
        f"distillation  {json.dumps(doc['distillation'], sort_keys=True) if doc['distillation'] else 'no'}",
        f"stragglers    {', '.join(doc['stragglers']) or 'none'}",
        "code          " + "; ".join(
            f"{svc} " + ", ".join(f"{p} {v}" for p, v in sorted(pk.items())) for svc, pk in sorted(doc["code"].items())),
        "",
        f"{'AGENT':24} {'EXAMPLES':>8} {'AGENT VERSION':14} {'TASK VERSION':20} {'DATA FINGERPRINT':16} METRICS",
    ]
    for p in doc["participants"]:
        lines.append(f"{p['agent_id']:24} {p['examples']:>8} {p['agent_version'] or '-':14} "
                     f"{p['task_version'] or '-':20} {(p['data_fingerprint'] or '-')[:16]:16} {_metrics(p['metrics'])}")
    for name, e in sorted(doc.get("evaluations", {}).items()):
        lines.append(f"evaluation {name}: {e.get('examples', 0)} examples, {_metrics(e.get('metrics', {}))}")
    return lines


def _node(n: dict[str, Any]) -> str:
    if n["missing"]:
        return f"{n['version']:32} (lineage not kept)"
    return (f"{n['version']:32} {n['kind']:6} {n['participants']:>3} participants {n['examples']:>8} examples  "
            f"parents {', '.join(n['parents']) or 'none'}")


def cmd_lineage(args: argparse.Namespace) -> int:
    client = client_from(args)
    if args.since:
        path = client.call("GET", "/lineage/between", params={"from": args.since, "to": args.version})
        lines = [f"{path['ancestor']} -> {path['descendant']}: {len(path['versions'])} versions, "
                 f"{path['training_rounds']} training rounds", *map(_node, path["versions"])]
        emit(args, path, lines)
    elif args.graph:
        graph = client.call("GET", f"/models/{args.version}/lineage/graph", params={"depth": args.depth})
        lines = [*map(_node, graph["nodes"]), "", *(f"{e['parent']} -> {e['child']}" for e in graph["edges"])]
        emit(args, graph, lines)
    else:
        doc = client.call("GET", f"/models/{args.version}/lineage")
        emit(args, doc, document_lines(doc))
    return 0


def cmd_card(args: argparse.Namespace) -> int:
    client = client_from(args)
    fmt = "json" if args.format == "json" else "markdown"
    with client.stream(f"/models/{args.version}/card?format={fmt}") as r:
        text = r.read().decode()
    if fmt == "json":
        text = json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
        print(f"{args.output}: model card of {args.version}", file=sys.stderr)
    return 0


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", dest="format", action="store_const", const="json", default="table",
                   help="print JSON (the same as --format json)")


def add_parsers(models: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    """Adds ``lineage`` and ``card`` to `fedstream models`."""
    lin = models.add_parser(
        "lineage", parents=[common],
        help="where a version came from: parents, run, round, participants, data fingerprints, code")
    lin.add_argument("version", help="RUN/NNNNNN")
    how = lin.add_mutually_exclusive_group()
    how.add_argument("--graph", action="store_true", help="its ancestors and descendants (see --depth)")
    how.add_argument("--since", default="", metavar="VERSION",
                     help="the versions and rounds on the path from this older version to VERSION")
    lin.add_argument("--depth", type=int, default=3, metavar="N", help="steps up and down with --graph (1-20, default 3)")
    _json_flag(lin)
    lin.set_defaults(func=cmd_lineage)
    card = models.add_parser("card", parents=[common], help="a version's model card, Markdown (or JSON with --json)")
    card.add_argument("version", help="RUN/NNNNNN")
    card.add_argument("-o", "--output", type=Path, default=None, metavar="FILE", help="write it to FILE")
    _json_flag(card)
    card.set_defaults(func=cmd_card)
