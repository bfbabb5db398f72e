"""The settings as their readers see them: docs/settings.md generated and fresh, every field
described, `--help` listing every variable, `config` printing the values in effect with
credentials masked, distinct default ports on loopback, and start-up errors in one line naming
the variable."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import pytest
from pydantic import BaseModel
from pydantic_settings import BaseSettings

from fedstream.config import variable_names
from fedstream.exitcodes import ExitCode
from fedstream.settings_doc import MASK, effective, is_secret_setting, markdown, settings_of
from fedstream.startup import InvalidSettings, StartupError, load
from fedstream_agent.main import main as agent_main
from fedstream_agent.settings import AgentSettings
from fedstream_aggregator.main import main as aggregator_main
from fedstream_aggregator.settings import AggregatorSettings
from fedstream_scheduler.main import main as scheduler_main
from fedstream_scheduler.settings import SchedulerSettings

ROOT = Path(__file__).resolve().parents[2]
SERVICES: list[type[BaseSettings]] = [SchedulerSettings, AggregatorSettings, AgentSettings]
MAINS = {SchedulerSettings: scheduler_main, AggregatorSettings: aggregator_main, AgentSettings: agent_main}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No FEDSTREAM_ variable of the calling shell reaches these tests."""
    for name in list(os.environ):
        if name.upper().startswith("FEDSTREAM_"):
            monkeypatch.delenv(name)


def _models(model: type[BaseModel]) -> Iterator[type[BaseModel]]:
    yield model
    for field in model.model_fields.values():
        for candidate in (field.annotation, *get_args(field.annotation)):
            for inner in (candidate, *get_args(candidate)):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    yield from _models(inner)


def test_docs_settings_md_is_generated_from_the_settings_models():
    expected = markdown(SERVICES)

    assert (ROOT / "docs" / "settings.md").read_text() == expected, "stale: run `make settings-doc`"


@pytest.mark.parametrize("cls", SERVICES)
def test_every_field_of_every_settings_model_has_a_description(cls):
    fields = {f"{m.__name__}.{name}": f for m in _models(cls) for name, f in m.model_fields.items()}

    assert len(fields) > 20
    assert [name for name, f in fields.items() if not (f.description or "").strip()] == []


@pytest.mark.parametrize("cls", SERVICES)
def test_the_reference_lists_every_variable_that_sets_a_value(cls):
    names = variable_names(cls, cls.model_config["env_prefix"], "__")
    documented = {s.variable for s in settings_of(cls)}

    # A nested model's own variable (FEDSTREAM_SCHEDULER_GRPC, as JSON) is its fields' sum.
    assert [n for n in names if n not in documented and not any(d.startswith(n + "__") for d in documented)] == []
    page = (ROOT / "docs" / "settings.md").read_text()
    assert [v for v in documented if f"`{v}`" not in page] == []


@pytest.mark.parametrize("cls", SERVICES)
def test_help_lists_every_variable_with_its_default(cls, capsys):
    with pytest.raises(SystemExit) as done:
        MAINS[cls](["--help"])

    out = capsys.readouterr().out
    assert done.value.code == 0
    for s in settings_of(cls):
        assert f"  {s.variable} (default: " in out, s.variable
    assert "config" in out


def test_the_defaults_let_every_service_run_side_by_side_on_loopback():
    sched, agg, agent = SchedulerSettings(), AggregatorSettings(), AgentSettings()

    ports = [sched.grpc.port, agg.grpc.port, sched.enrollment.port, sched.api.port, sched.metrics.port,
             agg.metrics.port]
    assert ports == [50051, 50052, 50053, 8080, 9464, 9465]
    assert agent.metrics.port == 0  # several agents on one machine: each a free port
    hosts = [(s.variable, s.field.default) for cls in SERVICES for s in settings_of(cls) if s.path.endswith(".host")]
    assert len(hosts) == 6 and {h for _, h in hosts} == {"127.0.0.1"}, hosts


def test_config_prints_the_settings_in_effect_with_credentials_masked(monkeypatch, capsys):
    monkeypatch.setenv("FEDSTREAM_SCHEDULER_API__PORT", "18080")
    monkeypatch.setenv("FEDSTREAM_SCHEDULER_API__BOOTSTRAP_TOKEN", "bootstrap-secret-value-123")
    monkeypatch.setenv("FEDSTREAM_SCHEDULER_STATE__REDIS__URL", "rediss://admin:redis-pass@redis:6380/0")
    monkeypatch.setenv("FEDSTREAM_SCHEDULER_STATE__REDIS__PASSWORD", "redis-password")
    monkeypatch.setenv("FEDSTREAM_SCHEDULER_STORE__S3__ACCESS_KEY", "s3-access-id")
    monkeypatch.setenv("FEDSTREAM_SCHEDULER_STORE__S3__SECRET_KEY", "s3-secret")

    code = scheduler_main(["config"])

    out = capsys.readouterr().out
    lines = dict(line.split("=", 1) for line in out.splitlines())
    assert code == ExitCode.OK
    assert set(lines) == {s.variable for s in settings_of(SchedulerSettings)}
    assert lines["FEDSTREAM_SCHEDULER_API__PORT"] == "18080"
    assert lines["FEDSTREAM_SCHEDULER_GRPC__PORT"] == "50051"
    assert lines["FEDSTREAM_SCHEDULER_STATE__REDIS__URL"] == f"rediss://admin:{MASK}@redis:6380/0"
    for name in ("API__BOOTSTRAP_TOKEN", "STATE__REDIS__PASSWORD", "STORE__S3__ACCESS_KEY", "STORE__S3__SECRET_KEY"):
        assert lines[f"FEDSTREAM_SCHEDULER_{name}"] == MASK
    for secret in ("bootstrap-secret-value-123", "redis-pass", "s3-access-id", "s3-secret"):
        assert secret not in out


