"""fedstream core: the library that the scheduler, the aggregator and the agents share."""

__version__ = "0.1.0"
