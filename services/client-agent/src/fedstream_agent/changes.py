"""Updates of buffered asynchronous runs as they travel: each parameter as its change from the
base version the agent trained from (the aggregator adds its own newest version back)."""

from __future__ import annotations

import torch

from fedstream.staleness import is_statistic


def as_changes(state: dict[str, torch.Tensor], base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each floating tensor as its change from ``base`` (computed in float32 or wider, stored in
    its own dtype); normalisation statistics and other tensors as they are (the aggregator
    averages them plainly: fedstream.staleness.is_statistic)."""
    out: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if value.is_floating_point() and not is_statistic(name):
            wide = torch.promote_types(value.dtype, torch.float32)
            out[name] = (value.to(wide) - base[name].to(wide)).to(value.dtype)
        else:
            out[name] = value
    return out
