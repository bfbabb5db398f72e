"""FedReID's workload: federated person re-identification (FedPav: a shared ResNet backbone
and bottleneck, each site's identity classifier private), Market-1501-layout data and the
Market-1501 evaluation protocol."""

from fedstream_tasks.reid.task import PRESETS, ReIDData, ReIDHeldout, ReIDTask

__all__ = ["PRESETS", "ReIDData", "ReIDHeldout", "ReIDTask"]
