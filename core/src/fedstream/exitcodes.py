"""The exit codes of the services' console scripts, one table for all, so a crash-looping pod says why."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """How a fedstream service process ended. The numbers are a contract (probes, alerts and
    scripts read them): never renumber one; add new ones at the end."""

    OK = 0
    """Stopped as asked (SIGTERM or SIGINT), or a one-shot command (``--help``, ``--version``,
    ``config``, ``fedstream-agent infer``) done."""

    FAILED = 1
    """An unexpected error: an uncaught exception, whose traceback is in the log (Python's own
    status for it); or ``fedstream-agent infer`` could not download the model or the model
    does not fit the task."""

    BAD_SETTINGS = 2
    """The settings are invalid: a variable out of range, unparsable or not the JSON it must be,
    naming no setting (a misspelling; the message names the nearest valid one), a TLS file or
    setting that is missing or cannot be used, an unknown task, distillation that cannot start;
    or the command line is (argparse's usage errors exit 2)."""

    CANNOT_BIND = 3
    """A port cannot be bound (gRPC, enrollment, health, admin API or /metrics): taken, or not
    allowed. The message names the port's setting."""

    BAD_DATA = 4
    """The process cannot use its data: the model store's or the spool's directory cannot be
    created or written, the agent cannot load its site's data, or the agent's privacy ledger
    (``privacy-ledger.json`` in its identity directory) cannot be read."""

    NO_IDENTITY = 5
    """The agent has no usable certificate and cannot get one without an operator: no
    enrollment token, a token the scheduler refuses (spent, expired, revoked), or an identity
    directory it cannot write. (No ``tls.ca_file`` at all is a settings error, 2.)"""

    INCOMPATIBLE_PROTOCOL = 6
    """The control plane refused the agent's protocol version (fedstream.protocol): the line
    names both versions and what to upgrade."""

    UNREACHABLE = 7
    """``fedstream-agent check`` could not reach an endpoint of the control plane (DNS, TCP,
    TLS, a deadline): its last line names the endpoint and why."""
