"""How many agents a round selects: fraction, minimum and maximum together."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from fedstream_scheduler.models import RunSpec
from fedstream_scheduler.selection import selection_size


@pytest.mark.parametrize(
    ("fields", "live", "want"),
    [
        ({}, 7, 7),
        ({"fraction": 0.5}, 7, 4),
        ({"fraction": 0.5}, 8, 4),
        ({"fraction": 0.1, "min_agents": 3}, 10, 3),
        ({"fraction": 0.9, "max_agents": 5}, 10, 5),
        ({"fraction": 0.3, "min_agents": 2}, 1, 1),
        ({"max_agents": 2}, 6, 2),
    ],
)
def test_selection_size(fields, live, want):
    assert selection_size(RunSpec(task="digits", **fields), live) == want


@pytest.mark.parametrize("fraction", [0, -0.5, 1.5])
def test_fraction_out_of_range_is_refused(fraction):
    with pytest.raises(ValidationError, match="fraction"):
        RunSpec(task="digits", fraction=fraction)
