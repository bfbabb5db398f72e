"""What an agent reports of itself with each update, for the lineage of the versions it helps
make: its package version, its task plug-in's name and version, and its data set's fingerprint.

Each is at most ``MAX_PROVENANCE_CHARS`` printable ASCII characters; the aggregator refuses an
upload whose header carries anything else (InvalidArgument naming the field), so what a
lineage document or a model card shows of a site is bounded and plain.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedstream.errors import InvalidArgument
from fedstream.rounds import UpdateReport

MAX_PROVENANCE_CHARS = 128
PROVENANCE_FIELDS = ("agent_version", "task_version", "data_fingerprint")


def check_provenance_field(name: str, value: str) -> str:
    """``value``, when it is at most MAX_PROVENANCE_CHARS printable ASCII characters (empty
    allowed: an agent that does not report it); raises InvalidArgument naming ``name``."""
    if len(value) > MAX_PROVENANCE_CHARS:
        raise InvalidArgument(f"{name} has {len(value)} characters; at most {MAX_PROVENANCE_CHARS}")
    bad = next((c for c in value if not (" " <= c <= "~")), None)
    if bad is not None:
        raise InvalidArgument(f"{name} holds {bad!r}: only printable ASCII characters are allowed")
    return value


def clip(value: str) -> str:
    """``value`` made acceptable: non-printable characters as "?", cut to MAX_PROVENANCE_CHARS."""
    return "".join(c if " " <= c <= "~" else "?" for c in value[:MAX_PROVENANCE_CHARS])


@dataclass(frozen=True)
class Provenance:
    """An update's provenance (each field "" when the agent did not report it)."""

    agent_version: str = ""
    task_version: str = ""
    data_fingerprint: str = ""

    def report(
        self, agent_id: str, num_examples: int, metrics: dict[str, float], bytes_received: int, weight: float,
        base_version: str = "",
    ) -> UpdateReport:
        """The report of a counted update that carried this provenance."""
        return UpdateReport(
            agent_id, num_examples, metrics, bytes_received, weight, agent_version=self.agent_version,
            task_version=self.task_version, data_fingerprint=self.data_fingerprint, base_version=base_version,
        )

    @classmethod
    def checked(cls, agent_version: str, task_version: str, data_fingerprint: str) -> Provenance:
        """Raises InvalidArgument naming the first field that is too long or not printable."""
        return cls(
            check_provenance_field("agent_version", agent_version),
            check_provenance_field("task_version", task_version),
            check_provenance_field("data_fingerprint", data_fingerprint),
        )
