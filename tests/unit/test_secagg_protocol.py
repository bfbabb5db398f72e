"""Secure aggregation in process: masks cancel exactly, dropouts at every step, inconsistent
shares, and a client that refuses to reveal both secrets of one agent (the signatures against a
malicious aggregator: test_secagg_signing)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedstream.errors import InvalidArgument, PermissionDenied, ProtocolViolation, SecureAggregationFailed
from fedstream.privacy import SecureAggregationSpec
from fedstream.secagg import shamir
from fedstream.secagg.client import ClientSession
from fedstream.secagg.messages import (
    CIPHERTEXT_BYTES,
    AdvertiseKeys,
    EncryptedShare,
    RevealedShare,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from fedstream.secagg.quantize import quantize
from fedstream.secagg.server import ServerSession
from fedstream_testing.secagg import Authority

SPEC = SecureAggregationSpec(max_dropout=0.4, clip_range=1.0, step_timeout_s=5.0)
STEPS = ("advertise", "share", "upload", "consistency", "unmask")
AUTHORITY = Authority()
CREDENTIALS = AUTHORITY.all(f"agent-{i:02d}" for i in range(8))


def agent_ids(n: int) -> list[str]:
    return [f"agent-{i:02d}" for i in range(n)]


def session(agent: str, ids, spec: SecureAggregationSpec = SPEC) -> ClientSession:
    return ClientSession("run-1", "round-1", agent, spec, CREDENTIALS[agent], ids)


def signed(clients: dict[str, ClientSession], server: ServerSession, among) -> UnmaskRequest:
    """Closes the upload step and the consistency check, with the signatures of ``among``."""
    survivors = server.close_upload()
    for a in among:
        server.confirm(clients[a].confirm(survivors))
    return server.close_consistency()


def inputs(n: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {a: rng.integers(0, 2**64, size=size, dtype=np.uint64) for a in agent_ids(n)}


def run_round(
    xs: dict[str, np.ndarray],
    *,
    gone_before: dict[str, set[str]] | None = None,
    chunk: int = 7,
    spec: SecureAggregationSpec = SPEC,
) -> tuple[ServerSession, np.ndarray]:
    """One round; ``gone_before[step]`` are the agents that drop before answering ``step``."""
    gone = {step: set() for step in STEPS} | (gone_before or {})
    ids = sorted(xs)
    server = ServerSession("run-1", "round-1", ids, spec)
    clients = {a: session(a, ids, spec) for a in ids}
    alive = set(ids)

    def step(name: str) -> set[str]:
        alive.difference_update(gone[name])
        return alive

    for a in sorted(step("advertise")):
        server.advertise(clients[a].advertise())
    roster = server.close_advertise()
    for a in sorted(step("share")):
        server.share_keys(clients[a].share_keys(roster))
    server.close_share()
    size = len(next(iter(xs.values())))
    total = np.zeros(size, dtype=np.uint64)
    for a in sorted(step("upload")):
        clients[a].receive_shares(server.deliver(a))
        server.check_upload(a)
        for offset in range(0, size, chunk):
            total[offset : offset + chunk] += clients[a].mask(xs[a][offset : offset + chunk], offset)
        server.uploaded(a, 1)
    survivors = server.close_upload()
    for a in sorted(step("consistency")):
        server.confirm(clients[a].confirm(survivors))
    request = server.close_consistency()
    for a in sorted(step("unmask")):
        server.unmask(clients[a].unmask(request))
    correction = server.close_unmask()
    out = np.concatenate([correction.unmask(total[o : o + chunk], o) for o in range(0, size, chunk)])
    return server, out


def plain_sum(xs: dict[str, np.ndarray], among: set[str]) -> np.ndarray:
    total = np.zeros(len(next(iter(xs.values()))), dtype=np.uint64)
    for a in among:
        total += xs[a]
    return total


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(3, 8),
    size=st.integers(1, 40),
    chunk=st.integers(1, 17),
    drops=st.lists(st.sampled_from(STEPS), max_size=3),
    seed=st.integers(0, 2**16),
)
def test_masks_cancel_exactly_whatever_the_dropouts_and_chunks(n, size, chunk, drops, seed):
    xs = inputs(n, size, seed)
    ids = agent_ids(n)
    allowed = n - SPEC.threshold(n)
    drops = drops[:allowed]
    gone = {step: set() for step in STEPS}
    for i, step in enumerate(drops):
        gone[step].add(ids[i])

    server, out = run_round(xs, gone_before=gone, chunk=chunk)

    survivors = set(ids) - {ids[i] for i, step in enumerate(drops) if step not in ("consistency", "unmask")}
    assert np.array_equal(out, plain_sum(xs, survivors))
    assert server.figures()["uploaded"] == len(survivors)


@pytest.mark.parametrize("step", STEPS)
def test_a_dropout_at_each_step_at_the_threshold_gives_the_exact_sum(step):
    xs = inputs(5, 30)
    ids = agent_ids(5)
    dropped = set(ids[: 5 - SPEC.threshold(5)])

    server, out = run_round(xs, gone_before={step: dropped})

    expected_among = set(ids) if step in ("consistency", "unmask") else set(ids) - dropped
    assert np.array_equal(out, plain_sum(xs, expected_among))
    if step in ("advertise", "share", "upload"):
        assert server.figures()["uploaded"] == 5 - len(dropped)


@pytest.mark.parametrize("step", STEPS)
def test_dropouts_below_the_threshold_fail_the_round_naming_the_step(step):
    xs = inputs(5, 10)
    dropped = set(agent_ids(5)[: 5 - SPEC.threshold(5) + 1])
    words = {"advertise": "advertise keys", "share": "share keys", "upload": "upload",
             "consistency": "consistency check", "unmask": "unmask"}

    with pytest.raises(SecureAggregationFailed, match=f"^secure aggregation failed: {words[step]}: only"):
        run_round(xs, gone_before={step: dropped})


def test_a_dropped_agent_s_masks_are_removed_with_its_reconstructed_key():
    xs = inputs(6, 20)
    ids = agent_ids(6)

    server, out = run_round(xs, gone_before={"upload": {ids[2]}})

    assert np.array_equal(out, plain_sum(xs, set(ids) - {ids[2]}))
    assert server.figures()["dropped"] == [ids[2]]


def _prepared(n: int = 4) -> tuple[ServerSession, dict[str, ClientSession]]:
    ids = agent_ids(n)
    server = ServerSession("run-1", "round-1", ids, SPEC)
    clients = {a: session(a, ids) for a in ids}
    for a in ids:
        server.advertise(clients[a].advertise())
    return server, clients


def test_a_client_refuses_a_request_for_both_secrets_of_one_agent():
    server, clients = _prepared()
    roster = server.close_advertise()
    for c in clients.values():
        server.share_keys(c.share_keys(roster))
    server.close_share()
    ids = agent_ids(4)
    for a in ids:
        clients[a].receive_shares(server.deliver(a))
    for a in ids[:3]:
        server.uploaded(a, 1)
    request = signed(clients, server, ids[:3])
    me = clients["agent-00"]

    with pytest.raises(ProtocolViolation, match="both secrets of agent 'agent-03'"):
        me.unmask(UnmaskRequest(seed_of=tuple(ids), key_of=("agent-03",), signatures=request.signatures))
    with pytest.raises(ProtocolViolation, match="exactly once"):
        me.unmask(UnmaskRequest(seed_of=tuple(ids[:3]), key_of=(), signatures=request.signatures))
    response = me.unmask(request)
    with pytest.raises(ProtocolViolation, match="cannot unmask in step unmasked"):
        me.unmask(UnmaskRequest(seed_of=tuple(ids), key_of=()))
    assert {s.owner for s in response.keys} == {ids[3]}


def test_clients_refuse_steps_out_of_order():
    client = session("agent-00", agent_ids(3))

    with pytest.raises(ProtocolViolation, match="cannot mask an input in step new"):
        client.mask(np.zeros(3, dtype=np.uint64), 0)
    client.advertise()
    with pytest.raises(ProtocolViolation, match="cannot advertise keys in step advertised"):
        client.advertise()


def test_a_roster_with_a_lowered_threshold_is_refused():
    server, clients = _prepared()
    roster = server.close_advertise()
    lowered = type(roster)(roster.entries, roster.participants, 1)

    with pytest.raises(ProtocolViolation, match="threshold 1"):
        clients["agent-00"].share_keys(lowered)


def _dealer_lies(message: ShareKeys, client: ClientSession) -> ShareKeys:
    """The same agent's shares, re-dealt from other random polynomials for each holder."""
    fake = []
    for share in message.shares:
        other = session(client.agent_id, sorted(client.participants))
        other._c, other._s = client._c, client._s  # the same keys, another self-mask seed
        other._advertised = client._advertised
        other.step = client.step.ADVERTISED
        forged = other.share_keys(client._roster)  # type: ignore[arg-type]
        fake.append(next(s for s in forged.shares if s.recipient == share.recipient))
    return ShareKeys(message.agent_id, message.seed_commitment, tuple(fake))


