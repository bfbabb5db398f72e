"""The unit tier starts no process: a test that tries fails, naming the command."""

from __future__ import annotations

import os
import subprocess

import pytest


@pytest.fixture(autouse=True)
def no_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: subprocess.Popen[bytes], args: object, *rest: object, **kwargs: object) -> None:
        raise AssertionError(f"a unit test started a process ({args!r}): it belongs in tests/integration or tests/e2e")

    def refuse_fork() -> int:
        raise AssertionError("a unit test forked: it belongs in tests/integration or tests/e2e")

    monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse)
    monkeypatch.setattr(os, "fork", refuse_fork)
    return
