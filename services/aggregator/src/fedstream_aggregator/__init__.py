"""fedstream aggregator service."""
