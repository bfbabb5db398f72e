"""Secure aggregation with real Agents over mutual TLS: four train the digits task, sign their
keys and the survivors with their identities, and upload their masked changes to a real
aggregator over loopback gRPC, a fifth participant drops right after sharing its keys; the
round commits base + the survivors' weighted mean change within the quantization bound, the
aggregator having seen only masked updates."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from fedstream.privacy import SecureAggregationSpec
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


def test_real_agents_commit_the_survivors_mean_with_one_dropped_after_sharing_keys(
    tls_aggregator, model_store, recorded, tmp_path
):
    endpoint = tls_aggregator.endpoint
    agents = {s: agent_with_identity(s, tls_aggregator, tmp_path) for s in SITES}
    service = tls_aggregator.server.service
    service.open_round(RoundPlan(RUN, 0, "init", "", ("site-0",), 1, time.time() + 60, task="digits"))
    agents["site-0"].handle(Assignment(RUN, 0, RoundKind.INIT, "digits", "", endpoint, endpoint, TrainingConfig(), time.time() + 60))
    wait_until(lambda: service.snapshot(RUN, 0).state == "committed", 30, "the init round did not commit")
    base_version = service.snapshot(RUN, 0).version
    participants = (*SITES, "site-gone")
    deadline = time.time() + 120
    service.open_round(RoundPlan(RUN, 1, "train", base_version, participants, 3, deadline, task="digits",
                                 target_updates=4, secure_aggregation=SPEC))
    training = TrainingConfig(seed=1, learning_rate=0.05, upload_delta=True, secure_aggregation=SPEC)
    assignment = Assignment(RUN, 1, RoundKind.TRAIN, "digits", base_version, endpoint, endpoint, training, deadline,
                            participants=participants)
    gone_identity = tls_aggregator.authority.identity("site-gone")
    gone = secagg.SecureAggregationClient(tls_aggregator.channel(gone_identity), RUN, 1, "site-gone", SPEC,
                                          Credentials.of(gone_identity), participants, give_up_unix=deadline)

    def drops_after_sharing() -> None:
        gone.advertise()
        gone.share_keys()  # then the site goes away

    threads = [threading.Thread(target=agents[s].handle, args=(assignment,)) for s in SITES]
    threads.append(threading.Thread(target=drops_after_sharing))
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    wait_until(lambda: service.snapshot(RUN, 1).state in ("committed", "failed"), 60)
    snap = service.snapshot(RUN, 1)

    assert snap.state == "committed", snap.reason
    assert sorted(recorded) == SITES
    base, got = read(model_store, base_version), read(model_store, snap.version)
    total = sum(w for _, w in recorded.values())
    for name, values in got.items():
        if name not in recorded["site-0"][0]:  # not floating: it keeps the base's values
            assert np.array_equal(values, base[name]), name
            continue
        # Each coordinate of a change is clipped to the clip range (BatchNorm statistics may move more).
        mean = sum(w * np.clip(c[name], -SPEC.clip_range, SPEC.clip_range) for c, w in recorded.values()) / total
        expected = base[name].astype(np.float64) + mean
        tolerance = error_bound(total, len(SITES)) + 1e-6 * (1 + np.abs(expected))
        assert np.all(np.abs(values - expected) <= tolerance), name
    lineage = model_store.lineage(snap.version)["secure_aggregation"]
    assert lineage["dropped"] == ["site-gone"] and lineage["uploaded"] == 4 and lineage["shared_keys"] == 5
    assert lineage["signed_survivors"] == 4
