"""An agent's side of secure aggregation over gRPC: the client session of the protocol driven
through the aggregator's SecureAggregation service (advertise signed keys right after the
assignment, check the roster and share keys, then, once trained, the masked change as int64
tensors for the ordinary upload, the signature over the survivors, and the answer to the unmask
request). The agent signs with its TLS identity: without one (tls.insecure_plaintext) it takes
no part in secure aggregation rounds."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TypeVar

import grpc
import numpy as np
import torch

from fedstream.dp import add_noise, clip_tensors, noise_generator
from fedstream.errors import ProtocolViolation, SecureAggregationFailed
from fedstream.pki import TlsIdentity
from fedstream.privacy import DPMode, PrivacySpec, SecureAggregationSpec
from fedstream.rounds import Assignment, RoundKind
from fedstream.secagg import messages as msg
from fedstream.secagg import shamir
from fedstream.secagg.client import ClientSession
from fedstream.secagg.quantize import masked_layout, quantize
from fedstream.secagg.signing import Credentials
from fedstream.tensors import Layout
from fedstream.v1 import secagg_pb2 as pb
from fedstream.v1 import secagg_pb2_grpc as pb_grpc
from fedstream_tasks.torchio import layout_of

log = logging.getLogger(__name__)

# Seconds each long-polling call asks the aggregator to wait (it caps them).
POLL_S = 10.0
# Elements masked at a time.
MASK_PIECE = 1 << 17

R = TypeVar("R")



class SecureAggregationClient:
    """One agent's secure aggregation of one round: it signs with ``credentials`` and checks
    the roster against ``participants`` (the scheduler's selection, from the assignment).
    ``give_up_unix``: when the agent stops waiting for a step (the round's deadline and the
    timeouts of the consistency check and the unmask step after it)."""

    def __init__(
        self, channel: grpc.Channel, run_id: str, round_: int, agent_id: str, spec: SecureAggregationSpec,
        credentials: Credentials, participants: Iterable[str], *, give_up_unix: float, rpc_timeout_s: float = 30.0,
    ) -> None:
        self.stub = pb_grpc.SecureAggregationStub(channel)
        self.run_id, self.round, self.agent_id = run_id, round_, agent_id
        self.spec = spec
        self.session = ClientSession(run_id, str(round_), agent_id, spec, credentials, tuple(participants))
        self.give_up_unix = give_up_unix
        self.rpc_timeout_s = rpc_timeout_s
        # What the protocol's messages cost this agent (the masked upload aside).
        self.bytes_sent = 0
        self.bytes_received = 0
        self.calls = 0

    def _step(self) -> pb.StepRequest:
        return pb.StepRequest(run_id=self.run_id, round=self.round, agent_id=self.agent_id, wait_s=POLL_S)

    def _poll(self, call: Callable[[pb.StepRequest], R], ready: Callable[[R], bool], what: str) -> R:
        request = self._step()
        while True:
            answer = call(request)
            self.calls += 1
            self.bytes_sent += request.ByteSize()
            self.bytes_received += answer.ByteSize()  # type: ignore[attr-defined]
            if ready(answer):
                return answer
            if time.time() > self.give_up_unix:
                raise SecureAggregationFailed(f"gave up waiting for {what}")

    def advertise(self) -> None:
        """Step 0: sends the agent's signed public keys."""
        keys = self.session.advertise()
        request = pb.AdvertiseRequest(run_id=self.run_id, round=self.round, agent_id=self.agent_id,
                                      c_pk=keys.c_pk, s_pk=keys.s_pk, signature=keys.signature,
                                      certificate=keys.certificate)
        self.stub.Advertise(request, timeout=self.rpc_timeout_s)
        self.bytes_sent += request.ByteSize()
        self.calls += 1

    def share_keys(self) -> None:
        """Step 1: waits for the roster, checks every entry's certificate and signature, then
        sends the encrypted shares. Raises ProtocolViolation, sharing nothing, for a roster it
        refuses (naming the entry and why)."""
        got = self._poll(lambda r: self.stub.GetRoster(r, timeout=self.rpc_timeout_s + POLL_S),
                         lambda a: a.ready, "the roster")
        roster = msg.Roster(
            tuple(msg.AdvertiseKeys(e.agent_id, bytes(e.c_pk), bytes(e.s_pk), bytes(e.signature), bytes(e.certificate))
                  for e in got.entries),
            got.participants, got.threshold,
        )
        message = self.session.share_keys(roster)
        request = pb.ShareKeysRequest(
            run_id=self.run_id, round=self.round, agent_id=self.agent_id, seed_commitment=message.seed_commitment,
            shares=[pb.EncryptedShare(sender=s.sender, recipient=s.recipient, ciphertext=s.ciphertext)
                    for s in message.shares],
        )
        self.stub.ShareKeys(request, timeout=self.rpc_timeout_s)
        self.bytes_sent += request.ByteSize()
        self.calls += 1

    def receive_shares(self) -> int:
        """Step 2: waits for the shares the others sealed to this agent; returns how many
        agents shared keys (this one included)."""
        got = self._poll(lambda r: self.stub.GetShares(r, timeout=self.rpc_timeout_s + POLL_S),
                         lambda a: a.ready, "the shares")
        self.session.receive_shares(msg.SharesDelivery(
            tuple(got.senders),
            tuple(msg.EncryptedShare(s.sender, s.recipient, bytes(s.ciphertext)).check() for s in got.shares),
        ))
        return len(got.senders)

    def masked(
        self, layout: Layout, change: Mapping[str, np.ndarray], weight: int
    ) -> tuple[Layout, Iterator[memoryview]]:
        """The masked update of ``change`` (the change of every floating tensor of ``layout``,
        by name) weighted by ``weight``: its layout and one buffer per tensor of it, masked
        piece by piece as it is read (the same bytes each time: a resumed upload sends what
        the first attempt sent). One tensor's masked bytes are held at a time."""
        wire = masked_layout(layout)

        def tensors() -> Iterator[memoryview]:
            offset = 0
            for t in layout.tensors:
                if not t.dt.is_float:
                    continue
                flat = np.asarray(change[t.name]).reshape(-1)
                out = np.empty(flat.size, dtype="<u8")
                for first in range(0, flat.size, MASK_PIECE):
                    q = quantize(flat[first : first + MASK_PIECE], weight, self.spec.clip_range)
                    out[first : first + q.size] = self.session.mask(q, offset + first)
                yield out.data.cast("B")
                offset += flat.size

        return wire, tensors()

    def confirm(self) -> None:
        """Step 3, the consistency check: waits for the survivors and sends this agent's
        signature over them (once)."""
        got = self._poll(lambda r: self.stub.GetSurvivors(r, timeout=self.rpc_timeout_s + POLL_S),
                         lambda a: a.ready, "the survivors")
        signed = self.session.confirm(tuple(got.survivors))
        request = pb.ConfirmSurvivorsRequest(run_id=self.run_id, round=self.round, agent_id=self.agent_id,
                                             signature=signed.signature)
        self.stub.ConfirmSurvivors(request, timeout=self.rpc_timeout_s)
        self.bytes_sent += request.ByteSize()
        self.calls += 1

    def unmask(self) -> None:
        """Step 4: waits for the unmask request and answers it (once), after checking the
        survivors' signatures. Raises ProtocolViolation, revealing nothing, for a request
        it refuses."""
        got = self._poll(lambda r: self.stub.GetUnmaskRequest(r, timeout=self.rpc_timeout_s + POLL_S),
                         lambda a: a.ready, "the unmask request")
        signatures = tuple(msg.SurvivorSignature(s.agent_id, bytes(s.signature)) for s in got.signatures)
        answer = self.session.unmask(msg.UnmaskRequest(tuple(got.seed_of), tuple(got.key_of), signatures))
        request = pb.UnmaskRequest(
            run_id=self.run_id, round=self.round, agent_id=self.agent_id,
            seeds=[pb.RevealedShare(owner=s.owner, value=shamir.to_bytes(s.value)) for s in answer.seeds],
            keys=[pb.RevealedShare(owner=s.owner, value=shamir.to_bytes(s.value)) for s in answer.keys],
        )
        self.stub.Unmask(request, timeout=self.rpc_timeout_s)
        self.bytes_sent += request.ByteSize()
        self.calls += 1


Upload = Callable[[Layout, Callable[[], Iterable[memoryview]], int], None]


def privatize_change(change: dict[str, np.ndarray], privacy: PrivacySpec) -> None:
    """Differential privacy before masking, in place: the change clipped to the clip norm (L2
    over all its tensors: the aggregator cannot clip what it cannot see) and, in local mode,
    noised as a local update would be."""
    norm, _ = clip_tensors(change, privacy.clip_norm)
    if privacy.mode is DPMode.LOCAL:
        generator = noise_generator()
        for value in change.values():
            add_noise(generator, value, privacy.noise_multiplier * privacy.clip_norm)
    log.info("update clipped to %g (norm %.4g)%s before masking", privacy.clip_norm, norm,
             f" and noised ({privacy.noise_multiplier:g})" if privacy.mode is DPMode.LOCAL else "")


class SecureTraining:
    """An agent's secure aggregation of one training round around its training: its keys are
    advertised when the assignment arrives, the rest of the key exchange runs in a thread
    (overlapping the download and training), then ``upload`` masks the change, uploads it and
    answers the unmask request."""

    @classmethod
    def start(
        cls, dial: Callable[[str], grpc.Channel], a: Assignment, agent_id: str, identity: TlsIdentity | None
    ) -> SecureTraining | None:
        """Starts the key exchange of a training round under secure aggregation (with the
        aggregator it uploads to), signing with ``identity``; None for any other round. Raises
        SecureAggregationFailed, before anything is sent, without an identity (plaintext
        development mode) or when the assignment does not list the round's participants; and
        what advertising its keys raised: an agent that cannot advertise (restarted mid-round,
        its earlier keys lost with its process; or too late, the advertise step closed) cannot
        take part, and gives the round up before downloading and training for nothing."""
        if a.kind is not RoundKind.TRAIN or a.training.secure_aggregation is None:
            return None
        if identity is None:
            raise SecureAggregationFailed(
                "secure aggregation needs this agent's certificate, to sign its keys, and tls.insecure_plaintext "
                "is set: not taking part (run the control plane with mutual TLS, e.g. `fedstream local`)"
            )
        if agent_id not in a.participants:
            raise SecureAggregationFailed("the assignment does not list the round's participants with this agent")
        return cls(dial(a.upload_endpoint), a, agent_id, Credentials.of(identity))

    def __init__(self, channel: grpc.Channel, a: Assignment, agent_id: str, credentials: Credentials) -> None:
        spec = a.training.secure_aggregation
        assert spec is not None
        self.assignment = a
        self.client = SecureAggregationClient(
            channel, a.run_id, a.round, agent_id, spec, credentials, a.participants,
            # The round closes by its deadline; the consistency check and the unmask step wait
            # step_timeout_s each after it.
            give_up_unix=a.deadline_unix + 2 * spec.step_timeout_s,
        )
        self._error: BaseException | None = None
        self.client.advertise()
        self._thread = threading.Thread(target=self._exchange, name="secagg-keys", daemon=True)
        self._thread.start()

    def _exchange(self) -> None:
        a = self.assignment
        try:
            self.client.share_keys()
            senders = self.client.receive_shares()
            log.info("secure aggregation: round %d of %s: keys shared, shares received from %d agents", a.round,
                     a.run_id, senders - 1)
        except ProtocolViolation as e:  # the agent drops out of the round now, sharing nothing more
            log.error("secure aggregation of round %d of %s: dropping out: %s", a.round, a.run_id, e.public)
            self._error = SecureAggregationFailed(e.public)
        except BaseException as e:  # noqa: BLE001 - handed to the training thread, which raises it
            self._error = e

    def upload(
        self, state: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor], num_examples: int, upload: Upload
    ) -> None:
        """Masks the change of every floating tensor of ``state`` from ``base``, uploads it with
        ``upload(layout, buffers, num_examples)``, signs the survivors and answers the unmask
        request. Raises what the key exchange raised, and SecureAggregationFailed for survivors
        or an unmask request it refuses (the agent then drops out of the round, revealing
        nothing more)."""
        self._thread.join(max(0.0, self.client.give_up_unix - time.time()))
        if self._error is not None:
            raise self._error
        if self._thread.is_alive():
            raise SecureAggregationFailed("the key exchange did not finish before the round's deadline")
        a = self.assignment
        change = {
            k: (v.detach().double() - base[k].detach().double()).numpy()
            for k, v in state.items() if v.is_floating_point()
        }
        privacy = a.training.privacy
        if privacy is not None:  # every update weighs the same, clipped here (and noised in local mode)
            privatize_change(change, privacy)
        weight = 1 if privacy is not None else max(1, num_examples)
        layout = layout_of(dict(state))
        wire, _ = self.client.masked(layout, change, weight)
        log.info("secure aggregation: uploading the masked change (%d bytes)", wire.total_bytes)
        upload(wire, lambda: self.client.masked(layout, change, weight)[1], num_examples)
        try:
            self.client.confirm()
            self.client.unmask()
        except ProtocolViolation as e:
            raise SecureAggregationFailed(e.public) from None
