"""Secure aggregation against hostile agents on a real aggregator over gRPC: ids and messages
past any sane size, counts past the round's participants, calls for rounds that do not exist,
do not use secure aggregation or ended, an advertise step that closes below the threshold, an
agent that restarts mid-round; behind mutual TLS an agent speaks only as itself. Each refusal
names what was wrong and changes nothing: the honest agents' round still commits."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from test_secure_aggregation import (
    BASE,
    CREDENTIALS,
    RUN,
    SPEC,
    base_model,
    changes,
    client,
    secure_plan,
    status_of,
)

from fedstream.errors import ModelNotFound
from fedstream.privacy import SecureAggregationSpec
from fedstream.secagg.messages import CIPHERTEXT_BYTES
from fedstream.secagg.quantize import max_weight
from fedstream.secagg.shamir import ELEMENT_BYTES
from fedstream.secagg.signing import Credentials
from fedstream.v1 import aggregator_pb2_grpc, round_pb2
from fedstream.v1 import secagg_pb2 as spb
from fedstream.v1 import secagg_pb2_grpc as spb_grpc
from fedstream_agent.secagg import SecureAggregationClient
from fedstream_testing.helpers import layout_of, store_model
from fedstream_testing.support import plan, upload, upload_tensors, wait_terminal

HUGE = 3_000_000  # characters: within gRPC's 4 MiB message, far past its 16 KiB status


@pytest.fixture
def base(model_store):
    store_model(model_store, BASE, base_model())


def every_call(stub, run_id=RUN, round_=1, agent_id="a"):
    """Each SecureAggregation RPC, addressed as given, with an otherwise empty message."""
    step = spb.StepRequest(run_id=run_id, round=round_, agent_id=agent_id)
    return {
        "Advertise": lambda: stub.Advertise(spb.AdvertiseRequest(run_id=run_id, round=round_, agent_id=agent_id),
                                            timeout=5),
        "GetRoster": lambda: stub.GetRoster(step, timeout=5),
        "ShareKeys": lambda: stub.ShareKeys(spb.ShareKeysRequest(run_id=run_id, round=round_, agent_id=agent_id),
                                            timeout=5),
        "GetShares": lambda: stub.GetShares(step, timeout=5),
        "GetSurvivors": lambda: stub.GetSurvivors(step, timeout=5),
        "ConfirmSurvivors": lambda: stub.ConfirmSurvivors(
            spb.ConfirmSurvivorsRequest(run_id=run_id, round=round_, agent_id=agent_id), timeout=5),
        "GetUnmaskRequest": lambda: stub.GetUnmaskRequest(step, timeout=5),
        "Unmask": lambda: stub.Unmask(spb.UnmaskRequest(run_id=run_id, round=round_, agent_id=agent_id), timeout=5),
    }


def member(c, ch, change, examples=5):
    """One honest agent's whole protocol through its client ``c`` (channel ``ch``)."""
    c.advertise()
    c.share_keys()
    c.receive_shares()
    wire, pieces = c.masked(layout_of(base_model()), change, examples)
    upload_tensors(ch, c.agent_id, wire, pieces, examples, run_id=RUN)
    c.confirm()
    c.unmask()


def honest_round(ch, agents, *, skip=()):
    """Every agent but ``skip`` of a round of ``agents`` runs the protocol and uploads its change."""
    with ThreadPoolExecutor(len(agents)) as pool:
        futures = [pool.submit(member, client(ch, a, agents), ch, changes(i))
                   for i, a in enumerate(agents) if a not in skip]
        [f.result(timeout=60) for f in futures]


