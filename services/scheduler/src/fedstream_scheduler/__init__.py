"""fedstream scheduler service."""
