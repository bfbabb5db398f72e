"""The SecureAggregation gRPC servicer: translates the protocol's messages and delegates to the
round's ``SecureRound``. Each agent speaks as the agent its certificate names; with the
tenant's authority (mutual TLS), signed keys and signatures that the agents would refuse are
refused here first, so that one bad advertisement does not make every agent abandon the round."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import grpc

from fedstream.auth import Guard
from fedstream.errors import AgentNotSelected, FailedPrecondition, InvalidArgument
from fedstream.grpcutil import translate_errors
from fedstream.secagg import messages as msg
from fedstream.secagg import shamir
from fedstream.secagg.signing import Trust
from fedstream.v1 import secagg_pb2 as pb
from fedstream.v1 import secagg_pb2_grpc as pb_grpc
from fedstream_aggregator.rounds import RoundTable
from fedstream_aggregator.secure import SecureRound


class _Addressed(Protocol):
    run_id: str
    round: int
    agent_id: str


# More shares than this in one message are refused before they are read one by one.
MAX_SHARES = 100_000


def secure_round(table: RoundTable, run_id: str, round_: int, agent_id: str) -> SecureRound:
    """The protocol of a round the agent takes part in. Raises RoundNotFound, AgentNotSelected,
    FailedPrecondition for a round without secure aggregation, RoundNotOpen once it ended."""
    rnd = table.get(run_id, round_)
    if agent_id not in rnd.plan.participants:
        raise AgentNotSelected(f"agent {agent_id!r} was not selected for round {round_} of run {run_id!r}")
    if rnd.secure is None:
        raise FailedPrecondition(f"round {round_} of run {run_id!r} does not use secure aggregation")
    with rnd.lock:
        if rnd.terminal():
            raise FailedPrecondition(f"round {round_} of run {run_id!r} is {rnd.state}: its protocol is over")
    return rnd.secure


def _share(s: pb.EncryptedShare) -> msg.EncryptedShare:
    return msg.EncryptedShare(s.sender, s.recipient, bytes(s.ciphertext)).check()


def _revealed(shares: Iterable[pb.RevealedShare]) -> tuple[msg.RevealedShare, ...]:
    return tuple(msg.RevealedShare(s.owner, shamir.from_bytes(bytes(s.value))).check() for s in shares)


class SecureAggregationServicer(pb_grpc.SecureAggregationServicer):
    """The key exchange and unmasking of secure aggregation rounds, for their participants."""

    def __init__(self, table: RoundTable, guard: Guard, trust: Trust | None = None) -> None:
        self.table = table
        self.guard = guard
        self.trust = trust

    def _round(self, request: _Addressed, context: grpc.ServicerContext) -> tuple[SecureRound, str]:
        agent = self.guard.agent(context, request.agent_id)
        if not agent:
            raise InvalidArgument("agent_id is required")
        return secure_round(self.table, request.run_id, request.round, agent), agent

    @translate_errors
    def Advertise(self, request: pb.AdvertiseRequest, context: grpc.ServicerContext) -> pb.AdvertiseResponse:
        secure, agent = self._round(request, context)
        message = msg.AdvertiseKeys(agent, bytes(request.c_pk), bytes(request.s_pk), bytes(request.signature),
                                    bytes(request.certificate))
        secure.advertise(message, self.trust)
        return pb.AdvertiseResponse()

    @translate_errors
    def GetRoster(self, request: pb.StepRequest, context: grpc.ServicerContext) -> pb.RosterResponse:
        secure, agent = self._round(request, context)
        roster = secure.roster(agent, request.wait_s)
        if roster is None:
            return pb.RosterResponse(ready=False)
        return pb.RosterResponse(
            ready=True, participants=roster.participants, threshold=roster.threshold,
            entries=[pb.RosterEntry(agent_id=e.agent_id, c_pk=e.c_pk, s_pk=e.s_pk, signature=e.signature,
                                    certificate=e.certificate) for e in roster.entries],
        )

    @translate_errors
    def ShareKeys(self, request: pb.ShareKeysRequest, context: grpc.ServicerContext) -> pb.ShareKeysResponse:
        secure, agent = self._round(request, context)
        if len(request.shares) > min(MAX_SHARES, len(secure.plan.participants)):
            raise InvalidArgument(f"{len(request.shares)} shares: more than the round has participants")
        shares = tuple(_share(s) for s in request.shares)
        secure.share_keys(msg.ShareKeys(agent, bytes(request.seed_commitment), shares))
        return pb.ShareKeysResponse()

    @translate_errors
    def GetShares(self, request: pb.StepRequest, context: grpc.ServicerContext) -> pb.SharesResponse:
        secure, agent = self._round(request, context)
        delivery = secure.shares(agent, request.wait_s)
        if delivery is None:
            return pb.SharesResponse(ready=False)
        return pb.SharesResponse(
            ready=True, senders=delivery.senders,
            shares=[pb.EncryptedShare(sender=s.sender, recipient=s.recipient, ciphertext=s.ciphertext)
                    for s in delivery.shares],
        )

    @translate_errors
    def GetSurvivors(self, request: pb.StepRequest, context: grpc.ServicerContext) -> pb.SurvivorsResponse:
        secure, agent = self._round(request, context)
        survivors = secure.survivors(agent, request.wait_s)
        if survivors is None:
            return pb.SurvivorsResponse(ready=False)
        return pb.SurvivorsResponse(ready=True, survivors=survivors)

    @translate_errors
    def ConfirmSurvivors(
        self, request: pb.ConfirmSurvivorsRequest, context: grpc.ServicerContext
    ) -> pb.ConfirmSurvivorsResponse:
        secure, agent = self._round(request, context)
        secure.confirm(msg.SurvivorSignature(agent, bytes(request.signature)), self.trust)
        return pb.ConfirmSurvivorsResponse()

    @translate_errors
    def GetUnmaskRequest(self, request: pb.StepRequest, context: grpc.ServicerContext) -> pb.UnmaskRequestResponse:
        secure, agent = self._round(request, context)
        asked = secure.unmask_request(agent, request.wait_s)
        if asked is None:
            return pb.UnmaskRequestResponse(ready=False)
        return pb.UnmaskRequestResponse(
            ready=True, seed_of=asked.seed_of, key_of=asked.key_of,
            signatures=[pb.SurvivorSignature(agent_id=s.agent_id, signature=s.signature) for s in asked.signatures],
        )

    @translate_errors
    def Unmask(self, request: pb.UnmaskRequest, context: grpc.ServicerContext) -> pb.UnmaskResponse:
        secure, agent = self._round(request, context)
        n = len(secure.plan.participants)
        if len(request.seeds) > n or len(request.keys) > n:
            raise InvalidArgument("an unmask answer holds at most one share per participant")
        secure.unmask(msg.UnmaskResponse(agent, _revealed(request.seeds), _revealed(request.keys)))
        return pb.UnmaskResponse()