def test_ids_too_long_for_a_status_are_refused_naming_the_field(agg_channel, base):
    control = aggregator_pb2_grpc.AggregatorControlStub(agg_channel)
    control.OpenRound(secure_plan(["a", "b", "c"], timeout=60), timeout=5)
    stub = spb_grpc.SecureAggregationStub(agg_channel)

    for name, call in every_call(stub, run_id="r" * HUGE).items():
        code, details = status_of(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("invalid run id"), name
        assert len(details) < 300, name
    for name, call in every_call(stub, agent_id="a" * HUGE).items():
        code, details = status_of(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("invalid agent id"), name
    model = {"w": ("float32", np.zeros(3, np.float32))}
    code, details = status_of(lambda: upload(agg_channel, "a", model, 5, run_id="r" * HUGE))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("invalid run id")

    honest_round(agg_channel, ["a", "b", "c"])  # nothing changed
    assert wait_terminal(control, RUN, 1).state == round_pb2.ROUND_STATE_COMMITTED


def test_messages_past_the_limits_are_refused_and_the_round_goes_on(agg_channel, base):
    control = aggregator_pb2_grpc.AggregatorControlStub(agg_channel)
    control.OpenRound(secure_plan(["a", "b", "c"], timeout=60), timeout=5)
    stub = spb_grpc.SecureAggregationStub(agg_channel)
    clients = {a: client(agg_channel, a, tuple("abc")) for a in "abc"}

    big = spb.AdvertiseRequest(run_id=RUN, round=1, agent_id="a", c_pk=bytes(5 << 20), s_pk=bytes(32))
    assert status_of(lambda: stub.Advertise(big, timeout=5))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED  # gRPC's 4 MiB
    long_key = spb.AdvertiseRequest(run_id=RUN, round=1, agent_id="a", c_pk=bytes(3 << 20), s_pk=bytes(32))
    assert status_of(lambda: stub.Advertise(long_key, timeout=5)) == (
        grpc.StatusCode.INVALID_ARGUMENT, f"c_pk must be 32 bytes, got {3 << 20}")
    for c in clients.values():
        c.advertise()
    assert stub.GetRoster(spb.StepRequest(run_id=RUN, round=1, agent_id="a", wait_s=5), timeout=10).ready

    def shares(*pairs):
        return spb.ShareKeysRequest(run_id=RUN, round=1, agent_id="a", seed_commitment=bytes(32), shares=[
            spb.EncryptedShare(sender="a", recipient=r, ciphertext=bytes(n)) for r, n in pairs])

    too_many = shares(*((r, CIPHERTEXT_BYTES) for r in ("b", "c", "d", "e")))
    assert status_of(lambda: stub.ShareKeys(too_many, timeout=5)) == (
        grpc.StatusCode.INVALID_ARGUMENT, "4 shares: more than the round has participants")
    too_long = shares(("b", CIPHERTEXT_BYTES), ("c", 3 << 20))
    assert status_of(lambda: stub.ShareKeys(too_long, timeout=5)) == (
        grpc.StatusCode.INVALID_ARGUMENT, f"an encrypted share must be {CIPHERTEXT_BYTES} bytes, got {3 << 20}")
    twice = shares(("b", CIPHERTEXT_BYTES), ("b", CIPHERTEXT_BYTES))
    assert status_of(lambda: stub.ShareKeys(twice, timeout=5))[0] == grpc.StatusCode.INVALID_ARGUMENT
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda c: c.share_keys(), clients.values()))
        list(pool.map(lambda c: c.receive_shares(), clients.values()))
    for i, (agent, c) in enumerate(clients.items()):
        wire, pieces = c.masked(layout_of(base_model()), changes(i), 5)
        upload_tensors(agg_channel, agent, wire, pieces, 5, run_id=RUN)
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda c: c.confirm(), clients.values()))
    reveal = [spb.RevealedShare(owner=o, value=bytes(ELEMENT_BYTES)) for o in ("a", "b", "c", "d")]
    too_many = spb.UnmaskRequest(run_id=RUN, round=1, agent_id="a", seeds=reveal)
    assert status_of(lambda: stub.Unmask(too_many, timeout=5)) == (
        grpc.StatusCode.INVALID_ARGUMENT, "an unmask answer holds at most one share per participant")
    too_long = spb.UnmaskRequest(run_id=RUN, round=1, agent_id="a", seeds=[
        spb.RevealedShare(owner="a", value=bytes(3 << 20))])
    assert status_of(lambda: stub.Unmask(too_long, timeout=5)) == (
        grpc.StatusCode.INVALID_ARGUMENT, f"a share must be {ELEMENT_BYTES} bytes, got {3 << 20}")
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda c: c.unmask(), clients.values()))

    assert wait_terminal(control, RUN, 1).state == round_pb2.ROUND_STATE_COMMITTED


