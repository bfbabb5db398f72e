"""The scheduler's Prometheus metrics (docs/metrics.md). ``federation`` is the run's federation,
"none" for a run started on its own."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ROUND_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)

RUNS_STARTED = Counter("fedstream_runs_started_total", "Runs started.", ["tenant", "federation", "trigger"])
RUNS_FINISHED = Counter("fedstream_runs_finished_total", "Runs finished, by final state.",
                        ["tenant", "federation", "state"])
ROUNDS_STARTED = Counter("fedstream_rounds_started_total", "Rounds opened.", ["tenant", "federation", "kind"])
ROUNDS_COMMITTED = Counter("fedstream_rounds_committed_total", "Rounds committed.", ["tenant", "federation", "kind"])
ROUNDS_FAILED = Counter("fedstream_rounds_failed_total", "Rounds failed, by reason.",
                        ["tenant", "federation", "kind", "reason"])
ROUND_DURATION = Histogram("fedstream_round_duration_seconds", "Round duration, open to committed or failed.",
                           ["tenant", "federation", "kind"], buckets=ROUND_BUCKETS)
ROUND_PHASE_DURATION = Histogram(
    "fedstream_round_phase_duration_seconds",
    "Time in each phase of a round: waiting for agents, training (open to aggregating), aggregating.",
    ["tenant", "federation", "phase"], buckets=ROUND_BUCKETS,
)
LAST_COMMIT = Gauge("fedstream_last_committed_round_timestamp_seconds",
                    "Unix time of the federation's latest committed training round.", ["tenant", "federation"])
AGENTS_CONNECTED = Gauge("fedstream_agents_connected", "Agents with an open assignment stream on this replica.",
                         ["tenant"])
AGENTS_REGISTERED = Gauge("fedstream_agents", "Registered agents by status (alive, stale, disabled).",
                          ["tenant", "status"])
AGENTS_SELECTED = Counter("fedstream_agents_selected_total", "Participants selected, summed over rounds.",
                          ["tenant", "federation"])
STRAGGLERS = Counter("fedstream_stragglers_total", "Selected agents whose update missed the round.",
                     ["tenant", "federation"])
UPDATES_NOT_NEEDED = Counter("fedstream_updates_not_needed_total", "Participants of over-selected rounds whose "
                             "work ended unneeded: the round closed on its target_updates without them.",
                             ["tenant", "federation"])
SCHEDULED_SLOTS = Counter("fedstream_schedule_slots_total", "Cron slots of scheduled federations, by outcome "
                          "(started, missed, skipped_running).", ["tenant", "federation", "outcome"])
SCHEDULED_FEDERATIONS = Gauge("fedstream_scheduled_federations", "Federations with a schedule.", ["tenant"])
SCHEDULES_BROKEN = Gauge("fedstream_schedules_broken", "Scheduled federations whose schedule cannot fire (an "
                         "expression that never matches, a time zone no longer known).", ["tenant"])


def failure_reason(reason: str) -> str:
    """A bounded label for a round's failure reason."""
    text = reason.lower()
    for key, label in (
        ("deadline", "deadline"),
        ("not enough agents", "no_agents"),
        ("agents", "no_agents"),
        ("aggregator refused", "aggregator_refused"),
        ("aggregator unreachable", "aggregator_unreachable"),
        ("lost the round", "aggregator_lost_round"),
        ("commit failed", "commit_failed"),
        ("distillation", "distillation"),
    ):
        if key in text:
            return label
    return "other"
# Differential privacy: the epsilon a federation's ledger has spent (federation "none" never:
# a run without a federation keeps a ledger of its own, reported on the run), and its budget.
PRIVACY_EPSILON_SPENT = Gauge("fedstream_privacy_epsilon_spent", "Epsilon the federation's training rounds have "
                              "spent, at its delta (charged when each round opens).", ["tenant", "federation"])
PRIVACY_EPSILON_BUDGET = Gauge("fedstream_privacy_epsilon_budget", "The federation's epsilon budget.",
                               ["tenant", "federation"])
