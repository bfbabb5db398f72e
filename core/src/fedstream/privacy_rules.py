"""Which settings differential privacy and secure aggregation cannot be combined with: one
rule set, applied where a run or federation is created and again by the aggregator when a
round's plan arrives (each refusal is an InvalidArgument naming both settings)."""

from __future__ import annotations

from fedstream.errors import InvalidArgument
from fedstream.privacy import MAX_SECURE_PARTICIPANTS, PrivacySpec, SecureAggregationSpec
from fedstream.strategies import LinearStrategy, RobustStrategy, Strategy


def uses_cosine_weights(strategy: Strategy) -> bool:
    """Whether the strategy weighs updates by the cosine distance its agents report (strategy
    ``cosine``, or ``fedpav`` with ``weights=cosine``)."""
    return strategy.name == "cosine" or getattr(strategy.params, "weights", "") == "cosine"


def weighs_by_examples(strategy: Strategy) -> bool:
    """Whether the strategy weighs each update by its example count alone (the linear
    strategies' default weight, or fedpav with weights=examples): what an agent can apply to its
    change before masking it."""
    if not isinstance(strategy, LinearStrategy):
        return False
    if strategy.name == "fedpav":
        return getattr(strategy.params, "weights", "examples") == "examples"
    return type(strategy).weight is LinearStrategy.weight


def distills(strategy: Strategy) -> bool:
    """Whether some of the strategy's rounds end with server-side distillation."""
    every = getattr(strategy.params, "distill_every", 0)
    return isinstance(every, int) and every > 0


def check_combination(
    strategy: Strategy,
    privacy: PrivacySpec | None,
    secure_aggregation: SecureAggregationSpec | None,
    *,
    compression: str = "none",
    distill: bool = False,
    buffered: bool = False,
    partial: bool = False,
    participants: int = 0,
) -> None:
    """Raises InvalidArgument, naming both settings, when differential privacy (``privacy``) or
    secure aggregation is asked for together with what it cannot work with: a robust strategy
    (it needs individual updates), server-side distillation (it reads each participant's
    model), compression other than none, a buffered asynchronous run, a round shared among
    aggregators; and differential privacy with cosine weights (they would scale an update past
    its clip bound); and secure aggregation with more than MAX_SECURE_PARTICIPANTS
    ``participants`` per round. Checks the specs' ranges too. Nothing is checked when neither
    is set."""
    names = []
    if privacy is not None:
        privacy.check()
        names.append(f"differential privacy (privacy.mode {privacy.mode.value})")
    if secure_aggregation is not None:
        secure_aggregation.check()
        names.append("secure aggregation (secure_aggregation)")
    for name in names:
        if isinstance(strategy, RobustStrategy):
            raise InvalidArgument(
                f"{name} cannot be combined with strategy {strategy.name!r}: a robust strategy needs individual "
                "updates (use a linear strategy such as fedavg or fedpav)"
            )
        if distill or distills(strategy):
            raise InvalidArgument(
                f"{name} cannot be combined with server-side distillation (strategy {strategy.name!r} "
                "strategy.params.distill_every): it reads each participant's model"
            )
        if compression != "none":
            raise InvalidArgument(f"{name} cannot be combined with training.compression {compression!r} (use none)")
        if buffered:
            raise InvalidArgument(f"{name} cannot be combined with a buffered asynchronous run (asynchronous)")
        if partial:
            raise InvalidArgument(f"{name} cannot be combined with a round shared among aggregators (hierarchy)")
    if secure_aggregation is not None:
        _check_secure(strategy, privacy, participants)
    if privacy is not None and uses_cosine_weights(strategy):
        raise InvalidArgument(
            f"differential privacy cannot be combined with cosine weights (strategy {strategy.name!r}): "
            "every update weighs the same under differential privacy"
        )


def _check_secure(strategy: Strategy, privacy: PrivacySpec | None, participants: int) -> None:
    """The rules of secure aggregation alone: its participants, and the weights an agent can
    apply before masking (any under differential privacy: every update weighs 1)."""
    if participants > MAX_SECURE_PARTICIPANTS:
        raise InvalidArgument(
            f"secure aggregation (secure_aggregation) takes at most {MAX_SECURE_PARTICIPANTS} participants per "
            f"round, not {participants}: every agent shares keys with every other (set max_agents)"
        )
    if privacy is None and not isinstance(strategy, RobustStrategy) and not weighs_by_examples(strategy):
        raise InvalidArgument(
            f"secure aggregation (secure_aggregation) cannot be combined with strategy {strategy.name!r}"
            f"{' weights=cosine' if uses_cosine_weights(strategy) and strategy.name == 'fedpav' else ''}: "
            "its weights need each update (under secure aggregation each agent weighs its change by its "
            "example count before masking it; use fedavg, fedprox, fedpav, fedadam, fedyogi or fedadagrad)"
        )
