"""The gRPC SiteService: a federation's sites, through their agents' certificates, approve
releases, follow release channels and request runs. Translates and delegates to the tenant's
release and run-request services."""

from __future__ import annotations

import re

import grpc

from fedstream.auth import Guard
from fedstream.errors import InvalidArgument, ResourceExhausted
from fedstream.grpcutil import translate_errors
from fedstream.ids import check_federation_id
from fedstream.limits import RateLimiter
from fedstream.metrics import LIMIT_HITS
from fedstream.state import ReleaseRecord
from fedstream.v1 import scheduler_pb2 as pb
from fedstream.v1 import scheduler_pb2_grpc as pb_grpc
from fedstream_scheduler.admin import AdminServices
from fedstream_scheduler.releases import counts
from fedstream_scheduler.run_requests import MAX_REASON, check_member
from fedstream_scheduler.site_policy import CHANNEL, check_text

# Calls one agent may make per second on this service (a burst of 10): following a channel
# every few seconds is plenty.
CALLS_PER_S = 1.0
RELEASE_ID = re.compile(r"rel-[0-9a-f]{12}")


def release_to_proto(rec: ReleaseRecord) -> pb.ReleaseInfo:
    admins, sites = counts(rec)
    return pb.ReleaseInfo(
        release_id=rec.release_id, federation=rec.federation_id, channel=rec.channel, version=rec.version,
        state=rec.state, admin_approvals=admins, site_approvals=sites,
        admins_needed=int(rec.needed.get("admins", 0)), sites_needed=int(rec.needed.get("sites", 0)),
    )


def check_channel(channel: str) -> str:
    """Raises InvalidArgument for a word that is no channel name."""
    if not re.fullmatch(CHANNEL.strip("^$"), channel):
        raise InvalidArgument(f"channel: {channel[:64]!r} is not a channel name (lowercase letters, digits, '-')")
    return channel


class SiteServicer(pb_grpc.SiteServiceServicer):
    """Every method acts for the agent the client certificate names (fedstream.auth)."""

    def __init__(self, admin: AdminServices, guard: Guard) -> None:
        self.admin = admin
        self.guard = guard
        self.calls = RateLimiter(CALLS_PER_S, 10)

    def _agent(self, context: grpc.aio.ServicerContext, claimed: str) -> str:
        agent_id = self.guard.agent(context, claimed)
        if not agent_id:
            raise InvalidArgument("agent_id: required on a plaintext (development) scheduler")
        if not self.calls.try_take(agent_id):
            LIMIT_HITS.labels(self.admin.tenant, "scheduler", "site_calls_per_s").inc()
            raise ResourceExhausted(f"too many site calls from agent {agent_id!r}")
        return agent_id

    @translate_errors
    async def ApproveRelease(self, request: pb.ApproveReleaseRequest, context: grpc.aio.ServicerContext) -> pb.ReleaseInfo:
        agent_id = self._agent(context, request.agent_id)
        if not RELEASE_ID.fullmatch(request.release_id):
            raise InvalidArgument(f"release_id: {request.release_id[:64]!r} is not a release id (rel- and 12 hex digits)")
        return release_to_proto(self.admin.releases.approve_site(request.release_id, agent_id))

    @translate_errors
    async def GetChannel(self, request: pb.GetChannelRequest, context: grpc.aio.ServicerContext) -> pb.ChannelVersion:
        agent_id = self._agent(context, request.agent_id)
        federation = check_federation_id(request.federation)
        check_member(self.admin.state, self.admin.federations, federation, agent_id)
        rec = self.admin.releases.current(federation, check_channel(request.channel))
        info, _ = self.admin.models.info(rec.version)
        settings = self.admin.scheduler.settings
        return pb.ChannelVersion(
            federation=federation, channel=rec.channel, version=rec.version, release_id=rec.release_id,
            sha256=info.sha256, aggregator_endpoint=settings.aggregator_public_endpoint or settings.aggregator_endpoint,
            released_unix=rec.decided_unix,
        )

    @translate_errors
    async def RequestRun(self, request: pb.RequestRunRequest, context: grpc.aio.ServicerContext) -> pb.RunRequestInfo:
        agent_id = self._agent(context, request.agent_id)
        federation = check_federation_id(request.federation)
        rec = self.admin.run_requests.request(federation, agent_id, check_text("reason", request.reason, MAX_REASON))
        return pb.RunRequestInfo(request_id=rec.request_id, federation=rec.federation_id, state=rec.state,
                                 run_id=rec.run_id)
