"""Starting a service: its settings read once, and every reason it cannot start told in one line
that names the environment variable to change, its value and what to do, with the exit code of
``fedstream.exitcodes`` (no traceback, unless the log level is DEBUG).

Code that finds a setting unusable raises ``StartupError`` naming the setting by its path in the
settings object (``tls.ca_file``); ``run_service`` turns the path into the variable of the
service that runs (``FEDSTREAM_AGENT_TLS__CA_FILE``), so that the core needs no service's prefix.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, get_origin

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic_settings import BaseSettings
from pydantic_settings.exceptions import SettingsError

from fedstream.exitcodes import ExitCode

S = TypeVar("S", bound=BaseSettings)

DELIMITER = "__"
# ``{tls.insecure_plaintext}`` in a problem or an advice: the variable of that setting.
_PLACEHOLDER = re.compile(r"\{([a-z0-9_]+(?:\.[a-z0-9_]+)*)\}")
SETTINGS_ADVICE = "correct or unset it (docs/settings.md lists every setting with its type and default)"


class StartupError(Exception):
    """Why this process cannot start, in an operator's terms.

    ``setting`` is the path of the setting to change in the settings object (``api.port``; ""
    when no single setting is to blame), ``variable`` the variable's full name where it is not
    a setting's (a misspelt one). ``problem`` says what is wrong, ``advice`` what to do; both may
    name other settings as ``{tls.insecure_plaintext}``. ``secret`` hides the value.
    """

    def __init__(
        self, setting: str, value: object, problem: str, advice: str,
        code: ExitCode = ExitCode.BAD_SETTINGS, *, variable: str = "", secret: bool = False,
    ) -> None:
        super().__init__(f"{setting or variable}: {problem}")
        self.setting = setting
        self.value = value
        self.problem = problem
        self.advice = advice
        self.code = code
        self.variable = variable
        self.secret = secret

    def line(self, prefix: str, environ: Mapping[str, str] | None = None) -> str:
        """The one line that tells it: ``VARIABLE=value: problem; advice``."""
        environ = os.environ if environ is None else environ
        text = f"{_fill(self.problem, prefix)}; {_fill(self.advice, prefix)}"
        name = self.variable or (variable_name(prefix, self.setting) if self.setting else "")
        if not name:
            return text
        given = _lookup(environ, name)
        if given is not None:
            return f"{name}={_shown(given, self.secret)}: {text}"
        if self.value is None or self.value == "":
            return f"{name} is not set: {text}"
        return f"{name}={_shown(self.value, self.secret)} (the default): {text}"


class InvalidSettings(Exception):
    """Several settings are invalid at once: one ``StartupError`` for each (exit code 2)."""

    def __init__(self, errors: list[StartupError]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors


def variable_name(prefix: str, setting: str) -> str:
    """``api.port`` under ``FEDSTREAM_SCHEDULER_``: ``FEDSTREAM_SCHEDULER_API__PORT``."""
    return prefix + DELIMITER.join(part.upper() for part in setting.split("."))


def _fill(text: str, prefix: str) -> str:
    return _PLACEHOLDER.sub(lambda m: variable_name(prefix, m.group(1)), text)


def _lookup(environ: Mapping[str, str], name: str) -> str | None:
    """The variable's value; names are compared without regard to case, as pydantic-settings does."""
    if name in environ:
        return environ[name]
    upper = name.upper()
    return next((v for k, v in environ.items() if k.upper() == upper), None)


def _shown(value: object, secret: bool) -> str:
    if secret:
        return "'***'"
    if isinstance(value, SecretStr):
        value = value.get_secret_value() and "***"
    return shlex.quote(str(value))


def _setting_of(cls: type[BaseModel], loc: tuple[int | str, ...]) -> tuple[str, str]:
    """Splits a validation error's location into the setting a variable holds (``grpc.port``,
    ``leaves``) and the rest inside its value (``0.endpoint``)."""
    from fedstream.config import _nested_model

    parts: list[str] = []
    model: type[BaseModel] | None = cls
    for i, item in enumerate(loc):
        field = model.model_fields.get(str(item)) if model is not None else None
        if field is None:
            return ".".join(parts), ".".join(str(x) for x in loc[i:])
        parts.append(str(item))
        model = None if get_origin(field.annotation) in (list, tuple) else _nested_model(field.annotation)
        if model is None:
            return ".".join(parts), ".".join(str(x) for x in loc[i + 1:])
    return ".".join(parts), ""


def _validation_errors(cls: type[BaseSettings], error: ValidationError) -> list[StartupError]:
    from fedstream.settings_doc import is_secret_setting

    out = []
    for e in error.errors():
        setting, rest = _setting_of(cls, e["loc"])
        message = _in_characters(e) or e["msg"].removeprefix("Value error, ")
        problem = f"{'.'.join(str(x) for x in e['loc'])}: {message}" if rest else message
        value = e.get("input")
        shown = value if isinstance(value, str | int | float) else None
        out.append(StartupError(setting, shown, problem, SETTINGS_ADVICE, secret=is_secret_setting(cls, setting)))
    return out


