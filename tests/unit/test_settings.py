"""The services' settings objects read from the environment: nested defaults, unknown names."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import get_args

import pytest
from pydantic import BaseModel, SecretStr
from pydantic_settings import BaseSettings

from fedstream.config import load_settings, unknown_variables, variable_names
from fedstream_agent.settings import AgentSettings
from fedstream_aggregator.settings import AggregatorSettings
from fedstream_scheduler.settings import SchedulerSettings

SERVICES: list[type[BaseSettings]] = [SchedulerSettings, AggregatorSettings, AgentSettings]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No FEDSTREAM_ variable of the calling shell reaches these tests."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("FEDSTREAM_"):
            monkeypatch.delenv(name)


def _as_env(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | dict):
        return json.dumps(value, default=str)
    return str(value)


def _default_variables(model: type[BaseModel], prefix: str) -> Iterator[tuple[str, str]]:
    """Every variable of ``model`` that has a plain default, with that default as its value."""
    for name, field in model.model_fields.items():
        env = prefix + name.upper()
        default = field.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            yield from _default_variables(type(default), env + "__")
        elif default is not None and not isinstance(default, SecretStr):
            yield env, _as_env(default)


def _every_default_variable() -> list[object]:
    return [
        pytest.param(cls, env, value, id=env)
        for cls in SERVICES
        for env, value in _default_variables(cls, cls.model_config["env_prefix"])
    ]


@pytest.mark.parametrize("cls, env, value", _every_default_variable())
def test_setting_one_variable_to_its_default_changes_nothing(cls, env, value, monkeypatch):
    expected = cls().model_dump()
    monkeypatch.setenv(env, value)

    assert cls().model_dump() == expected


@pytest.mark.parametrize(
    "name, value",
    [("HOST", "127.0.0.1"), ("HEALTH_PORT", "50060"), ("PORT_FILE", "/tmp/aggregator.port"),
     ("MAX_WORKERS", "8")],
)
def test_the_aggregator_stays_on_50052_when_another_grpc_variable_is_set(name, value, monkeypatch):
    monkeypatch.setenv(f"FEDSTREAM_AGGREGATOR_GRPC__{name}", value)

    grpc = AggregatorSettings().grpc

    assert grpc.port == 50052
    assert str(getattr(grpc, name.lower())) == value


def test_each_service_keeps_its_own_grpc_port_by_default():
    assert SchedulerSettings().grpc.port == 50051
    assert AggregatorSettings().grpc.port == 50052
    assert AggregatorSettings(grpc={"host": "127.0.0.1"}).grpc.port == 50052


MISSPELT = [
    # (settings, variable, the valid name it should suggest): a misspelt top-level name, which
    # pydantic-settings ignores, and a misspelt nested one, which lands as an extra key.
    (SchedulerSettings, "FEDSTREAM_SCHEDULER_GRPCC__PORT", "FEDSTREAM_SCHEDULER_GRPC__PORT"),
    (SchedulerSettings, "FEDSTREAM_SCHEDULER_HEARTBEAT_INTERVAL", "FEDSTREAM_SCHEDULER_HEARTBEAT_INTERVAL_S"),
    (SchedulerSettings, "FEDSTREAM_SCHEDULER_API__PORTT", "FEDSTREAM_SCHEDULER_API__PORT"),
    (SchedulerSettings, "FEDSTREAM_SCHEDULER_STATE__REDIS__ULR", "FEDSTREAM_SCHEDULER_STATE__REDIS__URL"),
    (AggregatorSettings, "FEDSTREAM_AGGREGATOR_GRPCC__PORT", "FEDSTREAM_AGGREGATOR_GRPC__PORT"),
    (AggregatorSettings, "FEDSTREAM_AGGREGATOR_SPOOLDIR", "FEDSTREAM_AGGREGATOR_SPOOL_DIR"),
    (AggregatorSettings, "FEDSTREAM_AGGREGATOR_GRPC__PORTT", "FEDSTREAM_AGGREGATOR_GRPC__PORT"),
    (AggregatorSettings, "FEDSTREAM_AGGREGATOR_STORE__S3__BUCKETS", "FEDSTREAM_AGGREGATOR_STORE__S3__BUCKET"),
    (AgentSettings, "FEDSTREAM_AGENT_TLSS__CA_FILE", "FEDSTREAM_AGENT_TLS__CA_FILE"),
    (AgentSettings, "FEDSTREAM_AGENT_SCHEDULER_ENDPOINTS", "FEDSTREAM_AGENT_SCHEDULER_ENDPOINT"),
    (AgentSettings, "FEDSTREAM_AGENT_DATA__SITE_INDX", "FEDSTREAM_AGENT_DATA__SITE_INDEX"),
    (AgentSettings, "FEDSTREAM_AGENT_METRICS__PORT__X", "FEDSTREAM_AGENT_METRICS__PORT"),
]


@pytest.mark.parametrize("cls, variable, nearest", [pytest.param(*m, id=m[1]) for m in MISSPELT])
def test_a_misspelt_variable_is_refused_naming_it_and_the_nearest_name(cls, variable, nearest, monkeypatch, capsys):
    monkeypatch.setenv(variable, "1")

    settings = load_settings(cls, "fedstream-x")

    assert settings is None
    assert f"unknown setting {variable} (did you mean {nearest}?)" in capsys.readouterr().err


@pytest.mark.parametrize("cls", SERVICES)
def test_every_valid_name_is_known(cls):
    prefix = cls.model_config["env_prefix"]
    names = {n: "x" for n in variable_names(cls, prefix, "__")}

    assert len(names) > 20
    assert unknown_variables(cls, names) == []
    assert unknown_variables(cls, {n.lower(): "x" for n in names}) == []


def test_dict_settings_take_their_keys_one_by_one(monkeypatch):
    monkeypatch.setenv("FEDSTREAM_AGENT_LABELS__ZONE", "eu-west")

    assert load_settings(AgentSettings, "fedstream-agent").labels == {"zone": "eu-west"}


def test_the_variables_kubernetes_sets_for_services_are_not_settings():
    environ = {
        "FEDSTREAM_SCHEDULER_SERVICE_HOST": "10.0.0.7", "FEDSTREAM_SCHEDULER_SERVICE_PORT": "50051",
        "FEDSTREAM_SCHEDULER_SERVICE_PORT_GRPC": "50051", "FEDSTREAM_SCHEDULER_PORT": "tcp://10.0.0.7:50051",
        "FEDSTREAM_SCHEDULER_PORT_50051_TCP": "tcp://10.0.0.7:50051",
        "FEDSTREAM_SCHEDULER_PORT_50051_TCP_ADDR": "10.0.0.7",
        "FEDSTREAM_SCHEDULER_PORT_50051_TCP_PROTO": "tcp", "FEDSTREAM_SCHEDULER_PORT_50051_TCP_PORT": "50051",
        "FEDSTREAM_SCHEDULER_GRPC_PORT": "50051",
    }

    assert unknown_variables(SchedulerSettings, environ) == [
        "unknown setting FEDSTREAM_SCHEDULER_GRPC_PORT (did you mean FEDSTREAM_SCHEDULER_GRPC__PORT?)"]


def _nested_models(model: type[BaseModel]) -> Iterator[type[BaseModel]]:
    for field in model.model_fields.values():
        for candidate in (field.annotation, *get_args(field.annotation)):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                yield candidate
                yield from _nested_models(candidate)


@pytest.mark.parametrize("cls", SERVICES)
def test_every_settings_model_forbids_unknown_keys(cls):
    models = {cls, *_nested_models(cls)}

    assert len(models) > 5
    assert [m.__name__ for m in models if m.model_config.get("extra") != "forbid"] == []


def test_an_unknown_key_in_a_json_value_is_refused_naming_it(monkeypatch, capsys):
    monkeypatch.setenv("FEDSTREAM_AGGREGATOR_LEAVES", '[{"endpoint": "leaf-0:50052", "public_endpiont": "x"}]')

    assert load_settings(AggregatorSettings, "fedstream-aggregator") is None
    assert "leaves.0.public_endpiont" in capsys.readouterr().err
