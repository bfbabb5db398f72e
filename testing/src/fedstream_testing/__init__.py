"""fedstream testing support: the services as local processes, real test servers, a simulated
agent and shared helpers, for the tests and the benchmarks."""
