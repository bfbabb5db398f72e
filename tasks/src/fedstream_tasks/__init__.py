"""Tasks: what a federation trains, found by name.

A name resolves, in this order, to
1. a task registered in this process (``register_task``; the built-in ones are),
2. a task another installed package declares under the ``fedstream_tasks`` entry-point group
   (``[project.entry-points."fedstream.tasks"] my-task = "my_module:MyTask"``),
3. ``"module:Class"``: the class imported from an importable module.

Each task imports PyTorch itself, so only processes that run tasks (agents, the demo's
evaluation) pull it in; looking names up does not.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from fedstream.errors import InvalidArgument

if TYPE_CHECKING:
    from fedstream_tasks.base import Task

ENTRY_POINT_GROUP = "fedstream.tasks"


def _lazy(path: str, **kwargs: Any) -> Callable[[], Task]:
    def factory() -> Task:
        module, _, attr = path.partition(":")
        return getattr(importlib.import_module(module), attr)(**kwargs)  # type: ignore[no-any-return]

    return factory


REGISTRY: dict[str, Callable[[], Task]] = {
    "digits": _lazy("fedstream_tasks.digits:DigitsTask"),
    # FedVision: object detection across camera owners (fedstream_tasks.detection).
    "fedvision": _lazy("fedstream_tasks.detection:DetectionTask", preset="full"),
    "fedvision-small": _lazy("fedstream_tasks.detection:DetectionTask", preset="small"),
    "fedvision-tiny": _lazy("fedstream_tasks.detection:DetectionTask", preset="tiny"),
    # FedReID: person re-identification with private classifiers (fedstream_tasks.reid).
    "fedreid": _lazy("fedstream_tasks.reid:ReIDTask", preset="full"),
    "fedreid-tiny": _lazy("fedstream_tasks.reid:ReIDTask", preset="tiny"),
}


def register_task(name: str, factory: Callable[[], Task]) -> None:
    """Makes ``get_task(name)`` call ``factory``."""
    REGISTRY[name] = factory


def known_tasks() -> list[str]:
    """Registered and entry-point task names."""
    names = set(REGISTRY) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return sorted(names)


def get_task(name: str) -> Task:
    """The task of that name (see the module's docstring); raises InvalidArgument naming what
    could not be found."""
    from fedstream_tasks.base import Task

    factory = REGISTRY.get(name)
    if factory is None:
        found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
        if found:
            factory = found[0].load()
        elif ":" in name:
            module, _, attr = name.partition(":")
            try:
                factory = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as e:
                raise InvalidArgument(f"cannot load task {name!r}: {e}") from None
        else:
            raise InvalidArgument(
                f"unknown task {name!r}; known tasks: {', '.join(known_tasks())} "
                "(or name one as 'module:Class')"
            )
    task = factory()
    if not isinstance(task, Task):
        raise InvalidArgument(f"task {name!r} is a {type(task).__name__}, not a fedstream Task")
    if not task.name:
        task.name = name
    return task
