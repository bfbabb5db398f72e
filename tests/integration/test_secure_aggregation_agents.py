"""Secure aggregation with real Agents over mutual TLS: they train the digits task, sign their
keys and the survivors with their identities, and upload their masked changes to a real
aggregator over loopback gRPC. Four commit with a fifth participant dropping right after
sharing its keys; under FedPav the private head never travels; a no-op round masks a zero
change; under local differential privacy each clipped and noised change is masked; an agent
restarted mid-round gives the round up before training. Each round commits base + the
survivors' (weighted) mean change within the quantization bound, the aggregator having seen
only masked updates."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from fedstream.privacy import DPMode, PrivacySpec, SecureAggregationSpec
from fedstream.rounds import Assignment, RoundKind, RoundPlan, TrainingConfig
from fedstream.secagg.quantize import error_bound
from fedstream.secagg.signing import Credentials
from fedstream.tensors import FlatBuffer
from fedstream_agent import secagg
from fedstream_agent.agent import Agent
from fedstream_agent.settings import AgentSettings, AgentTlsSettings
from fedstream_testing.support import wait_until

RUN = "run-sa"
SPEC = SecureAggregationSpec(max_dropout=0.4, clip_range=1.0, step_timeout_s=20.0)
SITES = ["site-0", "site-1", "site-2", "site-3"]


def read(store, version):
    with store.open(version) as reader:
        got = FlatBuffer(reader.layout)
        for chunk in reader.iter_chunks():
            got.write(chunk.offset, chunk.data)
    return got.arrays()


@pytest.fixture
def recorded(monkeypatch):
    """What each agent masked: its change and weight, recorded on the way to the mask (the
    aggregator never sees them)."""
    seen: dict[str, tuple[dict[str, np.ndarray], int]] = {}
    original = secagg.SecureAggregationClient.masked

    def masked(self, layout, change, weight):
        seen[self.agent_id] = ({k: np.array(v) for k, v in change.items()}, weight)
        return original(self, layout, change, weight)

    monkeypatch.setattr(secagg.SecureAggregationClient, "masked", masked)
    return seen


def agent_with_identity(site: str, tls_aggregator, home) -> Agent:
    """An Agent whose identity (enrolled beforehand) is in its identity directory."""
    ca_file = home / "ca.pem"
    ca_file.write_bytes(tls_aggregator.authority.ca.cert_pem)
    tls_aggregator.authority.identity(site).save(home / site)
    agent = Agent(AgentSettings(agent_id=site, device="cpu", cpu_threads=1,
                                tls=AgentTlsSettings(ca_file=ca_file, identity_dir=home / site)))
    agent._connect()  # loads the identity its channels present (the scheduler is not dialed)
    return agent


def raw_client(tls_aggregator, agent_id, participants):
    """The protocol driven by hand as ``agent_id`` (what a site that drops or restarts did)."""
    identity = tls_aggregator.authority.identity(agent_id)
    return secagg.SecureAggregationClient(tls_aggregator.channel(identity), RUN, 1, agent_id, SPEC,
                                          Credentials.of(identity), participants, give_up_unix=time.time() + 120)


def init_round(tls_aggregator, agent, training=None):
    """Round 0: ``agent`` uploads the digits task's initial model; returns its version."""
    endpoint, service = tls_aggregator.endpoint, tls_aggregator.server.service
    service.open_round(RoundPlan(RUN, 0, "init", "", (agent.agent_id,), 1, time.time() + 60, task="digits"))
    agent.handle(Assignment(RUN, 0, RoundKind.INIT, "digits", "", endpoint, endpoint, training or TrainingConfig(),
                            time.time() + 60))
    wait_until(lambda: service.snapshot(RUN, 0).state == "committed", 30, "the init round did not commit")
    return service.snapshot(RUN, 0).version


def assignment_of(tls_aggregator, base_version, training, participants, deadline):
    endpoint = tls_aggregator.endpoint
    return Assignment(RUN, 1, RoundKind.TRAIN, "digits", base_version, endpoint, endpoint, training, deadline,
                      participants=tuple(participants))


