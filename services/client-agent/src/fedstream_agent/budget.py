"""A site's own privacy budget under local differential privacy: every locally noised change
that leaves the site is a release of its data, recorded before it leaves in a ledger beside the
agent's identity (``privacy-ledger.json``, replaced whole: a temporary file, fsynced, renamed
over it). Before it trains in such a round the agent checks that one more release keeps the
site's epsilon (the accountant's arithmetic, fedstream.accounting, at the site's own delta)
within its own limit, and declines the round otherwise.

Only local releases are the site's own: under central mode the aggregator noises the sum and
the federation's ledger (the scheduler's) accounts for it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedstream.accounting import local_epsilon
from fedstream.exitcodes import ExitCode
from fedstream.privacy import DPMode
from fedstream.rounds import Assignment, RoundKind
from fedstream.startup import StartupError
from fedstream_agent import metrics as m
from fedstream_agent.settings import AgentPrivacySettings, AgentSettings

log = logging.getLogger(__name__)

LEDGER_FILE = "privacy-ledger.json"
LEDGER_VERSION = 1


@dataclass(frozen=True)
class Release:
    """One locally noised change this site let out: its run and round, the noise multiplier it
    was noised with, and the site's epsilon at ``delta`` once it was recorded."""

    run_id: str
    round: int
    noise_multiplier: float
    epsilon: float
    delta: float
    released_unix: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: object) -> Release:
        """From ``to_dict``'s form; raises ValueError saying what is wrong with it."""
        if not isinstance(d, dict):
            raise ValueError(f"a release is not an object: {d!r:.80}")
        try:
            release = cls(str(d["run_id"]), int(d["round"]), float(d["noise_multiplier"]), float(d["epsilon"]),
                          float(d["delta"]), float(d["released_unix"]))
        except KeyError as e:
            raise ValueError(f"a release lacks {e.args[0]!r}") from None
        except (TypeError, ValueError):
            raise ValueError(f"a release's fields are not numbers: {d!r:.120}") from None
        if not (math.isfinite(release.noise_multiplier) and release.noise_multiplier > 0):
            raise ValueError(f"a release's noise_multiplier must be a positive number, got {release.noise_multiplier!r}")
        return release


def is_local_release(a: Assignment) -> bool:
    """Whether doing ``a`` lets a locally noised change of the site's data leave the site: a
    training round under local differential privacy (a no-op round's change is none)."""
    privacy = a.training.privacy
    return a.kind is RoundKind.TRAIN and privacy is not None and privacy.mode is DPMode.LOCAL and not a.training.no_op


def load_releases(path: Path) -> list[Release]:
    """The releases recorded in ``path``, oldest first (none before the first is recorded).
    Raises StartupError naming the file when it cannot be read or is not a ledger: starting
    over it with an empty ledger would forget the site's releases."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise _unreadable(path, e.strerror or str(e)) from e
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("version") != LEDGER_VERSION or not isinstance(doc.get("releases"), list):
            raise ValueError(f"not a version {LEDGER_VERSION} privacy ledger")
        return [Release.from_dict(r) for r in doc["releases"]]
    except ValueError as e:  # json.JSONDecodeError included
        raise _unreadable(path, str(e)) from e


def _unreadable(path: Path, why: str) -> StartupError:
    return StartupError(
        "tls.identity_dir", path.parent, f"the privacy ledger {path} cannot be read ({why})",
        "restore it from a backup: the agent does not start over it, since an empty ledger would forget this "
        "site's releases (moving it aside starts a new ledger and forgets them)", ExitCode.BAD_DATA,
    )


def write_atomically(path: Path, text: str) -> None:
    """Writes ``path`` whole or not at all: a temporary file beside it, fsynced, renamed over it,
    the directory fsynced. Raises OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class SiteLedger:
    """The site's releases, oldest first, kept in ``path`` (None: in memory only)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.releases: list[Release] = load_releases(path) if path is not None else []

    def epsilon_after(self, noise_multiplier: float, delta: float) -> float:
        """The site's epsilon at ``delta`` were one more release of ``noise_multiplier`` made."""
        return local_epsilon([*(r.noise_multiplier for r in self.releases), noise_multiplier], delta)

    def record(self, release: Release) -> None:
        """Appends ``release``, the file written first; raises OSError (recording nothing) when
        it cannot be written."""
        releases = [*self.releases, release]
        if self.path is not None:
            doc = {"version": LEDGER_VERSION, "releases": [r.to_dict() for r in releases]}
            write_atomically(self.path, json.dumps(doc, indent=1) + "\n")
        self.releases = releases


class SiteBudget:
    """The agent's side of its own privacy budget: which assignments it may do, and the record
    of each release before it leaves."""

    def __init__(self, settings: AgentPrivacySettings, path: Path | None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.ledger = SiteLedger(path)
        self.clock = clock

    @classmethod
    def of(cls, settings: AgentSettings, has_identity: bool) -> SiteBudget:
        """The agent's budget, its ledger in ``tls.identity_dir`` when the agent has an identity
        or a limit of its own (a limit needs a ledger that outlives a restart), else in memory.
        Raises StartupError when the ledger there cannot be read."""
        keep = has_identity or settings.privacy.max_epsilon > 0
        return cls(settings.privacy, settings.tls.identity_dir / LEDGER_FILE if keep else None)

    def admits(self, a: Assignment) -> bool:
        """Whether the agent may do ``a``: yes, unless it is a local release (``is_local_release``)
        that would take the site's epsilon past ``max_epsilon``; then it logs one warning naming
        the limit, counts the assignment as declined and says no (the agent uploads nothing: the
        round goes on without this site, as without any straggler)."""
        limit = self.settings.max_epsilon
        if not limit or not is_local_release(a):
            return True
        assert a.training.privacy is not None
        eps = self.ledger.epsilon_after(a.training.privacy.noise_multiplier, self.settings.delta)
        if eps <= limit:
            return True
        log.warning("round %d of %s declined: one more local release (noise multiplier %g) would take this site's "
                    "epsilon to %.4g, past its own limit privacy.max_epsilon=%g at delta %g (%d releases recorded "
                    "in %s)", a.round, a.run_id, a.training.privacy.noise_multiplier, eps, limit,
                    self.settings.delta, len(self.ledger.releases), self.ledger.path or "memory")
        m.ROUNDS.labels(a.task, a.kind.value, "declined").inc()
        return False

    def release(self, a: Assignment) -> None:
        """Records ``a``'s release before it leaves the site (nothing for an assignment that
        releases nothing). Raises OSError when the ledger cannot be written: the release must
        then not happen."""
        if not is_local_release(a):
            return
        assert a.training.privacy is not None
        z, delta = a.training.privacy.noise_multiplier, self.settings.delta
        eps = self.ledger.epsilon_after(z, delta)
        self.ledger.record(Release(a.run_id, a.round, z, eps, delta, self.clock()))
        log.info("local release recorded: this site's epsilon is %.4g at delta %g after %d releases%s", eps, delta,
                 len(self.ledger.releases), f" (its limit: {self.settings.max_epsilon:g})" if self.settings.max_epsilon else "")
