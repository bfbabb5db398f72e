"""An agent's side of secure aggregation over gRPC: the client session of the protocol driven
through the aggregator's SecureAggregation service (advertise right after the assignment, share
keys, then, once trained, the masked change as int64 tensors for the ordinary upload, and the
answer to the unmask request)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

import grpc
import numpy as np

from fedstream.errors import SecureAggregationFailed
from fedstream.privacy import SecureAggregationSpec
from fedstream.secagg import messages as msg
from fedstream.secagg import shamir
from fedstream.secagg.client import ClientSession
from fedstream.secagg.quantize import masked_layout, quantize
from fedstream.tensors import Layout
from fedstream.v1 import secagg_pb2 as pb
from fedstream.v1 import secagg_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

# Seconds each long-polling call asks the aggregator to wait (it caps them).
POLL_S = 10.0
# Elements masked at a time.
MASK_PIECE = 1 << 17

R = TypeVar("R")



class SecureAggregationClient:
    """One agent's secure aggregation of one round. ``give_up_unix``: when the agent stops
    waiting for a step (the round's deadline and the unmask step's timeout after it)."""

    def __init__(
        self, channel: grpc.Channel, run_id: str, round_: int, agent_id: str, spec: SecureAggregationSpec,
        *, give_up_unix: float, rpc_timeout_s: float = 30.0,
    ) -> None:
        self.stub = pb_grpc.SecureAggregationStub(channel)
        self.run_id, self.round, self.agent_id = run_id, round_, agent_id
        self.spec = spec
        self.session = ClientSession(run_id, str(round_), agent_id, spec)
        self.give_up_unix = give_up_unix
        self.rpc_timeout_s = rpc_timeout_s
        self.bytes_sent = 0
        self.bytes_received = 0

    def _step(self) -> pb.StepRequest:
        return pb.StepRequest(run_id=self.run_id, round=self.round, agent_id=self.agent_id, wait_s=POLL_S)

    def _poll(self, call: Callable[[pb.StepRequest], R], ready: Callable[[R], bool], what: str) -> R:
        request = self._step()
        while True:
            answer = call(request)
            self.bytes_sent += request.ByteSize()
            self.bytes_received += answer.ByteSize()  # type: ignore[attr-defined]
            if ready(answer):
                return answer
            if time.time() > self.give_up_unix:
                raise SecureAggregationFailed(f"gave up waiting for {what}")

    def advertise(self) -> None:
        """Step 0: sends the agent's public keys."""
        keys = self.session.advertise()
        request = pb.AdvertiseRequest(run_id=self.run_id, round=self.round, agent_id=self.agent_id,
                                      c_pk=keys.c_pk, s_pk=keys.s_pk)
        self.stub.Advertise(request, timeout=self.rpc_timeout_s)
        self.bytes_sent += request.ByteSize()

    def share_keys(self) -> None:
        """Step 1: waits for the roster, then sends the encrypted shares."""
        got = self._poll(lambda r: self.stub.GetRoster(r, timeout=self.rpc_timeout_s + POLL_S),
                         lambda a: a.ready, "the roster")
        roster = msg.Roster(
            tuple(msg.AdvertiseKeys(e.agent_id, bytes(e.c_pk), bytes(e.s_pk)).check() for e in got.entries),
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

    def receive_shares(self) -> None:
        """Step 2: waits for the shares the others sealed to this agent."""
        got = self._poll(lambda r: self.stub.GetShares(r, timeout=self.rpc_timeout_s + POLL_S),
                         lambda a: a.ready, "the shares")
        self.session.receive_shares(msg.SharesDelivery(
            tuple(got.senders),
            tuple(msg.EncryptedShare(s.sender, s.recipient, bytes(s.ciphertext)).check() for s in got.shares),
        ))

    def masked(self, layout: Layout, change: Mapping[str, np.ndarray], weight: int) -> tuple[Layout, Iterator[bytes]]:
        """The masked update of ``change`` (the change of every floating tensor of ``layout``,
        by name) weighted by ``weight``: its layout and its tensors' bytes, masked piece by piece
        (the same bytes each time: a resumed upload sends what the first attempt sent)."""
        wire = masked_layout(layout)

        def pieces() -> Iterator[bytes]:
            offset = 0
            for t in layout.tensors:
                if not t.dt.is_float:
                    continue
                flat = np.asarray(change[t.name]).reshape(-1)
                for first in range(0, flat.size, MASK_PIECE):
                    part = flat[first : first + MASK_PIECE]
                    q = quantize(part, weight, self.spec.clip_range)
                    yield self.session.mask(q, offset + first).astype("<u8").tobytes()
                offset += flat.size

        return wire, pieces()

    def unmask(self) -> None:
        """Step 3: waits for the unmask request and answers it (once)."""
        got = self._poll(lambda r: self.stub.GetUnmaskRequest(r, timeout=self.rpc_timeout_s + POLL_S),
                         lambda a: a.ready, "the unmask request")
        answer = self.session.unmask(msg.UnmaskRequest(tuple(got.seed_of), tuple(got.key_of)))
        request = pb.UnmaskRequest(
            run_id=self.run_id, round=self.round, agent_id=self.agent_id,
            seeds=[pb.RevealedShare(owner=s.owner, value=shamir.to_bytes(s.value)) for s in answer.seeds],
            keys=[pb.RevealedShare(owner=s.owner, value=shamir.to_bytes(s.value)) for s in answer.keys],
        )
        self.stub.Unmask(request, timeout=self.rpc_timeout_s)
        self.bytes_sent += request.ByteSize()