def train_round(tls_aggregator, agents, base_version, training, *, extra=(), target=0, strategy="fedavg",
                side=None):
    """Round 1 under secure aggregation: ``agents`` handle it in threads (``side`` beside them);
    returns the round's terminal snapshot."""
    service = tls_aggregator.server.service
    deadline = time.time() + 120
    participants = (*agents, *extra)
    service.open_round(RoundPlan(RUN, 1, "train", base_version, participants, SPEC.threshold(len(participants)),
                                 deadline, task="digits", strategy=strategy, target_updates=target,
                                 secure_aggregation=SPEC, privacy=training.privacy))
    assignment = assignment_of(tls_aggregator, base_version, training, participants, deadline)
    threads = [threading.Thread(target=a.handle, args=(assignment,)) for a in agents.values()]
    threads += [threading.Thread(target=side)] if side is not None else []
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    wait_until(lambda: service.snapshot(RUN, 1).state in ("committed", "failed"), 60)
    return service.snapshot(RUN, 1)


def assert_base_plus_mean(model_store, base_version, version, recorded):
    """The committed version is the base + the recorded changes' weighted mean (each
    coordinate clipped to the clip range: BatchNorm statistics may move more), within the
    quantization bound; tensors that were not masked keep the base's values."""
    base, got = read(model_store, base_version), read(model_store, version)
    assert sorted(got) == sorted(base)
    total = sum(w for _, w in recorded.values())
    some = next(iter(recorded.values()))[0]
    for name, values in got.items():
        if name not in some:  # not floating: it keeps the base's values
            assert np.array_equal(values, base[name]), name
            continue
        mean = sum(w * np.clip(c[name], -SPEC.clip_range, SPEC.clip_range) for c, w in recorded.values()) / total
        expected = base[name].astype(np.float64) + mean
        tolerance = error_bound(total, len(recorded)) + 1e-6 * (1 + np.abs(expected))
        assert np.all(np.abs(values - expected) <= tolerance), name


def test_real_agents_commit_the_survivors_mean_with_one_dropped_after_sharing_keys(
    tls_aggregator, model_store, recorded, tmp_path
):
    agents = {s: agent_with_identity(s, tls_aggregator, tmp_path) for s in SITES}
    base_version = init_round(tls_aggregator, agents["site-0"])
    training = TrainingConfig(seed=1, learning_rate=0.05, upload_delta=True, secure_aggregation=SPEC)
    gone = raw_client(tls_aggregator, "site-gone", (*SITES, "site-gone"))

    def drops_after_sharing() -> None:
        gone.advertise()
        gone.share_keys()  # then the site goes away

    snap = train_round(tls_aggregator, agents, base_version, training, extra=("site-gone",), target=4,
                       side=drops_after_sharing)

    assert snap.state == "committed", snap.reason
    assert sorted(recorded) == SITES
    assert_base_plus_mean(model_store, base_version, snap.version, recorded)
    lineage = model_store.lineage(snap.version)["secure_aggregation"]
    assert lineage["dropped"] == ["site-gone"] and lineage["uploaded"] == 4 and lineage["shared_keys"] == 5
    assert lineage["signed_survivors"] == 4


def test_fedpav_under_secure_aggregation_keeps_the_private_head_on_the_site(
    tls_aggregator, model_store, recorded, tmp_path
):
    sites = SITES[:3]
    agents = {s: agent_with_identity(s, tls_aggregator, tmp_path) for s in sites}
    base_version = init_round(tls_aggregator, agents["site-0"], TrainingConfig(shared_only=True))
    training = TrainingConfig(seed=1, learning_rate=0.05, upload_delta=True, shared_only=True,
                              secure_aggregation=SPEC)

    snap = train_round(tls_aggregator, agents, base_version, training, strategy="fedpav")

    assert snap.state == "committed", snap.reason
    assert sorted(recorded) == sites
    for change, _ in recorded.values():  # the private head was neither masked nor sent
        assert change and not [k for k in change if k.startswith("head.3.")]
    assert not [k for k in read(model_store, snap.version) if k.startswith("head.3.")]
    assert_base_plus_mean(model_store, base_version, snap.version, recorded)
    for agent in agents.values():  # each site still holds a head of its own
        assert [k for k in agent._private[RUN] if k.startswith("head.3.")]


