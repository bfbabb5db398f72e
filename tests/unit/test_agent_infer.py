"""`fedstream-agent infer` takes the tasks that declare ``predict``, and only those."""

from __future__ import annotations

from fedstream_agent.infer import Predictor
from fedstream_tasks import get_task


def test_only_a_task_that_predicts_runs_inference():
    assert isinstance(get_task("fedvision-tiny"), Predictor)
    assert not isinstance(get_task("digits"), Predictor)
