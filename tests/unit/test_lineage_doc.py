"""Lineage without a server: the document a round's version gets, the plan's context, what an
agent may say of itself, the data fingerprint, and model cards that escape what sites send."""

from __future__ import annotations

import json
import random
import re

import pytest

from fedstream.convert import plan_from_proto, plan_to_proto, report_from_proto, report_to_proto
from fedstream.errors import InvalidArgument
from fedstream.lineage import MAX_LINEAGE_CONTEXT_BYTES, build_lineage, parents_of, parse_context
from fedstream.provenance import MAX_PROVENANCE_CHARS, Provenance, check_provenance_field, clip
from fedstream.rounds import RoundKind, RoundPlan, UpdateReport
from fedstream.staleness import BufferSpec, StalenessFunction
from fedstream_scheduler.cards import md, model_card
from fedstream_scheduler.lineage import summary
from fedstream_tasks.base import SiteDataSettings
from fedstream_tasks.fingerprint import data_fingerprint, fingerprint_listing, folder_fingerprint


def make_plan(kind: RoundKind = RoundKind.TRAIN, **kw: object) -> RoundPlan:
    fields: dict[str, object] = dict(run_id="r1", round=3, kind=kind, base_version="r1/000002" if kind.needs_base else "",
                                     participants=("a", "b", "c"), min_updates=1, deadline_unix=10.0, task="digits")
    fields.update(kw)
    return RoundPlan(**fields)  # type: ignore[arg-type]


def report(agent: str, examples: int, **kw: str) -> UpdateReport:
    return UpdateReport(agent, examples, {"loss": 0.5}, 100, float(examples), **kw)


class TestDocument:
    def test_a_training_rounds_version_names_its_base_participants_and_stragglers(self):
        context = json.dumps({"federation_id": "fed", "started_by": "token/t1 (ops, operator)",
                              "code": {"fedstream-scheduler": "1.2"}, "training": {"local_epochs": 2}})
        plan = make_plan(strategy="fedprox", strategy_params='{"mu": 0.1}', compression="int8",
                         lineage_context=context)
        reports = [report("a", 10, agent_version="0.1", task_version="digits@0.3", data_fingerprint="ab" * 32),
                   report("b", 30)]

        doc = build_lineage(plan, "r1/000003", reports, ["c"], 123.0)

        assert doc["schema_version"] == 1 and doc["version"] == "r1/000003"
        assert doc["parents"] == ["r1/000002"]
        assert (doc["run_id"], doc["round"], doc["kind"], doc["committed_unix"]) == ("r1", 3, "train", 123.0)
        assert (doc["federation_id"], doc["started_by"]) == ("fed", "token/t1 (ops, operator)")
        assert doc["strategy"] == {"name": "fedprox", "params": {"mu": 0.1}}
        assert doc["compression"] == "int8" and doc["distillation"] is None and doc["asynchronous"] is None
        assert doc["task"] == {"name": "digits", "version": "0.3"}
        assert doc["participants"] == [
            {"agent_id": "a", "examples": 10, "metrics": {"loss": 0.5}, "agent_version": "0.1",
             "task_version": "digits@0.3", "data_fingerprint": "ab" * 32},
            {"agent_id": "b", "examples": 30, "metrics": {"loss": 0.5}, "agent_version": "",
             "task_version": "", "data_fingerprint": ""},
        ]
        assert doc["stragglers"] == ["c"]
        assert doc["training"] == {"local_epochs": 2}
        assert doc["code"]["scheduler"] == {"fedstream-scheduler": "1.2"}
        assert set(doc["code"]["aggregator"]) == {"fedstream-core", "fedstream-aggregator"}
        json.dumps(doc)  # stored as JSON

    def test_an_init_version_has_no_parent(self):
        assert parents_of(make_plan(RoundKind.INIT), [report("a", 1)]) == []

    def test_a_buffers_parents_are_its_base_and_its_updates_bases_newest_first(self):
        buffer = BufferSpec(3, 3, StalenessFunction.CONSTANT, a=0.5, b=0.0, max_staleness=4)
        plan = make_plan(round=5, base_version="r1/000004", buffer=buffer)
        reports = [report("a", 1, base_version="r1/000002"), report("b", 1, base_version="r1/000004"),
                   report("c", 1, base_version="r1/000003"), report("d", 1, base_version="r1/000002")]

        assert parents_of(plan, reports) == ["r1/000004", "r1/000003", "r1/000002"]
        doc = build_lineage(plan, "r1/000005", reports, [], 1.0)
        assert doc["asynchronous"]["buffer_size"] == 3

    def test_distillation_records_its_figures(self):
        plan = make_plan(distill=True, lineage_context=json.dumps({"distillation": {"distill_every": 2}}))
        doc = build_lineage(plan, "r1/000003", [report("a", 1)], [], 1.0, figures={"distill_images": 64.0})
        assert doc["distillation"] == {"figures": {"distill_images": 64.0}, "distill_every": 2}

    @pytest.mark.parametrize("text", ["[1, 2]", "not json", '"a string"'])
    def test_a_context_must_be_a_json_object(self, text):
        with pytest.raises(InvalidArgument, match="lineage_context must be a JSON object"):
            parse_context(text)

    def test_a_context_is_bounded(self):
        with pytest.raises(InvalidArgument, match="lineage_context takes at most"):
            parse_context(json.dumps({"x": "y" * MAX_LINEAGE_CONTEXT_BYTES}))
        assert parse_context("") == {}