def test_config_masks_no_path_and_shows_unset_credentials_as_empty():
    values = dict(effective(AgentSettings(tls={"enrollment_token_file": Path("/run/token"), "ca_file": Path("ca.pem")})))

    assert values["FEDSTREAM_AGENT_TLS__ENROLLMENT_TOKEN_FILE"] == "/run/token"
    assert values["FEDSTREAM_AGENT_TLS__CA_FILE"] == "ca.pem"
    assert dict(effective(SchedulerSettings()))["FEDSTREAM_SCHEDULER_API__BOOTSTRAP_TOKEN"] == ""


def test_config_with_invalid_settings_exits_2_naming_the_variable(monkeypatch, capsys):
    monkeypatch.setenv("FEDSTREAM_AGGREGATOR_GRPC__PORT", "70000")

    assert aggregator_main(["config"]) == ExitCode.BAD_SETTINGS
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("fedstream-aggregator: FEDSTREAM_AGGREGATOR_GRPC__PORT=70000: ")


@pytest.mark.parametrize(
    "cls, variable, value, problem",
    [
        (AgentSettings, "FEDSTREAM_AGENT_TASKS", "digits", "is not valid JSON; write it as JSON, e.g. '[\"digits\"]'"),
        (AgentSettings, "FEDSTREAM_AGENT_LABELS", "zone=eu", "write it as JSON, e.g. '{\"key\": \"value\"}'"),
        (AggregatorSettings, "FEDSTREAM_AGGREGATOR_LEAVES", "not json",
         "is not valid JSON; write it as JSON, e.g. '[{\"endpoint\": \"leaf-0:50052\"}]'"),
        (SchedulerSettings, "FEDSTREAM_SCHEDULER_TLS__SERVER_NAMES", "scheduler.local", "is not valid JSON"),
        (SchedulerSettings, "FEDSTREAM_SCHEDULER_GRPC__PORT", "70000", "less than or equal to 65535"),
        (SchedulerSettings, "FEDSTREAM_SCHEDULER_LOG__LEVEL", "LOUD", "'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
        (AggregatorSettings, "FEDSTREAM_AGGREGATOR_LEAVES", '[{"endpoint": ""}]', "leaves.0.endpoint"),
        (AgentSettings, "FEDSTREAM_AGENT_LOG__GRPC", "maybe", "valid boolean"),
    ],
)
def test_an_invalid_variable_is_one_error_naming_it_and_its_value(cls, variable, value, problem, monkeypatch):
    monkeypatch.setenv(variable, value)

    with pytest.raises(InvalidSettings) as raised:
        load(cls)

    (error,) = raised.value.errors
    line = error.line(cls.model_config["env_prefix"])
    assert line.startswith(f"{variable}=") and value in line and problem in line, line
    assert "\n" not in line


@pytest.mark.parametrize("path", ["api.bootstrap_token", "state.redis.password", "store.s3.secret_key",
                                  "store.s3.access_key"])
def test_a_credential_is_never_echoed_in_an_error(path):
    variable = "FEDSTREAM_SCHEDULER_" + path.upper().replace(".", "__")
    error = StartupError(path, "hunter2", "refused", "fix it", secret=is_secret_setting(SchedulerSettings, path))

    line = error.line("FEDSTREAM_SCHEDULER_", {variable: "hunter2"})

    assert line == f"{variable}='***': refused; fix it"


def test_a_bad_credential_is_refused_without_echoing_it(monkeypatch):
    monkeypatch.setenv("FEDSTREAM_SCHEDULER_API__BOOTSTRAP_TOKEN", "too-short")

    with pytest.raises(InvalidSettings) as raised:
        load(SchedulerSettings)

    (error,) = raised.value.errors
    line = error.line("FEDSTREAM_SCHEDULER_")
    assert line.startswith("FEDSTREAM_SCHEDULER_API__BOOTSTRAP_TOKEN='***': should have at least 16 characters, not 9;")
    assert "too-short" not in line


def test_a_startup_error_names_the_variable_set_unset_or_defaulted():
    error = StartupError("tls.ca_file", None, "the CA is needed", "set it, or {tls.insecure_plaintext}=true")
    bound = StartupError("api.port", 8080, "cannot listen", "free it", ExitCode.CANNOT_BIND)

    assert error.line("FEDSTREAM_AGENT_", {}) == (
        "FEDSTREAM_AGENT_TLS__CA_FILE is not set: the CA is needed; set it, or "
        "FEDSTREAM_AGENT_TLS__INSECURE_PLAINTEXT=true")
    assert error.line("FEDSTREAM_AGENT_", {"fedstream_agent_tls__ca_file": "my ca.pem"}).startswith(
        "FEDSTREAM_AGENT_TLS__CA_FILE='my ca.pem': ")
    assert bound.line("FEDSTREAM_SCHEDULER_", {}).startswith("FEDSTREAM_SCHEDULER_API__PORT=8080 (the default): ")
