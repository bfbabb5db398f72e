"""State records read what a newer release wrote: fields they do not know are left out."""

from __future__ import annotations

import dataclasses

import pytest

from fedstream.rounds import RoundKind
from fedstream.state import MemoryStateStore
from fedstream.state.records import AgentRecord, FederationRecord, RoundRecord, RunRecord, from_doc


def test_from_doc_leaves_out_unknown_fields_and_keeps_the_known():
    doc = {"run_id": "r1", "spec": {"task": "digits"}, "trigger": "api", "added_later": {"x": 1}}

    rec = RunRecord.from_dict(doc)

    assert rec.run_id == "r1" and rec.spec == {"task": "digits"} and rec.trigger == "api"
    assert "added_later" not in dataclasses.asdict(rec)


def test_from_doc_still_refuses_a_document_missing_a_required_field():
    with pytest.raises(TypeError):
        from_doc(RunRecord, {"spec": {}})


def test_a_round_record_with_a_newer_field_reads():
    rnd = RoundRecord.from_dict({"run_id": "r1", "round": 2, "kind": "train", "state": "committed",
                                 "reports": [], "added_later": True})
    assert rnd.round == 2 and rnd.kind is RoundKind.TRAIN


def test_an_agent_record_with_a_newer_field_reads():
    rec = from_doc(AgentRecord, {"agent_id": "a1", "tasks": ["digits"], "added_later": 1}, last_heartbeat_unix=5.0)
    assert rec.agent_id == "a1" and rec.last_heartbeat_unix == 5.0


def test_a_federation_document_written_by_a_newer_release_reads_and_updates():
    state = MemoryStateStore("t1")
    doc = {**dataclasses.asdict(FederationRecord("f1", {"task": "digits"})), "added_later": [1, 2]}
    assert state._doc_create("federation", "f1", doc)

    assert state.get_federation("f1").spec == {"task": "digits"}
    assert state.update_federation("f1", description="d").description == "d"
    assert [f.federation_id for f in state.list_federations()] == ["f1"]
