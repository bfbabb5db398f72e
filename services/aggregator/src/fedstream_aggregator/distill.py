"""Server-side knowledge distillation (FedPav's ``distill_every``), as FedReID runs it.

After averaging, the aggregator regresses the global model's embedding of an unlabeled public
set onto the mean embedding of the round's participants (their uploaded models are the
teachers). Why the aggregator computes the teachers' embeddings from the uploaded models,
rather than agents computing them on public images sent to them: the updates it receives are
exactly the models that count, so no public image leaves the control plane, no site spends
bandwidth or GPU time on it, and the agents' protocol is the same for every strategy. The
cost lands here: on a distillation round every update is kept in the model store (as robust
strategies do) and read back one at a time, and the aggregator runs one forward pass of each
teacher over the public set. Memory stays at a few models.

PyTorch and the tasks are imported only when an aggregator is given a public set: the
aggregator's other work needs neither, and an install without them starts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from fedstream.errors import FailedPrecondition, InvalidArgument
from fedstream.tensors import FlatBuffer, Layout

log = logging.getLogger(__name__)


class Distiller:
    """Holds the public set (read and resized once per task) and runs distillations one at a
    time."""

    def __init__(self, public_dir: Path, device: str = "") -> None:
        try:
            import torch

            from fedstream_tasks import get_task
        except ImportError as e:
            raise RuntimeError(
                "distillation needs PyTorch and the tasks in the aggregator: install fedstream-aggregator[distill]"
            ) from e
        self._get_task = get_task
        if not public_dir.is_dir():
            raise ValueError(f"public set {public_dir} is not a directory")
        self.public_dir = public_dir
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._public: dict[str, Any] = {}
        self._lock = threading.Lock()

    def check(self, task_name: str) -> None:
        """Raises InvalidArgument unless the task exists and supports distillation."""
        task = self._get_task(task_name)
        if not task.supports_distillation:
            raise InvalidArgument(f"task {task_name!r} does not support server-side distillation")

    def _public_set(self, task: Any) -> Any:
        if task.name not in self._public:
            try:
                self._public[task.name] = task.load_public(self.public_dir)
            except ValueError as e:
                raise FailedPrecondition(f"cannot read the public set: {e}") from e
            log.info("public set for %s: %d images from %s", task.name, len(self._public[task.name]), self.public_dir)
        return self._public[task.name]

    def distill(
        self, task_name: str, student: FlatBuffer, teachers: Iterable[FlatBuffer], lr: float
    ) -> tuple[Iterator[memoryview], dict[str, float]]:
        """The distilled model's bytes in the student's layout, and figures about the pass.
        Raises FailedPrecondition when a teacher's layout differs from the student's or the
        task refuses the tensors."""
        from fedstream_tasks.torchio import buffers_of, layout_of, state_of

        task = self._get_task(task_name)
        layout = student.layout

        def states() -> Iterator[dict[str, Any]]:
            for teacher in teachers:
                if teacher.layout != layout:
                    raise FailedPrecondition("a teacher's layout differs from the model's")
                yield state_of(teacher)

        with self._lock:
            public = self._public_set(task)
            try:
                state, figures = task.distill(state_of(student), states(), public, lr, self.device)
            except ValueError as e:
                raise FailedPrecondition(f"distillation refused the model: {e}") from e
        out: Layout = layout_of({spec.name: state[spec.name] for spec in layout.tensors})
        if out != layout:
            raise FailedPrecondition("distillation changed the model's layout")
        return buffers_of(layout, state), figures
