"""The agent's Prometheus metrics (docs/metrics.md)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

TRAIN_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

TRAIN_SECONDS = Histogram("fedstream_agent_train_seconds", "Local training time per round.", ["task"],
                          buckets=TRAIN_BUCKETS)
SAMPLES = Counter("fedstream_agent_samples_total", "Training examples processed (epochs included).", ["task"])
ROUNDS = Counter("fedstream_agent_rounds_total", "Assignments handled, by kind and outcome.",
                 ["task", "kind", "outcome"])
BYTES_UPLOADED = Counter("fedstream_agent_upload_bytes_total", "Bytes of updates uploaded.", ["task"])
