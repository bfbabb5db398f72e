"""bench/wan.py at CI size: one agent in a network namespace of its own behind a shaped link
with 40 ms of added round trip, a small model, two no-op rounds, every update counted.
Needs root and network namespaces; skips saying why otherwise."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fedstream_testing.wan_links import unavailable

ROOT = Path(__file__).resolve().parents[2]


def test_rounds_cross_an_emulated_wan_link_with_its_latency(tmp_path):
    if (reason := unavailable()) is not None:
        pytest.skip(f"emulated WAN links: {reason}")
    out = tmp_path / "wan.json"

    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "wan.py"), "--agents", "1", "--model-mb", "2", "--rounds", "2",
         "--links", "100/40", "--windows", "4096", "--window-links", "", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [link] = json.loads(out.read_text())
    assert link["link"] == "100/40" and link["run_state"] == "RUN_STATE_SUCCEEDED"
    assert link["rounds_committed"] == 2 and link["updates"] == 2
    assert link["echo_rtt_ms"] >= 40  # the relay holds each direction for at least half of it
    assert link["bytes_up"] >= 2 * 2_000_000 and link["bytes_down"] >= 2 * 2_000_000
    assert "Reproduce: .venv/bin/python bench/wan.py" in done.stdout
    assert not _left_behind(), "the benchmark left network namespaces behind"


def _left_behind() -> list[str]:
    """Namespaces of emulated links whose run (its process id is in the name) has exited."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    found = [(n, re.fullmatch(r"fsw([0-9a-f]+)p?n\d+", n)) for n in listed]
    return [n for n, m in found if m is not None and not Path(f"/proc/{int(m[1], 16)}").exists()]
