"""Docs that are tests: every command block (```sh) of the README and of docs/*.md runs as
written, document by document, in order, as one script from a scratch directory that holds the
repository's files. A document fails when a command fails, or when its commands leave a process
running (each document that starts something says how to stop it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fedstream_testing.docblocks import RUN, blocks, documents, run_script, scratch_checkout, script

ROOT = Path(__file__).resolve().parents[2]
RUNNABLE = [p for p in documents(ROOT) if any(b.info == RUN for b in blocks(p))]


def reader_environment(home: Path) -> dict[str, str]:
    """A reader's shell: this machine's PATH and Python path, a home of its own, and none of the
    project's settings (a variable a test run set must not help the commands)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDSTREAM_")}
    env["HOME"] = str(home)
    env.pop("XDG_CONFIG_HOME", None)
    return env


@pytest.mark.timeout(900)
@pytest.mark.parametrize("path", RUNNABLE, ids=lambda p: p.name)
def test_the_documents_commands_run_as_written(path, tmp_path):
    work = scratch_checkout(ROOT, tmp_path / "clone")
    home = tmp_path / "home"
    home.mkdir()

    outcome = run_script(script(path), work, reader_environment(home), timeout_s=840)

    tail = "\n".join(outcome.output.splitlines()[-60:])
    assert outcome.returncode == 0, f"{path.name}: a command failed (exit {outcome.returncode}):\n{tail}"
    assert outcome.left_running == [], f"{path.name}: its commands left processes running:\n{tail}"
