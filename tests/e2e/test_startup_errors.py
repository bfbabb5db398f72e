"""A service that cannot start says why in one line naming the variable to change, with its
documented exit code and no traceback (unless the log level is DEBUG); gRPC's own log lines
stay out unless asked for. Each case runs the real console script."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedstream.exitcodes import ExitCode

BIN = Path(sys.executable).parent
# gRPC's C core (absl) writes lines like "E1130 22:31:44.482613   18250 add_port.cc:83] ...".
GRPC_LINE = re.compile(r"^[EWIF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\]", re.M)
PLAINTEXT = {"FEDSTREAM_SCHEDULER_TLS__INSECURE_PLAINTEXT": "true", "FEDSTREAM_AGGREGATOR_TLS__INSECURE_PLAINTEXT": "true",
             "FEDSTREAM_AGENT_TLS__INSECURE_PLAINTEXT": "true"}
# Every other listener on a free port, so that only the one a case takes can fail.
FREE_PORTS = {
    "fedstream-scheduler": {"FEDSTREAM_SCHEDULER_GRPC__PORT": "0", "FEDSTREAM_SCHEDULER_ENROLLMENT__PORT": "0",
                            "FEDSTREAM_SCHEDULER_API__PORT": "0", "FEDSTREAM_SCHEDULER_METRICS__PORT": "0"},
    "fedstream-aggregator": {"FEDSTREAM_AGGREGATOR_GRPC__PORT": "0", "FEDSTREAM_AGGREGATOR_METRICS__PORT": "0"},
    "fedstream-agent": {"FEDSTREAM_AGENT_SCHEDULER_ENDPOINT": "127.0.0.1:1", "FEDSTREAM_AGENT_CPU_THREADS": "1"},
}


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another process (this one) listens on."""
    with socket.create_server(("127.0.0.1", 0)) as held:
        yield held.getsockname()[1]


def start(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith(("FEDSTREAM_", "GRPC_"))}
    prefix = command.removeprefix("fedstream-").upper()
    full = {**base, "HOME": str(cwd), **{k: v for k, v in PLAINTEXT.items() if f"_{prefix}_" in k},
            **FREE_PORTS[command], **env}
    return subprocess.run([str(BIN / command)], cwd=cwd, env=full, capture_output=True, text=True, timeout=180)


