"""Entry point of fedstream-agent: parse settings, build, serve."""

from __future__ import annotations

import argparse
import logging
import signal

from fedstream.config import load_settings
from fedstream.exitcodes import ExitCode
from fedstream.logs import setup_logging
from fedstream.memtune import tune_allocator
from fedstream.version import add_version_argument
from fedstream_agent.settings import AgentSettings

log = logging.getLogger("fedstream_agent")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fedstream-agent",
        description="fedstream client agent: dials out to the scheduler, trains on this site's "
        "data when assigned and streams updates to the aggregator. Configured by environment "
        "variables prefixed FEDSTREAM_AGENT_ (nested names joined by '__', e.g. "
        "FEDSTREAM_AGENT_SCHEDULER_ENDPOINT=scheduler:50051, FEDSTREAM_AGENT_DATA__SITE_INDEX=0, "
        "FEDSTREAM_AGENT_TASKS='[\"fedvision\"]', FEDSTREAM_AGENT_DATA__PATH=/data/voc). It enrolls "
        "once with a one-time token (FEDSTREAM_AGENT_TLS__ENROLLMENT_TOKEN_FILE, TLS__CA_FILE, "
        "TLS__ENROLL_ENDPOINT), keeps its key in TLS__IDENTITY_DIR and renews its certificate itself.",
    )
    add_version_argument(parser, "fedstream-agent")
    sub = parser.add_subparsers(dest="command")
    infer = sub.add_parser(
        "infer", help="run a model version on a folder of images and write the detections as JSON"
    )
    from fedstream_agent.infer import add_arguments

    add_arguments(infer)
    from fedstream_agent import diagnose

    diagnose.add_command(sub)
    args = parser.parse_args(argv)
    if args.command == "infer":
        from fedstream_agent.infer import run_inference

        return run_inference(args)
    settings = load_settings(AgentSettings, "fedstream-agent")
    if settings is None:
        return ExitCode.BAD_SETTINGS
    setup_logging(settings.log.level, settings.log.json_format, f"agent {settings.agent_id}")
    tune_allocator()
    from fedstream.metrics import start_metrics
    from fedstream_agent.agent import Agent  # imports PyTorch: after settings are known good

    if args.command == "check":
        return diagnose.run_check_command(settings, args)
    if not start_metrics(settings.metrics, "agent"):
        return ExitCode.CANNOT_BIND
    from fedstream_agent.identity import EnrollmentError
    from fedstream_agent.reconnect import ProtocolRefused

    try:
        agent = Agent(settings)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: agent.shutdown())
        if settings.check_at_start:
            diagnose.check_at_start(agent)
        agent.run()
    except EnrollmentError as e:
        log.error("%s", e)
        return ExitCode.NO_IDENTITY
    except ProtocolRefused as e:
        log.error("%s", e)
        return ExitCode.INCOMPATIBLE_PROTOCOL
    except ValueError as e:
        log.error("cannot load the site's data: %s", e)
        return ExitCode.BAD_DATA
    return ExitCode.OK
