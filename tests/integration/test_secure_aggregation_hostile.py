"""Secure aggregation against hostile agents on a real aggregator over gRPC: ids and messages
past any sane size, counts past the round's participants, calls for rounds that do not exist,
do not use secure aggregation or ended, an advertise step that closes below the threshold, an
agent that restarts mid-round; behind mutual TLS an agent speaks only as itself. Each refusal
names what was wrong and changes nothing: the honest agents' round still commits."""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from test_secure_aggregation import (
    BASE,
    RUN,
    base_model,
    changes,
    client,
    run_agent,
    secure_plan,
    status_of,
)

from fedstream.errors import ModelNotFound
from fedstream.grpcutil import channel
from fedstream.pki import Identity
from fedstream.secagg.messages import CIPHERTEXT_BYTES
from fedstream.secagg.shamir import ELEMENT_BYTES
from fedstream.state import MemoryStateStore
from fedstream.store import LocalModelStore
from fedstream.v1 import aggregator_pb2_grpc, round_pb2
from fedstream.v1 import secagg_pb2 as spb
from fedstream.v1 import secagg_pb2_grpc as spb_grpc
from fedstream_aggregator.server import build_server
from fedstream_aggregator.service import AggregatorService
from fedstream_testing.helpers import layout_of, store_model
from fedstream_testing.secagg import Authority
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
        "GetUnmaskRequest": lambda: stub.GetUnmaskRequest(step, timeout=5),
        "Unmask": lambda: stub.Unmask(spb.UnmaskRequest(run_id=run_id, round=round_, agent_id=agent_id), timeout=5),
    }


def honest_round(ch, agents, *, skip=()):
    """Every agent but ``skip`` runs the protocol and uploads its change."""
    with ThreadPoolExecutor(len(agents)) as pool:
        futures = [pool.submit(run_agent, ch, a, changes(i), 5, participants=agents) for i, a in enumerate(agents) if a not in skip]
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


def test_an_advertise_step_below_the_threshold_fails_the_round_naming_it(agg_channel, base, model_store):
    control = aggregator_pb2_grpc.AggregatorControlStub(agg_channel)
    control.OpenRound(secure_plan(["a", "b", "c"], timeout=60), timeout=5)
    lonely = client(agg_channel, "a", ("a", "b", "c"))

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
    first = client(agg_channel, "d", tuple(agents))
    first.advertise()

    with ThreadPoolExecutor(len(agents)) as pool:
        others = [pool.submit(run_agent, agg_channel, a, changes(i), 5, participants=agents)
                  for i, a in enumerate(agents[:3])]
        first.share_keys()  # then the process dies: its keys and shares are gone with it
        restarted = client(agg_channel, "d", tuple(agents))  # the same agent, new keys
        code, details = status_of(restarted.advertise)
        [f.result(timeout=60) for f in others]
    event = wait_terminal(control, RUN, 1)

    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "agent 'd' already advertised other keys" in details or "cannot advertise keys in step" in details
    assert event.state == round_pb2.ROUND_STATE_COMMITTED, event.reason
    block = model_store.lineage(event.version)["secure_aggregation"]
    assert (block["shared_keys"], block["uploaded"], block["dropped"]) == (4, 3, ["d"])


# Mutual TLS.

@pytest.fixture
def tls_plane(tmp_path):
    """An aggregator behind mutual TLS, the service identity that opens rounds, and a channel
    for each of three agents with a certificate of its own."""
    hour = dt.timedelta(hours=1)
    authority = Authority("t1")  # agents sign their keys with certificates of the aggregator's authority
    ca = authority.ca
    identity = ca.issue_identity(Identity("t1", "service", "aggregator"), hour, ("localhost", "127.0.0.1"))
    store = LocalModelStore(tmp_path / "models", "t1")
    store_model(store, BASE, base_model())
    service = AggregatorService(MemoryStateStore("t1"), store, tmp_path / "spool", chunk_bytes=4096)
    server = build_server(service, "127.0.0.1", 0, max_workers=16, tls=identity, check_agents=False)
    target = f"127.0.0.1:{server.port}"
    scheduler = ca.issue_identity(Identity("t1", "service", "scheduler"), hour)
    channels = {a: channel(target, ca.issue_identity(Identity("t1", "agent", a), hour)) for a in ("a", "b", "c")}
    yield channel(target, scheduler), channels, store, authority.all("abc")
    for ch in channels.values():
        ch.close()
    server.stop(0)


def test_behind_mutual_tls_an_agent_speaks_only_as_itself(tls_plane):
    control_channel, channels, store, credentials = tls_plane
    control = aggregator_pb2_grpc.AggregatorControlStub(control_channel)
    control.OpenRound(secure_plan(["a", "b", "c"], timeout=60), timeout=5)
    as_a = spb_grpc.SecureAggregationStub(channels["a"])
    keys = spb.AdvertiseRequest(run_id=RUN, round=1, agent_id="b", c_pk=bytes(range(32)), s_pk=bytes(range(1, 33)))

    assert status_of(lambda: as_a.Advertise(keys, timeout=5)) == (
        grpc.StatusCode.PERMISSION_DENIED, "this certificate is agent 'a''s; the message names 'b'")
    for name, call in every_call(as_a, agent_id="b").items():
        assert status_of(call)[0] == grpc.StatusCode.PERMISSION_DENIED, name
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(run_agent, channels[a], a, changes(i), 5, participants="abc", credentials=credentials)
                   for i, a in enumerate("abc")]
        [f.result(timeout=60) for f in futures]
    after = spb.StepRequest(run_id=RUN, round=1, agent_id="b", wait_s=0)
    assert status_of(lambda: as_a.GetShares(after, timeout=5))[0] == grpc.StatusCode.PERMISSION_DENIED
    event = wait_terminal(control, RUN, 1)

    assert event.state == round_pb2.ROUND_STATE_COMMITTED, event.reason
    assert store.lineage(event.version)["secure_aggregation"]["uploaded"] == 3
