"""Every fence of the README and docs/ says what it holds: a command block the docs test runs
(`sh`), one it shows without running (`sh example`, with a `# example` comment saying why), or
something that is not a command (text, json, python...)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedstream_testing.docblocks import EXAMPLE, RUN, blocks, documents, fence_problems, script

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", documents(ROOT), ids=lambda p: p.name)
def test_every_fence_names_its_language(path):
    assert fence_problems(path) == []


def test_the_readme_has_command_blocks_that_run():
    infos = [b.info for b in blocks(ROOT / "README.md")]
    assert RUN in infos


def test_an_example_without_its_reason_is_caught(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("Run:\n\n```sh example\nkubectl get pods\n```\n\n```\nbare\n```\n\n```sh\necho hi\n```\n")
    assert fence_problems(doc) == [
        "doc.md:3: an `sh example` block starts with a `# example ...` comment",
        "doc.md:7: fence info '' is not one of " + str(sorted({"sh", "sh example", "text", "json", "python",
                                                               "yaml", "promql", "toml"})),
    ]
    assert [b.info for b in blocks(doc)] == [EXAMPLE, "", RUN]
    assert script(doc) == "set -e\necho '>>> doc.md:11' >&2\necho hi\n"


def test_an_unclosed_fence_is_an_error(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("```sh\necho hi\n")
    with pytest.raises(ValueError, match="never closed"):
        blocks(doc)