class TestWire:
    def test_the_context_travels_with_the_plan_but_is_not_its_identity(self):
        plan = make_plan(lineage_context='{"federation_id": "fed"}')
        back = plan_from_proto(plan_to_proto(plan))
        assert back.lineage_context == '{"federation_id": "fed"}'
        assert RoundPlan.from_dict(plan.to_dict()).lineage_context == plan.lineage_context
        # A scheduler that opens the round again with another context opens the same round.
        assert make_plan(lineage_context='{"started_by": "x"}') == plan

    def test_provenance_travels_with_reports_and_the_base_stays_inside(self):
        r = report("a", 3, agent_version="1", task_version="t@2", data_fingerprint="f", base_version="r1/000001")
        back = report_from_proto(report_to_proto(r))
        assert (back.agent_version, back.task_version, back.data_fingerprint) == ("1", "t@2", "f")
        assert back.base_version == ""
        assert UpdateReport.from_dict(r.to_dict()) == r
        # Reports without them keep their old form.
        assert set(report("b", 1).to_dict()) == {"agent_id", "num_examples", "metrics", "bytes_received", "weight"}


class TestProvenance:
    @pytest.mark.parametrize("field", ["agent_version", "task_version", "data_fingerprint"])
    def test_each_field_is_bounded_and_named_when_refused(self, field):
        values = {"agent_version": "1.0", "task_version": "digits@1.0", "data_fingerprint": "0" * 64}
        assert Provenance.checked(**values) == Provenance(**values)
        with pytest.raises(InvalidArgument, match=f"^{field} has {MAX_PROVENANCE_CHARS + 1} characters"):
            Provenance.checked(**{**values, field: "x" * (MAX_PROVENANCE_CHARS + 1)})
        for bad in ("line\nbreak", "tab\there", "caf\u00e9", "nul\x00"):
            with pytest.raises(InvalidArgument, match=f"^{field} holds"):
                Provenance.checked(**{**values, field: bad})

    def test_empty_is_an_agent_that_says_nothing(self):
        assert check_provenance_field("agent_version", "") == ""

    def test_clip_makes_any_value_acceptable(self):
        value = clip("caf\u00e9\n" + "x" * 500)
        assert check_provenance_field("task_version", value) == value
        assert value.startswith("caf??") and len(value) == MAX_PROVENANCE_CHARS


class TestFingerprint:
    def test_the_same_files_listed_in_any_order_give_the_same_fingerprint(self):
        listing = [(f"dir{i % 3}/img{i}.jpg", 1000 + i) for i in range(50)]
        shuffled = listing[:]
        random.Random(1).shuffle(shuffled)
        assert fingerprint_listing(shuffled) == fingerprint_listing(listing)
        assert re.fullmatch("[0-9a-f]{64}", fingerprint_listing(listing))

    def test_a_size_a_name_or_a_file_more_changes_it(self):
        listing = [("a.jpg", 10), ("b/c.jpg", 20)]
        base = fingerprint_listing(listing)
        assert fingerprint_listing([("a.jpg", 11), ("b/c.jpg", 20)]) != base
        assert fingerprint_listing([("a2.jpg", 10), ("b/c.jpg", 20)]) != base
        assert fingerprint_listing([*listing, ("d.jpg", 0)]) != base

    def test_a_folder_is_fingerprinted_by_names_and_sizes_never_contents(self, tmp_path):
        first, second = tmp_path / "one", tmp_path / "two"
        for root, names, fill in ((first, ["x.bin", "sub/y.bin", "sub/z.bin"], b"a"),
                                  (second, ["sub/z.bin", "x.bin", "sub/y.bin"], b"b")):
            for name in names:
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                (root / name).write_bytes(fill * (10 * len(name)))
        assert folder_fingerprint(first) == folder_fingerprint(second)  # same names and sizes, other bytes
        (second / "x.bin").write_bytes(b"b" * 3)
        folder_fingerprint.cache_clear()
        assert folder_fingerprint(first) != folder_fingerprint(second)

    def test_bundled_data_is_fingerprinted_by_its_partition(self, tmp_path):
        one = data_fingerprint("digits", SiteDataSettings(site_index=0, num_sites=3))
        assert one == data_fingerprint("digits", SiteDataSettings(site_index=0, num_sites=3))
        assert one != data_fingerprint("digits", SiteDataSettings(site_index=1, num_sites=3))
        (tmp_path / "f").write_bytes(b"123")
        assert data_fingerprint("digits", SiteDataSettings(path=tmp_path)) == fingerprint_listing([("f", 3)])