def test_calls_for_rounds_missing_plain_or_over_are_refused(agg_channel, base):
    control = aggregator_pb2_grpc.AggregatorControlStub(agg_channel)
    stub = spb_grpc.SecureAggregationStub(agg_channel)
    control.OpenRound(plan(RUN, 2, ["a", "b"], base=BASE, timeout=60), timeout=5)  # no secure aggregation
    control.OpenRound(secure_plan(["a", "b", "c"], timeout=60), timeout=5)

    for name, call in every_call(stub, run_id="run-nope").items():
        assert status_of(call) == (grpc.StatusCode.NOT_FOUND, "round 1 of run 'run-nope' is not open on this "
                                   "aggregator"), name
    for name, call in every_call(stub, round_=2).items():
        assert status_of(call) == (grpc.StatusCode.FAILED_PRECONDITION, f"round 2 of run {RUN!r} does not use "
                                   "secure aggregation"), name
    for name, call in every_call(stub, agent_id="z").items():
        assert status_of(call) == (grpc.StatusCode.PERMISSION_DENIED, f"agent 'z' was not selected for round 1 of "
                                   f"run {RUN!r}"), name
    honest_round(agg_channel, ["a", "b", "c"])
    assert wait_terminal(control, RUN, 1).state == round_pb2.ROUND_STATE_COMMITTED
    for name, call in every_call(stub).items():
        assert status_of(call) == (grpc.StatusCode.FAILED_PRECONDITION, f"round 1 of run {RUN!r} is committed: its "
                                   "protocol is over"), name


def test_a_round_of_more_participants_than_secure_aggregation_takes_is_refused(agg_channel, base):
    control = aggregator_pb2_grpc.AggregatorControlStub(agg_channel)
    crowd = [f"site-{i}" for i in range(1001)]

    code, details = status_of(lambda: control.OpenRound(secure_plan(crowd), timeout=5))

    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "takes at most 1000 participants per round, not 1001" in details
    control.OpenRound(secure_plan(crowd[:1000], timeout=60), timeout=5)  # up to the bound


def test_a_weight_that_could_overflow_the_ring_is_refused_and_the_others_commit(agg_channel, base, model_store):
    wide = SecureAggregationSpec(max_dropout=0.4, clip_range=1000.0, step_timeout_s=3.0)
    p = secure_plan(["a", "b", "c"], target=2, timeout=60)
    p.secure_aggregation.clip_range = wide.clip_range
    control = aggregator_pb2_grpc.AggregatorControlStub(agg_channel)
    control.OpenRound(p, timeout=5)
    clients = {a: SecureAggregationClient(agg_channel, RUN, 1, a, wide, CREDENTIALS[a], tuple("abc"),
                                          give_up_unix=time.time() + 30) for a in "abc"}
    most = max_weight(wide.clip_range, 3)

    def agent(name: str, examples: int) -> None:
        c = clients[name]
        c.advertise()
        c.share_keys()
        c.receive_shares()
        wire, pieces = c.masked(layout_of(base_model()), changes(ord(name)), min(examples, most))
        upload_tensors(agg_channel, name, wire, pieces, examples, run_id=RUN)  # "c" declares more than it may
        c.confirm()
        c.unmask()

    with ThreadPoolExecutor(3) as pool:
        futures = {a: pool.submit(agent, a, n) for a, n in (("a", 5), ("b", 7), ("c", 10**9))}
        [futures[a].result(timeout=60) for a in "ab"]
        with pytest.raises(grpc.RpcError) as refused:
            futures["c"].result(timeout=60)
    event = wait_terminal(control, RUN, 1)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == (f"num_examples {10**9} is more than a masked update of this round may weigh "
                                       f"({most}: the sum of 3 participants' updates at clip range 1000 must fit "
                                       "the ring)")
    assert event.state == round_pb2.ROUND_STATE_COMMITTED, event.reason  # one site cannot overflow the sum
    assert model_store.lineage(event.version)["secure_aggregation"]["dropped"] == ["c"]


