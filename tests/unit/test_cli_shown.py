"""What the CLI prints for people shows every value as written: a metric name, a note or a reason
that a site or an operator chose cannot move the cursor, erase a line or reorder the text."""

from __future__ import annotations

import argparse

from fedstream_cli.api import emit
from fedstream_cli.lineage import _metrics

HOSTILE = "acc\x1b[2K\r\x9b1Aaccuracy 0.99\u202e\x07"


def test_a_table_shows_control_characters_as_question_marks(capsys):
    emit(argparse.Namespace(format="table"), {}, ["NAME   METRICS", f"site-a {_metrics({HOSTILE: 0.5})}"])
    out = capsys.readouterr().out
    assert out == "NAME   METRICS\nsite-a acc?[2K??1Aaccuracy 0.99?? 0.5\n"


def test_json_keeps_the_value_escaped(capsys):
    emit(argparse.Namespace(format="json"), {"name": HOSTILE}, [])
    out = capsys.readouterr().out
    assert "\\u001b[2K" in out and "\x1b" not in out and "\x9b" not in out