HOSTILE = "evil](http://x.example) <script>alert(1)</script> | **bold** `code`\n# heading"


class TestCard:
    def doc(self) -> dict[str, object]:
        plan = make_plan(lineage_context=json.dumps({"federation_id": "fed", "started_by": HOSTILE}))
        reports = [UpdateReport(HOSTILE, 7, {HOSTILE: 0.25}, 1, 7.0, agent_version=clip(HOSTILE))]
        doc = build_lineage(plan, "r1/000003", reports, [HOSTILE], 1_700_000_000.0)
        return {**doc, "evaluations": {"r1-000004": {"examples": 5, "metrics": {HOSTILE: 0.5}}},
                "model": {"tensors": 2, "parameters": 30, "bytes": 120, "dtypes": {"float32": 2}, "sha256": "00"}}

    def test_markdown_escapes_every_value_a_site_sends(self):
        markdown, card = model_card(self.doc())
        assert "<script>" not in markdown and "**bold**" not in markdown and "`code`" not in markdown
        assert not re.search(r"(?<!\\)\]\(http", markdown)  # no link
        assert "\n# heading" not in markdown
        body = [line for line in markdown.splitlines() if "evil" in line]
        assert body and all(r"\<script\>" in line for line in body)
        # Table rows keep their columns: every | of a value is escaped.
        rows = [line for line in markdown.splitlines() if line.startswith("| evil")]
        assert rows and all(len(re.findall(r"(?<!\\)\|", row)) == 7 for row in rows)
        assert card["participants"][0]["agent_id"] == HOSTILE  # JSON keeps values as they are
        assert card["examples"] == 7 and card["stragglers"] == [HOSTILE]

    def test_md_leaves_no_control_a_terminal_obeys_or_a_reader_sees_reordered(self):
        # CSI as C1 (\x9b2J clears a terminal), a right-to-left override, an isolate, a mark.
        assert md("acc\x9b2J\u202eycarucca\u2066x\u2069\u200f") == r"acc 2J ycarucca x "
        markdown, _ = model_card({**self.doc(), "participants": [
            {"agent_id": "a", "examples": 1, "metrics": {"acc\x9b\u202e": 0.5}}]})
        assert not re.search("[\x80-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]", markdown)

    def test_md_leaves_plain_words_readable(self):
        assert md("site-1 run/000002") == r"site\-1 run\/000002"
        assert md("accuracy") == "accuracy"

    def test_the_json_card_carries_the_lineage_evaluations_and_tensors(self):
        _, card = model_card(self.doc())
        assert card["version"] == "r1/000003" and card["provenance"]["parents"] == ["r1/000002"]
        assert card["model"]["parameters"] == 30 and "r1-000004" in card["evaluations"]
        assert card["training"]["strategy"] == {"name": "fedavg", "params": {}}

    def test_summary_counts_participants_and_examples(self):
        node = summary(self.doc())
        assert (node["participants"], node["examples"], node["missing"]) == (1, 7, False)


def test_an_agent_says_its_version_its_tasks_and_its_datas_fingerprint(tmp_path):
    from fedstream.version import distribution_version
    from fedstream_agent.provenance import provenance_of

    (tmp_path / "img.jpg").write_bytes(b"x" * 5)
    said = provenance_of("digits", SiteDataSettings(path=tmp_path))

    assert said.agent_version == distribution_version("fedstream-agent")
    assert said.task_version == f"digits@{distribution_version('fedstream-tasks')}"
    assert said.data_fingerprint == fingerprint_listing([("img.jpg", 5)])
    assert Provenance.checked(said.agent_version, said.task_version, said.data_fingerprint) == said
    # A module:Class task of no installed distribution says so, within the bounds.
    assert provenance_of("no_such_module:Task", SiteDataSettings()).task_version == "no_such_module:Task@unknown"
