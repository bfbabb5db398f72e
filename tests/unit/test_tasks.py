"""Tasks by name: built-ins, 'module:Class', registered ones; the example of docs/tasks.md."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

from fedstream.errors import InvalidArgument
from fedstream_tasks import REGISTRY, get_task, known_tasks, register_task
from fedstream_tasks.base import SiteDataSettings, TrainParams

DOC = Path(__file__).resolve().parents[2] / "docs" / "tasks.md"


@pytest.fixture
def wine_module(tmp_path, monkeypatch):
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    (tmp_path / "wine_task.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "wine_task"
    sys.modules.pop("wine_task", None)
    REGISTRY.pop("wine", None)


def test_documented_task_loads_by_module_path_trains_and_evaluates(wine_module):
    task = get_task(f"{wine_module}:WineTask")
    settings = SiteDataSettings(site_index=1, num_sites=2)
    train, heldout = task.load_site(settings), task.load_heldout(settings)
    model = task.build_model(0)
    before = task.evaluate(model, heldout, torch.device("cpu"))["accuracy"]

    result = task.train(model, train, TrainParams(local_epochs=20, batch_size=16, learning_rate=0.05, seed=3),
                        torch.device("cpu"))

    after = task.evaluate(model, heldout, torch.device("cpu"))
    assert task.name == "wine" and result.num_examples == task.num_examples(train) > 0
    assert {"train_loss", "examples_seen", "train_seconds", "cosine_distance"} <= set(result.metrics)
    assert after["accuracy"] > max(before, 0.8)
    assert after["examples"] == task.num_examples(heldout)


def test_registered_task_is_found_by_its_name(wine_module):
    from wine_task import WineTask

    register_task("wine", WineTask)
    assert "wine" in known_tasks()
    assert isinstance(get_task("wine"), WineTask)


def test_builtin_tasks_and_bad_names():
    assert {"digits", "fedvision", "fedvision-small", "fedvision-tiny"} <= set(known_tasks())
    assert get_task("fedvision-tiny").name == "fedvision-tiny"
    assert get_task("fedvision").config.input_size == 416
    with pytest.raises(InvalidArgument, match="unknown task 'nope'; known tasks: digits"):
        get_task("nope")
    with pytest.raises(InvalidArgument, match="cannot load task 'no_such_module:X'"):
        get_task("no_such_module:X")
    with pytest.raises(InvalidArgument, match="not a fedstream Task"):
        get_task("pathlib:Path")
