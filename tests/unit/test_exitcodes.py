"""Exit codes are defined once and listed in the README."""

from __future__ import annotations

import re
from pathlib import Path

from fedstream.exitcodes import ExitCode

ROOT = Path(__file__).resolve().parents[2]


def test_the_codes_keep_their_numbers():
    assert {c.name: int(c) for c in ExitCode} == {
        "OK": 0, "FAILED": 1, "BAD_SETTINGS": 2, "CANNOT_BIND": 3, "BAD_DATA": 4, "NO_IDENTITY": 5,
        "INCOMPATIBLE_PROTOCOL": 6, "UNREACHABLE": 7}


def test_the_readme_lists_every_code():
    readme = (ROOT / "README.md").read_text()

    listed = [int(n) for n in re.findall(r"^\| (\d+) \| .+ \| .+ \|$", readme, re.MULTILINE)]

    assert listed == [int(c) for c in ExitCode]


def test_no_service_defines_its_own_codes():
    mains = [ROOT / "services" / d for d in ("scheduler", "aggregator", "client-agent")]

    defined = [p for d in mains for p in d.rglob("*.py") if re.search(r"^EXIT_\w+ = \d", p.read_text(), re.M)]

    assert defined == []
