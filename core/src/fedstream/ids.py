"""The identifiers clients name things by, one rule each, matched whole: every transport (gRPC
servicers, REST routers and bodies) and every store checks them with these functions."""

from __future__ import annotations

import re

from fedstream.errors import InvalidArgument

# Patterns without anchors: they are matched whole (re.fullmatch; "^...$" in the OpenAPI
# document, whose "$" matches only at the very end).
RUN_ID = r"[a-z0-9][a-z0-9._-]{0,62}"
FEDERATION_ID = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
VERSION = rf"{RUN_ID}/[0-9]{{6}}"
EVALUATION_NAME = r"[a-z0-9][a-z0-9._-]{0,127}"
MAX_AGENT_ID = 128
# Host names, e-mail-like and URN-like names: letters, digits and '.', '_', ':', '@', '-'.
AGENT_ID = rf"[A-Za-z0-9][A-Za-z0-9._:@-]{{0,{MAX_AGENT_ID - 1}}}"


def check_run_id(run_id: str) -> str:
    """Returns the id; raises InvalidArgument unless it is 1-63 of a-z, 0-9, '.', '_', '-'."""
    if not re.fullmatch(RUN_ID, run_id):
        raise InvalidArgument(
            f"invalid run id {run_id[:80]!r}: use 1-63 of a-z, 0-9, '.', '_', '-', "
            "starting with a letter or digit"
        )
    return run_id


def check_federation_id(federation_id: str) -> str:
    """Raises InvalidArgument unless the id is a DNS label (1-63 lowercase letters, digits, '-')."""
    if not re.fullmatch(FEDERATION_ID, federation_id):
        raise InvalidArgument(
            f"invalid federation id {federation_id[:80]!r}: 1-63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return federation_id


def check_agent_id(agent_id: str) -> str:
    """Raises InvalidArgument unless the id is 1-128 of letters, digits, '.', '_', ':', '@', '-',
    starting with a letter or digit."""
    if not re.fullmatch(AGENT_ID, agent_id):
        raise InvalidArgument(
            f"invalid agent id {agent_id[:80]!r}: use 1-{MAX_AGENT_ID} of letters, digits, '.', '_', ':', "
            "'@', '-', starting with a letter or digit"
        )
    return agent_id


def check_evaluation_name(name: str) -> str:
    if not re.fullmatch(EVALUATION_NAME, name):
        raise InvalidArgument(f"evaluation name {name[:80]!r} must match {EVALUATION_NAME}")
    return name


def parse_version(version: str) -> tuple[str, int]:
    """Splits a version id RUN/NNNNNN; raises InvalidArgument when it is not one (naming the
    run id when that is what is wrong)."""
    run_id, sep, rnd = version.partition("/")
    if not sep or not re.fullmatch(r"[0-9]{6}", rnd):
        raise InvalidArgument(f"invalid model version {version[:80]!r}: expected RUN/NNNNNN")
    return check_run_id(run_id), int(rnd)
