"""fedstream client agent."""

from fedstream.logs import quiet_grpc

# Before anything imports gRPC, which reads its log settings once, when imported.
quiet_grpc("FEDSTREAM_AGENT_")
