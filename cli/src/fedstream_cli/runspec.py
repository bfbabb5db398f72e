"""The run-spec flags, defined once: `federations create|update` send them over the admin API,
`grpc run-start` over gRPC, `demo` takes a few. Defaults are the admin API's RunSpec defaults."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any

STRATEGIES = ("fedavg, uniform, fedprox, fedpav, cosine, fedadagrad, fedyogi, fedadam, median, "
              "trimmed-mean, multi-krum")


@dataclass(frozen=True)
class SpecFlag:
    """One flag and where its value goes in the run spec (``training.local_epochs``: nested)."""

    flag: str
    field: str
    type: type
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    # Left out of the spec unless given (no default, not required).
    optional: bool = False

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")


FLAGS = (
    SpecFlag("--task", "task", str, None, "task name from the registry, e.g. digits"),
    SpecFlag("--rounds", "rounds", int, 1, "training rounds to commit"),
    SpecFlag("--min-agents", "min_agents", int, 1, "alive agents needed before a round opens"),
    SpecFlag("--max-agents", "max_agents", int, 0, "agents selected per round at most (0: no limit)"),
    SpecFlag("--fraction", "fraction", float, 1.0, "share of the live agents selected per round"),
    SpecFlag("--round-timeout", "round_timeout_s", float, 300.0, "seconds until a round's deadline"),
    SpecFlag("--min-updates", "min_updates", int, 0, "updates needed to commit at the deadline (0: min-agents)"),
    SpecFlag("--target-updates", "target_updates", int, 0,
             "over-selection: a training round commits on this many updates, the others' work ends (0: all)"),
    SpecFlag("--fairness-floor", "selection.fairness_floor", float, 0.2,
             "with --prefer-fast: share of each round's seats drawn uniformly among the live agents"),
    SpecFlag("--epochs", "training.local_epochs", int, 1, "local epochs per round"),
    SpecFlag("--batch-size", "training.batch_size", int, 32, "local batch size"),
    SpecFlag("--lr", "training.learning_rate", float, 0.05, "local learning rate"),
    SpecFlag("--seed", "training.seed", int, 0, "seed for the agents' initialisation and shuffling"),
    SpecFlag("--compression", "training.compression", str, "none", "how updates travel",
             ("none", "float16", "bfloat16", "int8")),
    SpecFlag("--strategy", "strategy.name", str, "fedavg", f"aggregation strategy: {STRATEGIES}"),
    SpecFlag("--initial-version", "initial_version", str, "",
             "start from this model version (RUN/NNNNNN) instead of an init round"),
    SpecFlag("--wait-for-agents", "wait_for_agents_s", float, 60.0, "seconds to wait for min-agents"),
    SpecFlag("--evaluate-every", "evaluate_every", int, 0,
             "federated evaluation of the new version after every N training rounds and after the last (0: never)"),
    SpecFlag("--async-buffer-size", "asynchronous.buffer_size", int, None,
             "buffered asynchronous run (FedBuff): updates per committed version (K); --rounds then counts versions",
             optional=True),
    SpecFlag("--async-concurrency", "asynchronous.concurrency", int, None,
             "buffered asynchronous run: agents training at once (C)", optional=True),
    SpecFlag("--staleness", "asynchronous.staleness.function", str, None,
             "asynchronous run: how staleness weighs an update (default polynomial)",
             ("constant", "polynomial", "hinge"), optional=True),
    SpecFlag("--staleness-a", "asynchronous.staleness.a", float, None,
             "asynchronous run: the polynomial's exponent or the hinge's slope (default 0.5)", optional=True),
    SpecFlag("--staleness-b", "asynchronous.staleness.b", float, None,
             "asynchronous run: the hinge's point (default 0)", optional=True),
    SpecFlag("--max-staleness", "asynchronous.max_staleness", int, None,
             "asynchronous run: updates more versions behind are refused as stale (default 10)", optional=True),
    SpecFlag("--dp", "privacy.mode", str, None,
             "differential privacy: central (the aggregator clips and noises) or local (each agent does); "
             "needs --clip-norm, --noise-multiplier, --epsilon-budget and --delta", ("central", "local"), optional=True),
    SpecFlag("--clip-norm", "privacy.clip_norm", float, None, "with --dp: L2 bound of each update's change",
             optional=True),
    SpecFlag("--noise-multiplier", "privacy.noise_multiplier", float, None,
             "with --dp: the noise's standard deviation is this times --clip-norm", optional=True),
    SpecFlag("--epsilon-budget", "privacy.epsilon_budget", float, None,
             "with --dp: the most epsilon the federation's runs may spend; a round past it ends the run",
             optional=True),
    SpecFlag("--delta", "privacy.delta", float, None, "with --dp: the delta epsilon is accounted at", optional=True),
    SpecFlag("--max-dropout", "secure_aggregation.max_dropout", float, None,
             "secure aggregation: share of participants that may drop out (default 0.3)", optional=True),
    SpecFlag("--clip-range", "secure_aggregation.clip_range", float, None,
             "secure aggregation: each coordinate of a change is clipped to +-this before quantizing (default 1)",
             optional=True),
    SpecFlag("--step-timeout", "secure_aggregation.step_timeout_s", float, None,
             "secure aggregation: seconds each protocol step waits for the participants (default 60)", optional=True),
)
BY_DEST = {f.dest: f for f in FLAGS}


def add_spec_arguments(parser: argparse.ArgumentParser, *, defaults: bool = True,
                       only: tuple[str, ...] = ()) -> None:
    """Adds the run-spec flags (those named in ``only`` when given, by dest). Without
    ``defaults`` a flag left out is left out of the spec: what `federations update` changes."""
    group = parser.add_argument_group("run spec")
    for f in FLAGS:
        if only and f.dest not in only:
            continue
        default = f.default if defaults else None
        required = defaults and f.default is None and not f.optional
        shown = " (required)" if required else " (default: %(default)s)" if defaults and f.default not in ("", None) else ""
        group.add_argument(f.flag, type=f.type, default=default, required=required, help=f.help + shown,
                           choices=f.choices or None, metavar=None if f.choices else f.dest.upper())
    if only:
        return
    group.add_argument("--strategy-param", action="append", default=[] if defaults else None, metavar="KEY=VALUE",
                       help="a strategy parameter, e.g. mu=0.01 or weights=cosine (repeatable; JSON values)")
    group.add_argument("--evaluate-only", action="store_true", default=False if defaults else None,
                       help="train nothing: one federated evaluation of --initial-version")
    group.add_argument("--prefer-fast", action=argparse.BooleanOptionalAction, default=False if defaults else None,
                       help="select the agents likely to finish first, by their measured speed (see --fairness-floor)")
    group.add_argument("--secure-aggregation", action="store_true", default=False,
                       help="secure aggregation (SecAgg): the aggregator learns only the sum of each training round's "
                       "updates; agents sign their keys with their TLS identities, so plaintext agents take no part "
                       "(see --max-dropout, --clip-range, --step-timeout)")


def strategy_params(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` items as a dict, each value read as JSON when it is JSON, else as text."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--strategy-param takes KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def spec_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The run spec (admin API JSON, field for field the gRPC RunSpec) of the flags given."""
    spec: dict[str, Any] = {}
    values = {f.field: getattr(args, f.dest) for f in FLAGS if f.dest in vars(args)}
    if vars(args).get("strategy_param") is not None:
        values["strategy.params"] = strategy_params(args.strategy_param)
    for flag, field in (("evaluate_only", "evaluate_only"), ("prefer_fast", "selection.prefer_fast")):
        if vars(args).get(flag) is not None:
            values[field] = vars(args)[flag]
    if vars(args).get("secure_aggregation"):
        spec["secure_aggregation"] = {}
    for field, value in values.items():
        if value is None:
            continue
        *parents, leaf = field.split(".")
        node = spec
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return spec
