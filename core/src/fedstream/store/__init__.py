"""Model versions at rest as safetensors: the store interface and its implementations."""

from fedstream.store.base import ModelReader, ModelVersion, ModelWriter, version_id
from fedstream.store.interface import Evaluations, KeptUpdates, ModelStore, ModelVersions, StrategyStates
from fedstream.store.local import LocalModelStore

__all__ = [
    "Evaluations",
    "KeptUpdates",
    "LocalModelStore",
    "ModelReader",
    "ModelStore",
    "ModelVersion",
    "ModelVersions",
    "ModelWriter",
    "StrategyStates",
    "version_id",
]
