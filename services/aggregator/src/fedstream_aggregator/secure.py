"""Secure aggregation rounds on the aggregator: the protocol's server session driven by the
agents' calls (each step closes when every expected agent answered, or ``step_timeout_s``
passed with at least the threshold; after the masked inputs, the survivors sign the list of
survivors before any of them reveals a share), masked updates folded by modular addition into one ring
accumulator of the model's floating elements, and the finisher that unmasks the sum chunk by
chunk, adds the base back and applies the strategy's server update.

The protocol's state lives in memory only: after a restart its rounds are failed, never
resumed from masked updates (``Recovery``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from fedstream.dp import add_noise, noise_generator
from fedstream.errors import (
    InvalidArgument,
    ProtocolViolation,
    SecureAggregationFailed,
)
from fedstream.privacy import DPMode, SecureAggregationSpec
from fedstream.rounds import RoundPlan
from fedstream.secagg import messages as msg
from fedstream.secagg.quantize import dequantize, masked_layout, max_weight
from fedstream.secagg.server import Correction, ServerSession, ServerStep
from fedstream.secagg.signing import Trust
from fedstream.tensors import Layout, TensorSpec
from fedstream_aggregator import metrics as m
from fedstream_aggregator.blocks import Blocks
from fedstream_aggregator.finishers import LinearFinisher
from fedstream_aggregator.rounds import Round

# The longest a long-polling call waits for a step to close, whatever the agent asks.
MAX_WAIT_S = 10.0
# Bytes of a masked update read at a time when it is folded, and of the sum when it is unmasked.
RING_PIECE_BYTES = 1 << 20


def secure_weight(plan: RoundPlan, num_examples: int) -> int:
    """The weight an agent applies to its change before masking: its example count, or 1 under
    differential privacy (every update weighs the same). Raises InvalidArgument for a count
    below 1, or above what one update of the round may weigh (``max_weight``: more could make
    the round's sum overflow the ring and fail it for every participant)."""
    if plan.privacy is not None:
        return 1
    if num_examples < 1:
        raise InvalidArgument("a masked update needs its number of examples (at least 1)")
    assert plan.secure_aggregation is not None
    n, clip = len(plan.participants), plan.secure_aggregation.clip_range
    most = max_weight(clip, n)
    if num_examples > most:
        raise InvalidArgument(
            f"num_examples {num_examples} is more than a masked update of this round may weigh ({most}: the sum "
            f"of {n} participants' updates at clip range {clip:g} must fit the ring)"
        )
    return num_examples


class SecureRound:
    """The protocol of one training round, with its ring accumulator. ``on_fail(reason)`` fails
    the round (set when the round is built)."""

    def __init__(self, plan: RoundPlan, layout: Layout, *, tenant: str, clock: Callable[[], float] = time.monotonic) -> None:
        assert plan.secure_aggregation is not None
        self.plan = plan
        self.spec: SecureAggregationSpec = plan.secure_aggregation
        self.wire = masked_layout(layout)
        self.session = ServerSession(plan.run_id, str(plan.round), plan.participants, self.spec)
        self.tenant = tenant
        self.clock = clock
        self.changed = threading.Condition()
        self.step_started = clock()
        self.on_fail: Callable[[str], None] = lambda reason: None
        self.sums = np.zeros(sum(t.numel for t in self.wire.tensors), dtype=np.uint64)
        self.step_seconds: dict[str, float] = {}

    # -- steps ------------------------------------------------------------------------------

    def _close_step_locked(self) -> str:
        """Closes the open advertise or share step (the caller holds ``changed``); returns the
        failure reason, "" when it closed."""
        step = self.session.step
        missing = len(self.session.expected() - self.session.answered())
        try:
            if step is ServerStep.ADVERTISE:
                self.session.close_advertise()
            elif step is ServerStep.SHARE:
                self.session.close_share()
        except SecureAggregationFailed as e:
            return e.public
        finally:
            self._closed(step.value, missing)
        return ""

    def _closed(self, step: str, missing: int) -> None:
        now = self.clock()
        self.step_seconds[step] = now - self.step_started
        m.SECAGG_STEP_SECONDS.labels(self.tenant, step).observe(now - self.step_started)
        if missing:
            m.SECAGG_DROPOUTS.labels(self.tenant, step).inc(missing)
        self.step_started = now
        self.changed.notify_all()

    def advance(self) -> None:
        """Closes the advertise or share step when every agent answered or its timeout passed;
        a step closed below the threshold fails the round."""
        with self.changed:
            step = self.session.step
            if step not in (ServerStep.ADVERTISE, ServerStep.SHARE):
                return
            timed_out = self.clock() - self.step_started >= self.spec.step_timeout_s
            if not (self.session.complete() or timed_out):
                return
            reason = self._close_step_locked()
        if reason:
            self.on_fail(reason)

    def _wait(self, ready: Callable[[], bool], wait_s: float, cap: float = MAX_WAIT_S) -> bool:
        """Waits (at most ``wait_s``, capped at ``cap``) for ``ready``, advancing steps whose
        time is up; raises SecureAggregationFailed when the round's protocol failed meanwhile."""
        if not (0 <= wait_s < float("inf")):
            raise InvalidArgument("wait_s must be a finite number of seconds, not negative")
        end = self.clock() + min(wait_s, cap)
        while True:
            self.advance()
            with self.changed:
                if self.session.step is ServerStep.FAILED:
                    raise SecureAggregationFailed(f"secure aggregation failed: {self.session.reason}")
                if ready():
                    return True
                left = end - self.clock()
                if left <= 0:
                    return False
                step_left = self.step_started + self.spec.step_timeout_s - self.clock()
                self.changed.wait(max(0.01, min(left, step_left if step_left > 0 else left)))

    def advertise(self, message: msg.AdvertiseKeys, trust: Trust | None = None) -> None:
        """Records signed keys (checked against ``trust``, the tenant's authority, when given)."""
        with self.changed:
            self.session.advertise(message, trust)
        self.advance()

    def roster(self, agent_id: str, wait_s: float) -> msg.Roster | None:
        """The roster once the advertise step closed; None if it is still open after the wait."""
        self._member(agent_id)
        if not self._wait(lambda: self.session.step is not ServerStep.ADVERTISE, wait_s):
            return None
        return self.session.roster()

    def share_keys(self, message: msg.ShareKeys) -> None:
        with self.changed:
            self.session.share_keys(message)
        self.advance()

    def shares(self, agent_id: str, wait_s: float) -> msg.SharesDelivery | None:
        """The shares addressed to the agent once the share step closed; None if still open."""
        self._member(agent_id)
        open_steps = (ServerStep.ADVERTISE, ServerStep.SHARE)
        if not self._wait(lambda: self.session.step not in open_steps, wait_s):
            return None
        with self.changed:
            return self.session.deliver(agent_id)

    def survivors(self, agent_id: str, wait_s: float) -> tuple[str, ...] | None:
        """The survivors (U3) once the round stopped taking masked inputs; None if it still
        takes them after the wait."""
        self._member(agent_id)
        open_steps = (ServerStep.ADVERTISE, ServerStep.SHARE, ServerStep.UPLOAD)
        if not self._wait(lambda: self.session.step not in open_steps, wait_s):
            return None
        return self.session.survivors()

    def confirm(self, signature: msg.SurvivorSignature, trust: Trust | None = None) -> None:
        """Records a survivor's signature over the survivors."""
        with self.changed:
            self.session.confirm(signature, trust)
            self.changed.notify_all()

    def unmask_request(self, agent_id: str, wait_s: float) -> msg.UnmaskRequest | None:
        """What the survivors reveal, with the survivors' signatures, once the consistency
        check closed."""
        self._member(agent_id)
        if not self._wait(lambda: self.session.step in (ServerStep.UNMASK, ServerStep.DONE), wait_s):
            return None
        return self.session.request()

    def unmask(self, response: msg.UnmaskResponse) -> None:
        with self.changed:
            self.session.unmask(response)
            self.changed.notify_all()

    def _member(self, agent_id: str) -> None:
        if agent_id not in self.session.participants:
            raise ProtocolViolation(f"agent {agent_id!r} is not a participant of this secure aggregation round")

    # -- masked inputs ----------------------------------------------------------------------

    def check_upload(self, agent_id: str) -> None:
        """Raises ProtocolViolation (FAILED_PRECONDITION) unless the agent may upload now."""
        self.advance()
        with self.changed:
            self.session.check_upload(agent_id)

    def fold(self, read_into: Callable[[int, memoryview], None], agent_id: str, weight: int) -> None:
        """Adds one masked update (verified, in the ``wire`` layout) to the ring sum, piece by
        piece, and records its weight (the caller holds the round's lock)."""
        with self.changed:
            self.session.check_upload(agent_id)
            piece = bytearray(RING_PIECE_BYTES)
            for start in range(0, self.wire.total_bytes, RING_PIECE_BYTES):
                n = min(RING_PIECE_BYTES, self.wire.total_bytes - start)
                view = memoryview(piece)[:n]
                read_into(start, view)
                self.sums[start // 8 : (start + n) // 8] += np.frombuffer(view, dtype="<u8")
            self.session.uploaded(agent_id, weight)

    def all_uploaded(self) -> bool:
        """Whether every agent that shared keys uploaded (the round then closes)."""
        with self.changed:
            return self.session.step is ServerStep.UPLOAD and self.session.complete()

    # -- the end ----------------------------------------------------------------------------

    def finish_protocol(self) -> Correction:
        """Closes the upload step (the round closed), waits for the survivors' signatures, then
        for the unmask answers (each step: every agent it waits for, or ``step_timeout_s`` with
        the threshold) and reconstructs the correction. Raises SecureAggregationFailed naming
        the step that failed."""
        self.advance()
        with self.changed:
            if self.session.step in (ServerStep.ADVERTISE, ServerStep.SHARE):
                self.session.fail(f"the round closed during the {self.session.step.value} step")
            missing = len(self.session.expected() - self.session.answered())
            self.session.close_upload()
            self._closed("upload", missing)
        self._wait(self.session.complete, self.spec.step_timeout_s, cap=self.spec.step_timeout_s)
        with self.changed:
            missing = len(self.session.expected() - self.session.answered())
            try:
                self.session.close_consistency()
            finally:
                self._closed("consistency", missing)
        self._wait(self.session.complete, self.spec.step_timeout_s, cap=self.spec.step_timeout_s)
        with self.changed:
            missing = len(self.session.expected() - self.session.answered())
            try:
                return self.session.close_unmask()
            finally:
                self._closed("unmask", missing)

    def means(
        self, correction: Correction, model: Layout, base: Callable[[TensorSpec], np.ndarray]
    ) -> Iterator[tuple[TensorSpec, int, np.ndarray]]:
        """Every tensor of ``model`` piece by piece in layout order: for a floating one the mean
        change (the ring sum unmasked, dequantized, divided by the total weight, centrally
        noised when the plan says so), for any other the base's values (they do not travel)."""
        total, count = self.session.total_weight(), len(self.session.request().seed_of)
        generator = noise_generator()
        per_piece = RING_PIECE_BYTES // 8
        offset = 0
        for spec in model.tensors:
            if not spec.dt.is_float:
                yield spec, 0, base(spec)
                continue
            for first in range(0, spec.numel, per_piece):
                n = min(per_piece, spec.numel - first)
                ring = correction.unmask(self.sums[offset + first : offset + first + n], offset + first)
                yield spec, first, central_noise(self.plan, dequantize(ring) / total, count, generator)
            offset += spec.numel

    def figures(self) -> dict[str, Any]:
        """The ``secure_aggregation`` block of the round's lineage."""
        with self.changed:
            out = self.session.figures()
        out["step_seconds"] = dict(self.step_seconds)
        out["clip_range"] = self.spec.clip_range
        return out

    def release(self) -> None:
        """Frees the ring accumulator (the round is over)."""
        self.sums = np.zeros(0, dtype=np.uint64)


def central_noise(plan: RoundPlan, mean_change: np.ndarray, count: int, generator: np.random.Generator) -> np.ndarray:
    """Central differential privacy on the unmasked mean of ``count`` changes the agents clipped
    to the clip norm (each weighing 1): Gaussian noise of deviation z * C / count
    (``fedstream.dp``), added in place; the mean as it is without central privacy."""
    if plan.privacy is None or plan.privacy.mode is not DPMode.CENTRAL:
        return mean_change
    add_noise(generator, mean_change, plan.privacy.noise_multiplier * plan.privacy.clip_norm / count)
    return mean_change


class SecureFinisher(LinearFinisher):
    """The linear finisher over a secure aggregation round's unmasked sum; its lineage carries
    the protocol's figures (``secure_aggregation``)."""

    def noise(self, rnd: Round) -> None:
        """None: central noise is added to the unmasked mean (``SecureRound.means``)."""
        return None

    def means(self, rnd: Round, base: Blocks | None) -> Iterator[tuple[TensorSpec, int, np.ndarray]]:
        secure, layout = rnd.secure, rnd.layout
        assert secure is not None and layout is not None and base is not None
        correction = secure.finish_protocol()
        return secure.means(correction, layout, base.tensor)

    @staticmethod
    def lineage(rnd: Round, version: str, figures: dict[str, float]) -> dict[str, Any]:
        doc = LinearFinisher.lineage(rnd, version, figures)
        assert rnd.secure is not None
        doc["secure_aggregation"] = rnd.secure.figures()
        return doc