def test_an_advertise_step_below_the_threshold_fails_the_round_naming_it(agg_channel, base, model_store):
    control = aggregator_pb2_grpc.AggregatorControlStub(agg_channel)
    control.OpenRound(secure_plan(["a", "b", "c"], timeout=60), timeout=5)
    lonely = client(agg_channel, "a", tuple("abc"))

    lonely.advertise()  # "b" and "c" never come; the step's timeout passes while "a" waits for the roster
    code, details = status_of(lambda: lonely.share_keys())
    event = wait_terminal(control, RUN, 1)

    assert code == grpc.StatusCode.FAILED_PRECONDITION
    why = "advertise keys: only 1 of 3 participants advertised keys, below the threshold 2"
    assert why in details
    assert event.state == round_pb2.ROUND_STATE_FAILED and why in event.reason
    with pytest.raises(ModelNotFound):
        model_store.info(f"{RUN}/000001")  # nothing committed


def test_an_agent_restarted_mid_round_is_counted_as_dropped(agg_channel, base, model_store):
    control = aggregator_pb2_grpc.AggregatorControlStub(agg_channel)
    agents = ["a", "b", "c", "d"]
    control.OpenRound(secure_plan(agents, target=3, timeout=60), timeout=5)
    first = client(agg_channel, "d", agents)
    first.advertise()

    with ThreadPoolExecutor(len(agents)) as pool:
        others = [pool.submit(member, client(agg_channel, a, agents), agg_channel, changes(i))
                  for i, a in enumerate(agents[:3])]
        first.share_keys()  # then the process dies: its keys and shares are gone with it
        restarted = client(agg_channel, "d", agents)  # the same agent, new keys
        code, details = status_of(restarted.advertise)
        [f.result(timeout=60) for f in others]
    event = wait_terminal(control, RUN, 1)

    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "agent 'd' already advertised other keys" in details or "cannot advertise keys in step" in details
    assert event.state == round_pb2.ROUND_STATE_COMMITTED, event.reason
    block = model_store.lineage(event.version)["secure_aggregation"]
    assert (block["shared_keys"], block["uploaded"], block["dropped"]) == (4, 3, ["d"])


# Mutual TLS.

def test_behind_mutual_tls_an_agent_speaks_only_as_itself(tls_aggregator, model_store):
    store_model(model_store, BASE, base_model())
    control = aggregator_pb2_grpc.AggregatorControlStub(tls_aggregator.channel())
    control.OpenRound(secure_plan(["a", "b", "c"], timeout=60), timeout=5)
    identities = {a: tls_aggregator.authority.identity(a) for a in "abc"}
    channels = {a: tls_aggregator.channel(identities[a]) for a in "abc"}
    as_a = spb_grpc.SecureAggregationStub(channels["a"])
    keys = spb.AdvertiseRequest(run_id=RUN, round=1, agent_id="b", c_pk=bytes(range(32)), s_pk=bytes(range(1, 33)))

    assert status_of(lambda: as_a.Advertise(keys, timeout=5)) == (
        grpc.StatusCode.PERMISSION_DENIED, "this certificate is agent 'a''s; the message names 'b'")
    for name, call in every_call(as_a, agent_id="b").items():
        assert status_of(call)[0] == grpc.StatusCode.PERMISSION_DENIED, name
    clients = {a: SecureAggregationClient(channels[a], RUN, 1, a, SPEC, Credentials.of(identities[a]), tuple("abc"),
                                          give_up_unix=time.time() + 30) for a in "abc"}
    with ThreadPoolExecutor(3) as pool:
        [f.result(timeout=60) for f in [pool.submit(member, clients[a], channels[a], changes(i))
                                        for i, a in enumerate("abc")]]
    after = spb.StepRequest(run_id=RUN, round=1, agent_id="b", wait_s=0)
    assert status_of(lambda: as_a.GetShares(after, timeout=5))[0] == grpc.StatusCode.PERMISSION_DENIED
    event = wait_terminal(control, RUN, 1)

    assert event.state == round_pb2.ROUND_STATE_COMMITTED, event.reason
    assert model_store.lineage(event.version)["secure_aggregation"]["uploaded"] == 3