def _in_characters(error: Any) -> str:
    """A text's length error in characters (pydantic counts a secret's length in "items")."""
    ctx, value = error.get("ctx") or {}, error.get("input")
    if error["type"] not in ("too_short", "too_long") or not isinstance(value, str | SecretStr):
        return ""
    bound = "at least" if error["type"] == "too_short" else "at most"
    limit = ctx.get("min_length" if error["type"] == "too_short" else "max_length")
    return f"should have {bound} {limit} characters, not {ctx.get('actual_length', len(value))}"


def _unparsable(cls: type[BaseSettings], error: SettingsError, environ: Mapping[str, str]) -> list[StartupError]:
    """The variables of the field a SettingsError names whose values are not the JSON they must be."""
    from fedstream.settings_doc import json_example, settings_of

    examples = {s.variable: json_example(s.field) for s in settings_of(cls)}
    found = re.search(r'field "([^"]+)"', str(error))
    prefix = str(cls.model_config.get("env_prefix", "")).upper()
    field = found.group(1) if found else ""
    out = []
    for name, value in sorted(environ.items()):
        upper = name.upper()
        if not field or not upper.startswith(variable_name(prefix, field)):
            continue
        try:
            json.loads(value)
        except ValueError:
            example = examples.get(upper, "")
            out.append(StartupError("", value, "is not valid JSON",
                                    "write it as JSON" + (f", e.g. '{example}'" if example else "")
                                    + " (docs/settings.md)", variable=name))
    return out or [StartupError("", None, str(error), SETTINGS_ADVICE, variable=variable_name(prefix, field))]


def load(cls: type[S], environ: Mapping[str, str] | None = None) -> S:
    """The service's settings from the environment, validated once. Raises InvalidSettings
    naming every variable that is wrong: one that names no setting (a misspelling, with the
    nearest valid name), a value that is not valid or not the JSON its setting needs."""
    from fedstream.config import misspelt_variables

    environ = os.environ if environ is None else environ
    unknown = misspelt_variables(cls, environ)
    if unknown:
        raise InvalidSettings([
            StartupError("", environ[name], message, "correct its name or unset it", variable=name)
            for name, message in unknown
        ])
    try:
        return cls()
    except ValidationError as e:
        raise InvalidSettings(_validation_errors(cls, e)) from None
    except SettingsError as e:
        raise InvalidSettings(_unparsable(cls, e, environ)) from None


def bind_error(setting: str, host: str, port: int, error: OSError | str | None = None) -> StartupError:
    """The error for a port that cannot be bound: taken, or not allowed (exit code 3). Without
    ``error`` (gRPC does not say why), a plain socket's attempt tells the reason."""
    reason = _reason(error) if error is not None else _why_not_bindable(host, port)
    return StartupError(
        setting, port, f"cannot listen on {host}:{port}" + (f" ({reason})" if reason else ""),
        f"stop what holds the port or set {{{setting}}} to another one (0 picks a free one)",
        ExitCode.CANNOT_BIND,
    )


def _reason(error: OSError | str) -> str:
    if isinstance(error, OSError):
        return os.strerror(error.errno) if error.errno else str(error)
    return error


def _why_not_bindable(host: str, port: int) -> str:
    """Why the OS refuses ``host:port`` (from a plain socket's attempt); "" when it does not."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.create_server((host, port), family=family):
            return ""
    except OSError as e:
        return _reason(e)


def writable_directory(path: Path, setting: str, code: ExitCode = ExitCode.BAD_DATA) -> Path:
    """``path``, created if missing; raises StartupError naming ``setting`` when it cannot be
    created or written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StartupError(setting, path, f"cannot create the directory {path} ({_reason(e)})",
                           "point it at a directory this process may write", code) from e
    if not os.access(path, os.W_OK | os.X_OK):
        raise StartupError(setting, path, f"the directory {path} is not writable by this process",
                           "change its owner or mode, or point it at another directory", code)
    return path


def run_service(
    prog: str, cls: type[S], serve: Callable[[S], int], log_name: Callable[[S], str],
) -> int:
    """Reads ``cls`` from the environment, sets logging up and returns ``serve(settings)``'s exit
    code. A StartupError, from the settings or from ``serve``, is told in one line (its
    traceback too at log level DEBUG) and its code returned."""
    from fedstream.config import load_settings
    from fedstream.logs import setup_logging
    from fedstream.memtune import tune_allocator

    prefix = str(cls.model_config.get("env_prefix", "")).upper()
    settings = load_settings(cls, prog)
    if settings is None:
        return ExitCode.BAD_SETTINGS
    log_settings = settings.log  # type: ignore[attr-defined]
    setup_logging(log_settings.level, log_settings.json_format, log_name(settings), grpc_logs=log_settings.grpc)
    tune_allocator()
    try:
        return serve(settings)
    except StartupError as e:
        logging.getLogger(prog.replace("-", "_")).error(
            "%s", e.line(prefix), exc_info=log_settings.level == "DEBUG")
        return e.code
