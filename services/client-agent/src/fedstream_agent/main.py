"""Entry point of fedstream-agent: parse settings, build, serve."""

from __future__ import annotations

import json
import logging
import signal

from fedstream.errors import InvalidArgument
from fedstream.exitcodes import ExitCode
from fedstream.settings_doc import service_parser, show_config
from fedstream.startup import StartupError, run_service, writable_directory
from fedstream_agent.settings import AgentSettings

log = logging.getLogger("fedstream_agent")

DESCRIPTION = (
    "fedstream client agent: dials out to the scheduler, trains on this site's data when assigned "
    "and streams updates to the aggregator. Configured by environment variables prefixed "
    "FEDSTREAM_AGENT_, nested names joined by '__' (listed below), e.g. "
    "FEDSTREAM_AGENT_SCHEDULER_ENDPOINT=scheduler:50051, FEDSTREAM_AGENT_DATA__SITE_INDEX=0, "
    "FEDSTREAM_AGENT_TASKS='[\"fedvision\"]', FEDSTREAM_AGENT_DATA__PATH=/data/voc. It enrolls once "
    "with a one-time token (FEDSTREAM_AGENT_TLS__ENROLLMENT_TOKEN_FILE, TLS__CA_FILE, "
    "TLS__ENROLL_ENDPOINT), keeps its key in TLS__IDENTITY_DIR and renews its certificate itself. "
    "/metrics is on a free loopback port unless METRICS__PORT is set (several agents share a "
    "machine). A setting that cannot be used stops it with one line naming the variable, and an "
    "exit code: 2 settings, 3 the metrics port, 4 the site's data or privacy ledger, 5 no identity."
)


def main(argv: list[str] | None = None) -> int:
    parser, sub = service_parser(AgentSettings, DESCRIPTION)
    infer = sub.add_parser(
        "infer", help="run a model version on a folder of images and write the detections as JSON"
    )
    from fedstream_agent.infer import add_arguments

    add_arguments(infer)
    from fedstream_agent import diagnose

    diagnose.add_command(sub)
    from fedstream_agent import site

    site.add_commands(sub)
    args = parser.parse_args(argv)
    if getattr(args, "site_command", None) is not None:
        return int(args.site_command(args))
    if args.command == "infer":
        from fedstream_agent.infer import run_inference

        return run_inference(args)
    if args.command == "config":
        return show_config(AgentSettings)
    if args.command == "check":
        return run_service("fedstream-agent", AgentSettings, lambda s: diagnose.run_check_command(s, args),
                           lambda s: f"agent {s.agent_id} check")
    return run_service("fedstream-agent", AgentSettings, serve, lambda s: f"agent {s.agent_id}")


def serve(settings: AgentSettings) -> int:
    """Runs the agent until SIGTERM or SIGINT; returns the exit code. Raises StartupError when a
    setting cannot be used, the site's data cannot be loaded or the agent has no identity."""
    check_settings(settings)
    from fedstream.metrics import start_metrics
    from fedstream_agent import diagnose
    from fedstream_agent.agent import Agent  # imports PyTorch: after settings are known good
    from fedstream_agent.identity import EnrollmentError
    from fedstream_agent.reconnect import ProtocolRefused

    start_metrics(settings.metrics, "agent")
    try:
        agent = Agent(settings)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: agent.shutdown())
        if settings.check_at_start:
            diagnose.check_at_start(agent)
        agent.run()
    except EnrollmentError as e:
        raise StartupError("tls.enrollment_token_file", settings.tls.enrollment_token_file, str(e),
                           "ask an operator for a new token (fedstream enrollment-tokens create --agent-id "
                           f"{settings.agent_id}), write it to that file and restart the agent",
                           ExitCode.NO_IDENTITY) from e
    except ProtocolRefused as e:
        log.error("%s", e)
        return ExitCode.INCOMPATIBLE_PROTOCOL
    except ValueError as e:
        raise StartupError("data.path", settings.data.path, f"cannot load the site's data: {e}",
                           "check the data set there (docs/tasks.md), and {data.site_index} and "
                           "{data.num_sites}", ExitCode.BAD_DATA) from e
    return ExitCode.OK


def check_settings(settings: AgentSettings) -> None:
    """What can be checked before the agent starts: its tasks exist, its CA certificate can be
    read and its identity directory written (also in plaintext mode when the site has a privacy
    limit of its own: its ledger is kept there). Raises StartupError naming the setting."""
    from fedstream_tasks import get_task

    for name in settings.tasks:
        try:
            get_task(name)
        except InvalidArgument as e:
            raise StartupError("tasks", json.dumps(settings.tasks), e.public,
                               "name tasks installed on this agent (docs/tasks.md)") from e
    tls = settings.tls
    if settings.privacy.max_epsilon > 0:  # the site's own privacy ledger lives there
        writable_directory(tls.identity_dir, "tls.identity_dir", ExitCode.BAD_DATA)
    if tls.insecure_plaintext:
        return
    if tls.ca_file is None:
        raise StartupError("tls.ca_file", None, "the agent needs the tenant's CA certificate to trust the "
                           "control plane", "set it to the ca.pem given with the enrollment token (or "
                           "{tls.insecure_plaintext}=true, for development only)")
    try:
        from cryptography import x509

        x509.load_pem_x509_certificate(tls.ca_file.read_bytes())
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not a PEM certificate"
        raise StartupError("tls.ca_file", tls.ca_file, f"cannot read the CA certificate {tls.ca_file}: {reason}",
                           "point it at the ca.pem given with the enrollment token") from e
    writable_directory(tls.identity_dir, "tls.identity_dir", ExitCode.NO_IDENTITY)
