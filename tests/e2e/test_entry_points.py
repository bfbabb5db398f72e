"""The services' console scripts as processes: `--version`, and misspelt settings refused."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from fedstream.exitcodes import ExitCode

BIN = Path(sys.executable).parent
COMMANDS = ["fedstream-scheduler", "fedstream-aggregator", "fedstream-agent"]


def _run(command: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / command), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("command", COMMANDS)
def test_version_prints_the_version_and_exits_0(command):
    done = _run(command, "--version")

    assert done.returncode == ExitCode.OK, done.stderr
    assert done.stdout.strip() == f"{command} {version(command)}"


@pytest.mark.parametrize(
    "command, variable, nearest",
    [
        ("fedstream-scheduler", "FEDSTREAM_SCHEDULER_GRPC__PORTT", "FEDSTREAM_SCHEDULER_GRPC__PORT"),
        ("fedstream-scheduler", "FEDSTREAM_SCHEDULER_GRPCC__PORT", "FEDSTREAM_SCHEDULER_GRPC__PORT"),
        ("fedstream-aggregator", "FEDSTREAM_AGGREGATOR_GRPC__PORTT", "FEDSTREAM_AGGREGATOR_GRPC__PORT"),
        ("fedstream-aggregator", "FEDSTREAM_AGGREGATOR_GRPCC__PORT", "FEDSTREAM_AGGREGATOR_GRPC__PORT"),
        ("fedstream-agent", "FEDSTREAM_AGENT_METRICS__PORTT", "FEDSTREAM_AGENT_METRICS__PORT"),
        ("fedstream-agent", "FEDSTREAM_AGENT_METRICSS__PORT", "FEDSTREAM_AGENT_METRICS__PORT"),
    ],
)
def test_a_misspelt_variable_exits_2_naming_it_and_the_nearest_name(command, variable, nearest):
    done = _run(command, env={variable: "50099"})

    assert done.returncode == ExitCode.BAD_SETTINGS
    assert f"unknown setting {variable} (did you mean {nearest}?)" in done.stderr
