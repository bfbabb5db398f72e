"""The protocol version agents and the control plane exchange at registration, and the
version-skew policy (docs/deploy.md, "Upgrades and version skew").

The version counts changes of what agents and the control plane expect of each other, not
releases. Policy: a control plane of protocol N accepts agents of protocols N-1 and N; an
agent newer than its control plane is refused. So the control plane is upgraded first, then
the agents, one protocol step at a time.

Versions:
  1. Agents that send no version (releases before the field existed).
  2. Agents send their version at registration; a certificate that expired while the agent
     was offline is renewed with its key (EnrollmentService.RenewExpired); a disabled agent
     is told so (error code agent_disabled).
"""

from __future__ import annotations

from fedstream.errors import IncompatibleProtocol

PROTOCOL_VERSION = 2
# What an agent that sends no version speaks.
UNVERSIONED = 1


def accepted_range(control: int = PROTOCOL_VERSION) -> tuple[int, int]:
    """The oldest and newest agent protocol a control plane of protocol ``control`` accepts."""
    return max(UNVERSIONED, control - 1), control


def check_agent_protocol(sent: int, control: int = PROTOCOL_VERSION) -> int:
    """The agent's protocol (``sent``, 0 meaning UNVERSIONED). Raises IncompatibleProtocol,
    naming both versions and what to upgrade, when a control plane of protocol ``control``
    does not accept it."""
    agent = sent or UNVERSIONED
    oldest, newest = accepted_range(control)
    accepts = f"it accepts agents of protocol {oldest} to {newest}"
    if agent > newest:
        raise IncompatibleProtocol(
            f"this agent speaks fedstream protocol {agent}, newer than the control plane's protocol {control} "
            f"({accepts}): upgrade the control plane first, or run an agent release of protocol {newest}"
        )
    if agent < oldest:
        raise IncompatibleProtocol(
            f"this agent speaks fedstream protocol {agent}, older than the control plane's protocol {control} "
            f"accepts ({accepts}): upgrade the agent"
        )
    return agent
