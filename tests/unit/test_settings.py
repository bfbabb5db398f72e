"""The services' settings objects read from the environment: nested defaults, unknown names."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from pydantic import BaseModel, SecretStr
from pydantic_settings import BaseSettings

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
