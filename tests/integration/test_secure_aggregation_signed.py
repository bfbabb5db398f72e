"""Secure aggregation against a malicious aggregator over real gRPC: behind mutual TLS a round of
agents that sign their keys and the survivors commits, and the aggregator refuses keys signed
for other keys, by another agent's or an expired certificate, and a survivors' signature that
does not verify; when keys are substituted on the way (an aggregator that relays them: here
one without the tenant's authority), every agent refuses the roster and shares nothing, and the
round fails (at its deadline) with nothing committed."""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from fedstream.errors import ProtocolViolation
from fedstream.privacy import SecureAggregationSpec
from fedstream.secagg.client import ClientSession
from fedstream.secagg.crypto import KeyPair
from fedstream.secagg.signing import Credentials, survivors_payload
from fedstream.v1 import aggregator_pb2_grpc, round_pb2
from fedstream.v1 import secagg_pb2 as spb
from fedstream.v1 import secagg_pb2_grpc as spb_grpc
from fedstream_agent.secagg import SecureAggregationClient
from fedstream_testing.helpers import layout_of, store_model
from fedstream_testing.secagg import Authority
from fedstream_testing.support import plan, upload_tensors, wait_terminal

RUN = "run-signed"
BASE = f"{RUN}/000000"
AGENTS = ["a", "b", "c", "d"]
SPEC = SecureAggregationSpec(max_dropout=0.3, clip_range=1.0, step_timeout_s=3.0)
MODEL = {"w": ("float32", np.zeros(50, np.float32)), "b": ("float32", np.zeros(7, np.float32))}


def secure_plan(participants: list[str], timeout: float = 60):
    p = plan(RUN, 1, participants, base=BASE, timeout=timeout, min_updates=SPEC.threshold(len(participants)))
    p.secure_aggregation.max_dropout = SPEC.max_dropout
    p.secure_aggregation.clip_range = SPEC.clip_range
    p.secure_aggregation.step_timeout_s = SPEC.step_timeout_s
    return p


def code_of(call):
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def advertisement(keys, **changes) -> spb.AdvertiseRequest:
    keys = dataclasses.replace(keys, **changes)
    return spb.AdvertiseRequest(run_id=RUN, round=1, agent_id=keys.agent_id, c_pk=keys.c_pk, s_pk=keys.s_pk,
                                signature=keys.signature, certificate=keys.certificate)


def agent_round(ch: grpc.Channel, c: SecureAggregationClient, change: dict[str, np.ndarray], *, forge: bool) -> None:
    c.advertise()
    c.share_keys()
    c.receive_shares()
    wire, pieces = c.masked(layout_of(MODEL), change, 10)
    upload_tensors(ch, "", wire, pieces, 10, run_id=RUN)
    if forge:  # a signature over other survivors: the aggregator refuses it, then takes the real one
        wait = spb.StepRequest(run_id=RUN, round=1, wait_s=10)
        while not c.stub.GetSurvivors(wait, timeout=20).ready:
            pass
        other = c.session.credentials.signer.sign(survivors_payload("t1", RUN, "1", AGENTS[:3]))
        bad = spb.ConfirmSurvivorsRequest(run_id=RUN, round=1, signature=other)
        code, details = code_of(lambda: c.stub.ConfirmSurvivors(bad, timeout=5))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "signature over the survivors does not verify" in details
    c.confirm()
    c.unmask()


def test_signed_keys_behind_mutual_tls_commit_and_forgeries_are_refused(tls_aggregator, model_store):
    store_model(model_store, BASE, MODEL)
    control = aggregator_pb2_grpc.AggregatorControlStub(tls_aggregator.channel())
    control.OpenRound(secure_plan(AGENTS), timeout=5)
    identities = {a: tls_aggregator.authority.identity(a) for a in AGENTS}
    creds = {a: Credentials.of(identities[a]) for a in AGENTS}
    channels = {a: tls_aggregator.channel(identities[a]) for a in AGENTS}
    stub_a = spb_grpc.SecureAggregationStub(channels["a"])
    keys = ClientSession(RUN, "1", "a", SPEC, creds["a"], AGENTS).advertise()

    substituted = advertisement(keys, s_pk=KeyPair.generate().public)
    code, details = code_of(lambda: stub_a.Advertise(substituted, timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "signature over the advertised keys does not verify" in details
    as_b = advertisement(keys, certificate=creds["b"].signer.certificate)
    code, details = code_of(lambda: stub_a.Advertise(as_b, timeout=5))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "is for agent 'b'" in details
    stale = ClientSession(RUN, "1", "a", SPEC, tls_aggregator.authority.expired("a"), AGENTS).advertise()
    code, details = code_of(lambda: stub_a.Advertise(advertisement(stale), timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "the certificate expired at" in details
    rng = np.random.default_rng(3)
    changes = {a: {"w": rng.normal(0, 0.1, 50), "b": rng.normal(0, 0.1, 7)} for a in AGENTS}
    clients = {a: SecureAggregationClient(channels[a], RUN, 1, a, SPEC, creds[a], AGENTS, give_up_unix=time.time() + 60)
               for a in AGENTS}

    with ThreadPoolExecutor(len(AGENTS)) as pool:
        futures = [pool.submit(agent_round, channels[a], clients[a], changes[a], forge=a == "d") for a in AGENTS]
        [f.result(timeout=60) for f in futures]
    event = wait_terminal(control, RUN, 1)

    assert event.state == round_pb2.ROUND_STATE_COMMITTED, event.reason
    block = model_store.lineage(event.version)["secure_aggregation"]
    assert (block["advertised_keys"], block["signed_survivors"], block["unmasked_with"]) == (4, 4, 4)
    assert "signed keys and consistency check" in block["protocol"]


def test_a_relayed_substituted_key_makes_every_agent_refuse_and_the_round_fail(agg_channel, model_store):
    participants = [*AGENTS, "e"]
    store_model(model_store, BASE, MODEL)
    control = aggregator_pb2_grpc.AggregatorControlStub(agg_channel)
    control.OpenRound(secure_plan(participants, timeout=8), timeout=5)
    creds = Authority("t1").all(participants)
    e_keys = ClientSession(RUN, "1", "e", SPEC, creds["e"], participants).advertise()
    # What reaches the roster for "e": its certificate and signature, around the aggregator's own key.
    spb_grpc.SecureAggregationStub(agg_channel).Advertise(advertisement(e_keys, s_pk=KeyPair.generate().public),
                                                          timeout=5)
    clients = [SecureAggregationClient(agg_channel, RUN, 1, a, SPEC, creds[a], participants,
                                       give_up_unix=time.time() + 60) for a in AGENTS]

    def take_part(c: SecureAggregationClient) -> str:
        c.advertise()
        with pytest.raises(ProtocolViolation) as refused:
            c.share_keys()
        return refused.value.public

    with ThreadPoolExecutor(len(clients)) as pool:
        reasons = list(pool.map(take_part, clients))
    event = wait_terminal(control, RUN, 1)

    assert all(r.startswith("roster entry 'e' refused: the signature over its keys does not verify") for r in reasons)
    assert all(c.session.step.value == "advertised" for c in clients)  # no share was sealed to anyone
    assert event.state == round_pb2.ROUND_STATE_FAILED, event.reason
    assert model_store.versions(RUN) == [BASE]