def test_a_no_op_round_under_secure_aggregation_masks_a_zero_change(tls_aggregator, model_store, recorded, tmp_path):
    sites = SITES[:3]
    agents = {s: agent_with_identity(s, tls_aggregator, tmp_path) for s in sites}
    base_version = init_round(tls_aggregator, agents["site-0"])
    training = TrainingConfig(seed=1, no_op=True, upload_delta=True, secure_aggregation=SPEC)

    snap = train_round(tls_aggregator, agents, base_version, training)

    assert snap.state == "committed", snap.reason
    assert sorted(recorded) == sites
    assert all(not np.any(v) for change, _ in recorded.values() for v in change.values())
    base, got = read(model_store, base_version), read(model_store, snap.version)
    assert all(np.array_equal(got[k], base[k]) for k in base)  # a zero change quantizes to exactly zero
    assert model_store.lineage(snap.version)["secure_aggregation"]["uploaded"] == 3


def test_local_privacy_under_secure_aggregation_masks_clipped_noised_changes(
    tls_aggregator, model_store, recorded, tmp_path
):
    sites = SITES[:3]
    agents = {s: agent_with_identity(s, tls_aggregator, tmp_path) for s in sites}
    base_version = init_round(tls_aggregator, agents["site-0"])
    privacy = PrivacySpec(DPMode.LOCAL, clip_norm=0.5, noise_multiplier=0.01, epsilon_budget=100.0, delta=1e-5)
    training = TrainingConfig(seed=1, learning_rate=0.05, upload_delta=True, privacy=privacy,
                              secure_aggregation=SPEC)

    snap = train_round(tls_aggregator, agents, base_version, training)

    assert snap.state == "committed", snap.reason
    assert sorted(recorded) == sites and {w for _, w in recorded.values()} == {1}  # every update weighs 1
    for change, _ in recorded.values():
        d = sum(v.size for v in change.values())
        norm = np.sqrt(sum(float(np.sum(v**2)) for v in change.values()))
        # Clipped to C (training moves the model further), then noised: sqrt(C^2 + d (z C)^2).
        assert norm == pytest.approx(np.sqrt(0.5**2 + d * (0.01 * 0.5) ** 2), rel=0.05)
    assert_base_plus_mean(model_store, base_version, snap.version, recorded)


def test_an_agent_restarted_mid_round_gives_it_up_before_training_and_the_others_commit(
    tls_aggregator, model_store, recorded, monkeypatch, caplog, tmp_path
):
    sites = SITES[:3]
    agents = {s: agent_with_identity(s, tls_aggregator, tmp_path) for s in sites}
    restarted = agent_with_identity("site-3", tls_aggregator, tmp_path)  # a new process of an agent that shared keys
    base_version = init_round(tls_aggregator, agents["site-0"])
    training = TrainingConfig(seed=1, learning_rate=0.05, upload_delta=True, secure_aggregation=SPEC)
    trained: list[str] = []
    train = Agent._train
    monkeypatch.setattr(Agent, "_train", lambda self, *a: trained.append(self.agent_id) or train(self, *a))
    before = raw_client(tls_aggregator, "site-3", SITES)

    def first_life_then_restart() -> None:
        before.advertise()
        before.share_keys()  # then the process dies, its keys with it, and comes back
        restarted.handle(assignment_of(tls_aggregator, base_version, training, SITES, time.time() + 120))

    snap = train_round(tls_aggregator, agents, base_version, training, extra=("site-3",), target=3,
                       side=first_life_then_restart)

    assert snap.state == "committed", snap.reason
    assert sorted(trained) == sites  # the restarted agent gave the round up before training
    assert "round abandoned: FAILED_PRECONDITION" in caplog.text  # its new keys refused (the step may be over)
    assert "already advertised other keys" in caplog.text or "cannot advertise keys in step" in caplog.text
    assert_base_plus_mean(model_store, base_version, snap.version, recorded)
    lineage = model_store.lineage(snap.version)["secure_aggregation"]
    assert lineage["dropped"] == ["site-3"] and lineage["uploaded"] == 3
