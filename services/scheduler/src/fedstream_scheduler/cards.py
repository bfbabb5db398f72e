"""Model cards: a version's lineage, evaluations and tensors summarised for people (Markdown) and
programs (JSON). Every value in the Markdown is escaped: agent ids, metric names and versions
come from sites and operators, and a card must not carry their markup, links or HTML."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from fedstream.store import ModelVersion

CARD_SCHEMA_VERSION = 1
# Every ASCII punctuation character may be backslash-escaped in CommonMark.
_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")
# C0 and C1 controls, DEL (a terminal obeys them: CSI is \x1b[ or \x9b), and the bidirectional
# marks, embeddings, overrides and isolates (they reorder what a reader sees).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]+")


def md(value: object) -> str:
    """``value`` as literal Markdown text: control characters (C0, C1, bidirectional) and line
    breaks as spaces, every punctuation character backslash-escaped (no emphasis, link, table
    cell or HTML)."""
    return _PUNCTUATION.sub(r"\\\1", _CONTROL.sub(" ", str(value)))


def tensors_summary(info: ModelVersion) -> dict[str, Any]:
    """A version's tensors in figures: count, parameters, bytes, dtypes, data digest."""
    dtypes: dict[str, int] = {}
    parameters = 0
    for t in info.layout.tensors:
        dtypes[t.dtype] = dtypes.get(t.dtype, 0) + 1
        count = 1
        for n in t.shape:
            count *= n
        parameters += count
    return {"tensors": len(info.layout.tensors), "parameters": parameters, "bytes": info.layout.total_bytes,
            "dtypes": dict(sorted(dtypes.items())), "sha256": info.sha256}


def card_json(doc: dict[str, Any]) -> dict[str, Any]:
    """The card of a lineage document (with ``evaluations`` and ``model`` merged in) as JSON."""
    participants = list(doc.get("participants") or [])
    return {
        "schema_version": CARD_SCHEMA_VERSION,
        "version": doc["version"],
        "model": dict(doc.get("model") or {}),
        "provenance": {k: doc.get(k) for k in (
            "run_id", "round", "kind", "committed_unix", "federation_id", "started_by", "parents")},
        "training": {k: doc.get(k) for k in (
            "task", "strategy", "compression", "distillation", "asynchronous", "training", "privacy")},
        "participants": participants,
        "stragglers": list(doc.get("stragglers") or []),
        "examples": sum(int(p.get("examples", 0)) for p in participants),
        "evaluations": dict(doc.get("evaluations") or {}),
        "code": dict(doc.get("code") or {}),
    }


def _when(unix: Any) -> str:
    try:
        return datetime.fromtimestamp(float(unix), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (TypeError, ValueError, OverflowError, OSError):
        return ""


def _metrics(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{md(k)} {md(_number(v))}" for k, v in sorted(metrics.items()))


def _number(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def card_markdown(card: dict[str, Any]) -> str:
    """The card (``card_json``'s form) as Markdown, every value escaped."""
    prov, train, model = card["provenance"], card["training"], card["model"]
    task = train.get("task") or {}
    strategy = train.get("strategy") or {}
    out = [f"# Model card: {md(card['version'])}", ""]
    out += ["## Model", ""]
    out += [f"- {md(k)}: {md(_number(model[k]))}" for k in ("tensors", "parameters", "bytes", "sha256") if k in model]
    if model.get("dtypes"):
        out.append(f"- dtypes: {md(', '.join(f'{d} x{n}' for d, n in model['dtypes'].items()))}")
    out += ["", "## Provenance", ""]
    out += [f"- run: {md(prov.get('run_id', ''))}, round {md(prov.get('round', ''))} ({md(prov.get('kind', ''))})",
            f"- committed: {md(_when(prov.get('committed_unix')))}",
            f"- federation: {md(prov.get('federation_id') or '-')}",
            f"- started by: {md(prov.get('started_by') or '-')}",
            f"- parents: {md(', '.join(prov.get('parents') or []) or 'none')}"]
    out += ["", "## Training", ""]
    out += [f"- task: {md(task.get('name', ''))} {md(task.get('version', ''))}".rstrip(),
            f"- strategy: {md(strategy.get('name', ''))} {md(_params(strategy.get('params') or {}))}".rstrip(),
            f"- compression: {md(train.get('compression') or 'none')}",
            f"- distillation: {md(_params(train['distillation']) if train.get('distillation') else 'no')}"]
    if train.get("asynchronous"):
        out.append(f"- asynchronous: {md(_params(train['asynchronous']))}")
    if train.get("training"):
        out.append(f"- local training: {md(_params(train['training']))}")
    if train.get("privacy"):
        out.append(f"- differential privacy: {md(_params(train['privacy']))}")
    out += ["", f"## Participants ({len(card['participants'])}, {card['examples']} examples)", ""]
    rows = [[md(p.get("agent_id", "")), md(p.get("examples", 0)), _metrics(p.get("metrics") or {}),
             md(p.get("agent_version", "")), md(p.get("task_version", "")), md(p.get("data_fingerprint", ""))]
            for p in card["participants"]]
    out += _table(["agent", "examples", "metrics", "agent version", "task version", "data fingerprint"], rows)
    out += ["", f"Stragglers: {md(', '.join(card['stragglers']) or 'none')}", "", "## Evaluations", ""]
    evals = card["evaluations"]
    if evals:
        out += _table(["evaluation", "examples", "metrics"], [
            [md(name), md(e.get("examples", "")), _metrics(e.get("metrics") or {})] for name, e in sorted(evals.items())])
    else:
        out.append("None recorded.")
    out += ["", "## Code", ""]
    for service, packages in sorted(card["code"].items()):
        out.append(f"- {md(service)}: {md(', '.join(f'{p} {v}' for p, v in sorted((packages or {}).items())))}")
    return "\n".join(out) + "\n"


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_number(v)}" for k, v in sorted(params.items()))


def model_card(doc: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A version's model card as (Markdown, JSON), from its lineage document with its
    ``evaluations`` (by name) and ``model`` (``tensors_summary``, optionally ``pinned``)
    merged in, as ``LineageService.card`` builds it. Pure: what a release export calls."""
    card = card_json(doc)
    return card_markdown(card), card
