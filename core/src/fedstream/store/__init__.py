"""Model versions at rest as safetensors: the store interface and its implementations."""

from fedstream.store.base import ModelReader, ModelStore, ModelVersion, ModelWriter, version_id
from fedstream.store.local import LocalModelStore

__all__ = [
    "LocalModelStore",
    "ModelReader",
    "ModelStore",
    "ModelVersion",
    "ModelWriter",
    "version_id",
]
