"""Tasks: what a federation trains. A registry by name; each task imports PyTorch itself, so
only processes that run tasks (agents, the demo's evaluation) pull it in."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from fedstream.errors import InvalidArgument

if TYPE_CHECKING:
    from fedstream.tasks.base import Task


def _digits() -> Task:
    from fedstream.tasks.digits import DigitsTask

    return DigitsTask()


REGISTRY: dict[str, Callable[[], Task]] = {"digits": _digits}


def get_task(name: str) -> Task:
    """Raises InvalidArgument for a name that is not registered."""
    try:
        factory = REGISTRY[name]
    except KeyError:
        raise InvalidArgument(
            f"unknown task {name!r}; known tasks: {', '.join(sorted(REGISTRY))}"
        ) from None
    return factory()