def the_one_line(done: subprocess.CompletedProcess[str], code: ExitCode, variable: str, value: str) -> str:
    """The failure's line: the only one naming ``variable``, the last one said, with the value."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert not GRPC_LINE.search(done.stderr), done.stderr
    assert [line for line in lines if variable in line] == lines[-1:], done.stderr
    assert f"{variable}={value}" in lines[-1], lines[-1]
    return lines[-1]


@pytest.mark.parametrize("command, variable", [
    ("fedstream-scheduler", "FEDSTREAM_SCHEDULER_API__PORT"),
    ("fedstream-scheduler", "FEDSTREAM_SCHEDULER_GRPC__PORT"),
    ("fedstream-scheduler", "FEDSTREAM_SCHEDULER_METRICS__PORT"),
    ("fedstream-aggregator", "FEDSTREAM_AGGREGATOR_GRPC__PORT"),
    ("fedstream-aggregator", "FEDSTREAM_AGGREGATOR_METRICS__PORT"),
    ("fedstream-agent", "FEDSTREAM_AGENT_METRICS__PORT"),
])
def test_a_taken_port_exits_3_naming_its_setting(command, variable, taken_port, tmp_path):
    done = start(command, tmp_path, {variable: str(taken_port)})

    line = the_one_line(done, ExitCode.CANNOT_BIND, variable, str(taken_port))
    assert f"cannot listen on 127.0.0.1:{taken_port} (Address already in use)" in line
    assert f"set {variable} to another one" in line


@pytest.mark.parametrize("command", ["fedstream-scheduler", "fedstream-aggregator"])
def test_an_unwritable_model_store_exits_4_naming_its_setting(command, tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    variable = f"FEDSTREAM_{command.removeprefix('fedstream-').upper()}_STORE__PATH"
    path = str(tmp_path / "a-file" / "models")

    line = the_one_line(start(command, tmp_path, {variable: path}), ExitCode.BAD_DATA, variable, path)

    assert "cannot create the directory" in line


@pytest.mark.parametrize("command", ["fedstream-aggregator", "fedstream-agent"])
def test_a_missing_ca_file_exits_2_naming_the_variable(command, tmp_path):
    prefix = f"FEDSTREAM_{command.removeprefix('fedstream-').upper()}_"
    missing = str(tmp_path / "ca.pem")
    env = {f"{prefix}TLS__INSECURE_PLAINTEXT": "false", f"{prefix}TLS__CA_FILE": missing}
    if command == "fedstream-aggregator":
        env[f"{prefix}TLS__CA_KEY_FILE"] = str(tmp_path / "ca-key.pem")

    line = the_one_line(start(command, tmp_path, env), ExitCode.BAD_SETTINGS, f"{prefix}TLS__CA_FILE", missing)

    assert "No such file or directory" in line and "tls.ca_file" not in line


def test_an_agent_without_a_ca_setting_exits_2_naming_the_variable(tmp_path):
    done = start("fedstream-agent", tmp_path, {"FEDSTREAM_AGENT_TLS__INSECURE_PLAINTEXT": "false"})

    lines = done.stderr.strip().splitlines()
    assert done.returncode == ExitCode.BAD_SETTINGS and "Traceback" not in done.stderr, done.stderr
    assert lines[-1].endswith(
        "FEDSTREAM_AGENT_TLS__CA_FILE is not set: the agent needs the tenant's CA certificate to trust the "
        "control plane; set it to the ca.pem given with the enrollment token (or "
        "FEDSTREAM_AGENT_TLS__INSECURE_PLAINTEXT=true, for development only)")


@pytest.mark.parametrize("tasks, problem", [
    ("digits", "is not valid JSON"),
    ('["digits", "nope"]', "unknown task 'nope'; known tasks: digits"),
])
def test_bad_agent_tasks_exit_2_naming_the_variable(tasks, problem, tmp_path):
    done = start("fedstream-agent", tmp_path, {"FEDSTREAM_AGENT_TASKS": tasks})

    line = the_one_line(done, ExitCode.BAD_SETTINGS, "FEDSTREAM_AGENT_TASKS", "")
    assert problem in line


def test_at_debug_level_the_traceback_follows_the_line(taken_port, tmp_path):
    done = start("fedstream-aggregator", tmp_path, {"FEDSTREAM_AGGREGATOR_GRPC__PORT": str(taken_port),
                                                    "FEDSTREAM_AGGREGATOR_LOG__LEVEL": "DEBUG"})

    assert done.returncode == ExitCode.CANNOT_BIND
    assert f"FEDSTREAM_AGGREGATOR_GRPC__PORT={taken_port}: cannot listen" in done.stderr
    assert "Traceback" in done.stderr


def test_grpcs_own_log_lines_appear_only_when_asked_for(taken_port, tmp_path):
    asked = start("fedstream-aggregator", tmp_path, {"FEDSTREAM_AGGREGATOR_GRPC__PORT": str(taken_port),
                                                     "FEDSTREAM_AGGREGATOR_LOG__GRPC": "true"})

    assert asked.returncode == ExitCode.CANNOT_BIND
    assert GRPC_LINE.search(asked.stderr), asked.stderr


def test_agents_on_one_machine_each_take_a_free_metrics_port(tmp_path):
    agents = []
    for i in range(2):
        port_file = tmp_path / f"metrics-{i}.port"
        env = {"FEDSTREAM_AGENT_METRICS__PORT_FILE": str(port_file), "FEDSTREAM_AGENT_AGENT_ID": f"site-{i}"}
        base = {k: v for k, v in os.environ.items() if not k.upper().startswith("FEDSTREAM_")}
        agents.append((port_file, subprocess.Popen(
            [str(BIN / "fedstream-agent")], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**base, **FREE_PORTS["fedstream-agent"], "FEDSTREAM_AGENT_TLS__INSECURE_PLAINTEXT": "true", **env})))
    try:
        logged = []
        for port_file, proc in agents:
            assert proc.stderr is not None
            for line in proc.stderr:
                if "metrics on http://" in line:
                    logged.append(int(line.rsplit(":", 1)[1].split("/")[0]))
                    break
            assert port_file.exists()
            assert proc.poll() is None
    finally:
        for _, proc in agents:
            proc.terminate()
            proc.wait(30)

    assert len(set(logged)) == 2 and 0 not in logged
    assert sorted(int(f.read_text()) for f, _ in agents) == sorted(logged)


def lines_until_serving(env: dict[str, str], cwd: Path) -> list[str]:
    """The scheduler's log lines up to the one saying it serves; the scheduler is stopped after."""
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith(("FEDSTREAM_", "GRPC_"))}
    full = {**base, "HOME": str(cwd), "FEDSTREAM_SCHEDULER_TLS__INSECURE_PLAINTEXT": "true",
            **FREE_PORTS["fedstream-scheduler"], **env}
    proc = subprocess.Popen([str(BIN / "fedstream-scheduler")], cwd=cwd, env=full, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if line.rstrip().endswith(" serving"):
                break
    finally:
        proc.terminate()
        proc.wait(30)
    assert lines and lines[-1].endswith(" serving"), lines
    return lines


@pytest.mark.parametrize("env, warned", [
    ({}, True),
    ({"FEDSTREAM_SCHEDULER_API__BOOTSTRAP_TOKEN": "x" * 16}, False),
    ({"FEDSTREAM_SCHEDULER_API__ENABLED": "false"}, False),
])
def test_a_scheduler_whose_api_has_no_token_warns_naming_the_variable(env, warned, tmp_path):
    lines = lines_until_serving(env, tmp_path)

    warnings = [line for line in lines if "FEDSTREAM_SCHEDULER_API__BOOTSTRAP_TOKEN" in line]
    if warned:
        (warning,) = warnings
        assert " WARNING " in warning and "the admin API has no token" in warning, warning
    else:
        assert warnings == [], lines


def test_a_scheduler_whose_state_holds_a_token_does_not_warn(tmp_path):
    lines_until_serving({"FEDSTREAM_SCHEDULER_API__BOOTSTRAP_TOKEN": "x" * 16}, tmp_path)

    lines = lines_until_serving({}, tmp_path)

    assert not [line for line in lines if "FEDSTREAM_SCHEDULER_API__BOOTSTRAP_TOKEN" in line], lines
