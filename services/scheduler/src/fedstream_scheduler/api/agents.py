"""Agents: /api/v1/agents."""

from typing import Annotated

from fastapi import APIRouter, Query, Response

from fedstream.state import AgentRecord, AuditAction
from fedstream_scheduler.admin import AdminServices
from fedstream_scheduler.api import schemas as s
from fedstream_scheduler.api.deps import AgentId, Limit, Operator, PageToken, Viewer, Who, paginate
from fedstream_scheduler.api.guard import ParsedRoute

router = APIRouter(prefix="/api/v1/agents", tags=["agents"], route_class=ParsedRoute)


def agent_body(admin: AdminServices, a: AgentRecord) -> s.Agent:
    return s.Agent(
        agent_id=a.agent_id, status=admin.agents.status(a),  # type: ignore[arg-type]
        connected=admin.agents.is_connected(a.agent_id),
        labels=a.labels, capabilities=a.capabilities, tasks=a.tasks,
        registered_unix=a.registered_unix, last_heartbeat_unix=a.last_heartbeat_unix,
        enrolled_unix=a.enrolled_unix, certificates=len(a.cert_serials),
    )


@router.get("")
async def list_agents(
    admin: Viewer, limit: Limit = 50, page_token: PageToken = "",
    status: Annotated[str, Query(pattern="^(alive|stale|disabled)?$", description="Only agents in this status.")] = "",
) -> s.Page[s.Agent]:
    items, nxt = paginate(admin.agents.list_agents(status), limit, page_token)
    return s.Page[s.Agent](items=[agent_body(admin, a) for a in items], next_page_token=nxt)


@router.get("/{agent_id}")
async def get_agent(agent_id: AgentId, admin: Viewer) -> s.Agent:
    return agent_body(admin, admin.state.get_agent(agent_id))


@router.post("/{agent_id}/disable")
async def disable_agent(agent_id: AgentId, admin: Operator, who: Who) -> s.Agent:
    rec = admin.agents.set_disabled(agent_id, True)
    admin.audit.record(who, AuditAction.AGENT_DISABLE, f"agent/{agent_id}")
    return agent_body(admin, rec)


@router.post("/{agent_id}/enable")
async def enable_agent(agent_id: AgentId, admin: Operator, who: Who) -> s.Agent:
    rec = admin.agents.set_disabled(agent_id, False)
    admin.audit.record(who, AuditAction.AGENT_ENABLE, f"agent/{agent_id}")
    return agent_body(admin, rec)


@router.delete("/{agent_id}", status_code=204)
async def delete_agent(agent_id: AgentId, admin: Operator, who: Who) -> Response:
    """Forgets the agent and revokes its certificates: its next call is refused and its
    open stream closed. It needs a new enrollment token to come back."""
    admin.agents.delete(agent_id)
    admin.audit.record(who, AuditAction.AGENT_DELETE, f"agent/{agent_id}")
    return Response(status_code=204)