def test_an_agent_dealing_inconsistent_shares_fails_the_round_naming_it():
    ids = agent_ids(5)
    server = ServerSession("run-1", "round-1", ids, SPEC)
    clients = {a: session(a, ids) for a in ids}
    for a in ids:
        server.advertise(clients[a].advertise())
    roster = server.close_advertise()
    for a in ids:
        message = clients[a].share_keys(roster)
        server.share_keys(_dealer_lies(message, clients[a]) if a == "agent-04" else message)
    server.close_share()
    for a in ids:
        clients[a].receive_shares(server.deliver(a))
        server.uploaded(a, 1)
    request = signed(clients, server, ids)
    for a in ids:
        server.unmask(clients[a].unmask(request))

    with pytest.raises(SecureAggregationFailed, match="agent 'agent-04' sent inconsistent shares"):
        server.close_unmask()
    with pytest.raises(SecureAggregationFailed):
        server.close_unmask()


def test_a_survivor_revealing_a_wrong_share_is_outvoted_and_named():
    xs = inputs(5, 12)
    ids = agent_ids(5)
    server = ServerSession("run-1", "round-1", ids, SPEC)
    clients = {a: session(a, ids) for a in ids}
    for a in ids:
        server.advertise(clients[a].advertise())
    roster = server.close_advertise()
    for a in ids:
        server.share_keys(clients[a].share_keys(roster))
    server.close_share()
    total = np.zeros(12, dtype=np.uint64)
    for a in ids:
        clients[a].receive_shares(server.deliver(a))
        total += clients[a].mask(xs[a], 0)
        server.uploaded(a, 1)
    request = signed(clients, server, ids)
    for a in ids:
        answer = clients[a].unmask(request)
        if a == "agent-01":
            answer = UnmaskResponse(
                a, tuple(RevealedShare(s.owner, (s.value + 1) % shamir.PRIME) for s in answer.seeds), ()
            )
        server.unmask(answer)

    out = server.close_unmask().unmask(total, 0)

    assert np.array_equal(out, plain_sum(xs, set(ids)))
    assert server.figures()["inconsistent_shares_from"] == ["agent-01"]


