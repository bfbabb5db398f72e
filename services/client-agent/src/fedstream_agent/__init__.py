"""fedstream client agent."""
