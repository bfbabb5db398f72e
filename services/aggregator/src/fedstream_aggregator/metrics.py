"""The aggregator's Prometheus metrics (docs/metrics.md)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from fedstream.metrics import OPERATION_BUCKETS

UPDATES_FOLDED = Counter("fedstream_updates_counted_total", "Updates verified and counted, by round kind.",
                         ["tenant", "kind"])
UPDATES_REJECTED = Counter("fedstream_updates_rejected_total", "Uploads refused, by reason (the error code).",
                           ["tenant", "reason"])
LATE_UPDATES = Counter("fedstream_late_updates_total", "Uploads refused because their round had closed with the "
                       "updates it needed (over-selection's unneeded work; never counted).", ["tenant"])
BYTES_RECEIVED = Counter("fedstream_update_bytes_received_total", "Bytes of update chunks received (refused uploads included).",
                         ["tenant"])
CHUNKS_RECEIVED = Counter("fedstream_update_chunks_received_total", "Update chunks received.", ["tenant"])
BYTES_SENT = Counter("fedstream_model_bytes_sent_total", "Bytes of model chunks sent to downloaders.", ["tenant"])
CHUNKS_SENT = Counter("fedstream_model_chunks_sent_total", "Model chunks sent to downloaders.", ["tenant"])
AGGREGATION_SECONDS = Histogram(
    "fedstream_aggregation_seconds", "Time from a round's close to its committed version (strategy finish, "
    "distillation, write).", ["tenant", "strategy"], buckets=OPERATION_BUCKETS,
)
COMMITS = Counter("fedstream_aggregator_rounds_total", "Rounds this aggregator finished, by outcome.",
                  ["tenant", "kind", "outcome"])
STALENESS = Histogram(
    "fedstream_update_staleness", "Buffered asynchronous updates counted, by staleness (buffers opened since the "
    "update's base).", ["tenant"], buckets=(0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
)
BUFFER_FILL = Gauge("fedstream_buffer_fill", "Updates counted in the open buffer of asynchronous runs, as a share "
                    "of the buffer size (the newest buffer counted into).", ["tenant"])
DP_UPDATES_CLIPPED = Counter(
    "fedstream_dp_updates_clipped_total", "Updates of rounds under central differential privacy whose change was "
    "clipped to the clip norm (a count only: norms would leak).", ["tenant"],
)
SECAGG_DROPOUTS = Counter(
    "fedstream_secagg_dropouts_total", "Participants of secure aggregation rounds that did not answer a protocol "
    "step (advertise, share_keys, upload, consistency, unmask), by the step they dropped at.", ["tenant", "step"],
)
SECAGG_STEP_SECONDS = Histogram(
    "fedstream_secagg_step_seconds", "Time a secure aggregation step stayed open, from its start to its close.",
    ["tenant", "step"], buckets=OPERATION_BUCKETS,
)