def test_hostile_messages_are_refused_and_change_nothing():
    server, clients = _prepared(4)
    me = clients["agent-00"]
    keys = server._keys["agent-00"]

    sig, cert = keys.signature, keys.certificate

    with pytest.raises(InvalidArgument, match="s_pk must be 32 bytes"):
        server.advertise(AdvertiseKeys("agent-00", keys.c_pk, b"short", sig, cert))
    with pytest.raises(InvalidArgument, match="signature must be 1 to 1024 bytes"):
        server.advertise(AdvertiseKeys("agent-00", keys.c_pk, keys.s_pk, b"", cert))
    with pytest.raises(InvalidArgument, match="certificate of 1 to 8192 bytes"):
        server.advertise(AdvertiseKeys("agent-00", keys.c_pk, keys.s_pk, sig, bytes(8193)))
    with pytest.raises(PermissionDenied, match="'mallory' is not a participant"):
        server.advertise(AdvertiseKeys("mallory", bytes(32), bytes(range(32)), sig, cert))
    with pytest.raises(ProtocolViolation, match="already advertised other keys"):
        server.advertise(AdvertiseKeys("agent-00", keys.s_pk, keys.c_pk, sig, cert))
    server.advertise(keys)  # the same message again: accepted, nothing changes
    roster = server.close_advertise()
    with pytest.raises(ProtocolViolation, match="cannot advertise keys in step share_keys"):
        server.advertise(AdvertiseKeys("agent-01", bytes(range(32)), bytes(range(1, 33)), sig, cert))
    message = me.share_keys(roster)
    stray = EncryptedShare("agent-00", "mallory", bytes(CIPHERTEXT_BYTES))
    with pytest.raises(PermissionDenied, match="'mallory' is not one"):
        server.share_keys(ShareKeys("agent-00", message.seed_commitment, (*message.shares[:-1], stray)))
    with pytest.raises(InvalidArgument, match="encrypted share must be"):
        server.share_keys(
            ShareKeys("agent-00", message.seed_commitment, (EncryptedShare("agent-00", "agent-01", b"x"),))
        )
    with pytest.raises(ProtocolViolation, match="unmasking has not started"):
        server.unmask(UnmaskResponse("agent-00", (), ()))
    with pytest.raises(ProtocolViolation, match="cannot upload a masked input in step share_keys"):
        server.check_upload("agent-00")
    assert server.figures()["shared_keys"] == 0 and server.figures()["advertised_keys"] == 4


def test_an_upload_from_an_agent_that_did_not_share_keys_is_refused():
    server, clients = _prepared(4)
    roster = server.close_advertise()
    for a in agent_ids(3):
        server.share_keys(clients[a].share_keys(roster))
    server.close_share()

    with pytest.raises(ProtocolViolation, match="'agent-03' did not share keys"):
        server.check_upload("agent-03")
    with pytest.raises(PermissionDenied):
        server.deliver("agent-03")


def test_the_ring_overflow_check_fails_the_round_before_unmasking():
    spec = SecureAggregationSpec(max_dropout=0.0, clip_range=2.0**38, step_timeout_s=5.0)
    ids = agent_ids(3)
    server = ServerSession("run-1", "round-1", ids, spec)
    clients = {a: session(a, ids, spec) for a in ids}
    for a in ids:
        server.advertise(clients[a].advertise())
    roster = server.close_advertise()
    for a in ids:
        server.share_keys(clients[a].share_keys(roster))
    server.close_share()
    for a in ids:
        server.uploaded(a, 1)

    with pytest.raises(SecureAggregationFailed, match="the ring would overflow"):
        server.close_upload()
    with pytest.raises(SecureAggregationFailed):
        quantize(np.zeros(2), 4, spec.clip_range)
