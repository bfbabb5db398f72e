"""The services' settings as their readers see them, from the settings models alone: every
environment variable with its type, default and meaning, for docs/settings.md (``python -m
fedstream.settings_doc``), for each service's ``--help``, and for ``fedstream-<service> config``
(the effective values, credentials masked).
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from fedstream.startup import DELIMITER, variable_name

MASK = "********"
# Names of settings that hold credentials (beside SecretStr ones); a path to a file holding one
# (``*_file``, ``*_dir``) is not one.
_CREDENTIAL = re.compile(r"(^|_)(password|passwd|secret|secret_key|access_key|token|credentials?|key)$")
# The password in a URL's user information: ``redis://user:PASSWORD@host``.
_URL_PASSWORD = re.compile(r"(://[^/@:\s]*:)[^/@\s]+@")


@dataclass(frozen=True)
class Setting:
    """One environment variable of a service."""

    variable: str
    path: str  # in the settings object: ``grpc.port``
    field: FieldInfo

    @property
    def secret(self) -> bool:
        return _is_secret(self.path.rsplit(".", 1)[-1], self.field.annotation)

    @property
    def description(self) -> str:
        return self.field.description or ""

    @property
    def summary(self) -> str:
        """The description's first sentence (a period outside parentheses, then a space)."""
        depth = 0
        for i, ch in enumerate(self.description):
            depth += {"(": 1, ")": -1}.get(ch, 0)
            if ch == "." and depth == 0 and self.description[i + 1:i + 2] in (" ", ""):
                return self.description[: i + 1]
        return self.description


def prefix_of(cls: type[BaseSettings]) -> str:
    return str(cls.model_config.get("env_prefix", "")).upper()


def program_of(cls: type[BaseSettings]) -> str:
    """``FEDSTREAM_SCHEDULER_`` names ``fedstream-scheduler``."""
    return prefix_of(cls).rstrip("_").lower().replace("_", "-")


def _alternatives(annotation: Any) -> tuple[Any, ...]:
    if get_origin(annotation) in (Union, UnionType):
        return get_args(annotation)
    return (annotation,)


def _model(annotation: Any) -> type[BaseModel] | None:
    for candidate in _alternatives(annotation):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _is_secret(name: str, annotation: Any) -> bool:
    kinds = _alternatives(annotation)
    if SecretStr in kinds:
        return True
    return Path not in kinds and bool(_CREDENTIAL.search(name))


def settings_of(cls: type[BaseSettings]) -> list[Setting]:
    """Every variable of ``cls``, nested models' fields as ``OUTER__INNER``, in field order."""
    return list(_walk(cls, prefix_of(cls), ""))


def _walk(model: type[BaseModel], prefix: str, path: str) -> Iterator[Setting]:
    for name, field in model.model_fields.items():
        nested = _model(field.annotation)
        here = f"{path}.{name}" if path else name
        if nested is not None and get_origin(field.annotation) is not list:
            yield from _walk(nested, prefix, here)
        else:
            yield Setting(variable_name(prefix, here), here, field)


def is_secret_setting(cls: type[BaseSettings], path: str) -> bool:
    """Whether the setting at ``path`` holds a credential (a SecretStr, a password, a key...)."""
    return any(s.secret for s in settings_of(cls) if s.path == path)


def type_text(field: FieldInfo) -> str:
    """``int (0..65535)``, ``one of: memory, redis``, ``JSON list of strings``..."""
    kinds = [k for k in _alternatives(field.annotation) if k is not type(None)]
    kind = kinds[0] if len(kinds) == 1 else field.annotation
    origin = get_origin(kind)
    if origin is Literal:
        return "one of: " + ", ".join(str(a) for a in get_args(kind))
    if origin is list:
        (item,) = get_args(kind)
        inner = _model(item)
        return f"JSON list of objects ({', '.join(inner.model_fields)})" if inner else f"JSON list of {_name(item)}s"
    if origin is dict:
        return f"JSON object of {_name(get_args(kind)[1])}s (or one variable per key, {DELIMITER}KEY)"
    return _name(kind) + _bounds(field)


def json_example(field: FieldInfo) -> str:
    """A JSON value of the field's type, for a hint: its first example, else its default when
    that is a non-empty list or object, else a list or object of the right shape; "" for other
    types (a nested settings model)."""
    if field.examples:
        return json.dumps(field.examples[0])
    kinds = [k for k in _alternatives(field.annotation) if k is not type(None)]
    kind = kinds[0] if len(kinds) == 1 else field.annotation
    origin = get_origin(kind)
    if origin not in (list, dict):
        return ""
    default = None if field.is_required() else field.get_default(call_default_factory=True)
    if default:
        return env_value(default)
    if origin is dict:
        return '{"key": "value"}'
    inner = _model(get_args(kind)[0])
    if inner is None:
        return '["..."]'
    fields = {n: f for n, f in inner.model_fields.items() if f.is_required()} or inner.model_fields
    return json.dumps([{n: f.examples[0] if f.examples else "..." for n, f in fields.items()}])


def _name(kind: Any) -> str:
    return {bool: "bool", int: "int", float: "float", str: "string", Path: "path", SecretStr: "secret"}.get(
        kind, getattr(kind, "__name__", str(kind)))


def _bounds(field: FieldInfo) -> str:
    marks = []
    for m in field.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"),
                           ("min_length", "length >="), ("max_length", "length <=")):
            if getattr(m, attr, None) is not None:
                marks.append(f"{sign} {getattr(m, attr)}")
        if getattr(m, "pattern", None):
            marks.append(f"matching {m.pattern}")
    return f" ({', '.join(marks)})" if marks else ""


def env_value(value: Any) -> str:
    """A value as its variable would be written."""
    if isinstance(value, SecretStr):
        return MASK if value.get_secret_value() else ""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, BaseModel):
        return json.dumps(value.model_dump(mode="json"))
    if isinstance(value, list | dict):
        return json.dumps(value, default=lambda v: v.model_dump(mode="json") if isinstance(v, BaseModel) else str(v))
    return str(value)


def default_text(field: FieldInfo) -> str:
    """The default as a reader should see it (``doc_default`` in the field's json_schema_extra
    stands for one that depends on the machine, like the host name)."""
    extra = field.json_schema_extra
    if isinstance(extra, dict) and "doc_default" in extra:
        return str(extra["doc_default"])
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None or (isinstance(value, SecretStr) and not value.get_secret_value()):
        return "unset"
    return env_value(value) or '""'


def masked(setting: Setting, value: Any) -> str:
    """``value`` as ``config`` prints it: credentials masked, and passwords inside URLs."""
    text = env_value(value)
    if setting.secret and text:
        return MASK
    return _URL_PASSWORD.sub(rf"\1{MASK}@", text)


def effective(settings: BaseSettings) -> list[tuple[str, str]]:
    """Every variable of ``settings`` with its value in effect, credentials masked."""
    out = []
    for s in settings_of(type(settings)):
        value: Any = settings
        for part in s.path.split("."):
            value = getattr(value, part)
        out.append((s.variable, masked(s, value)))
    return out


def show_config(cls: type[BaseSettings]) -> int:
    """``fedstream-<service> config``: one ``VARIABLE=value`` line per setting in effect; the
    exit code (2, each bad variable told in one line, when the settings are invalid)."""
    from fedstream.config import load_settings
    from fedstream.exitcodes import ExitCode

    settings = load_settings(cls, program_of(cls))
    if settings is None:
        return ExitCode.BAD_SETTINGS
    for variable, value in effective(settings):
        print(f"{variable}={value}")
    return ExitCode.OK


def help_epilog(cls: type[BaseSettings]) -> str:
    """Each variable, its default and the first sentence of its meaning, for ``--help``."""
    lines = ["settings (environment variables; types and full meanings: docs/settings.md;",
             f"`{program_of(cls)} config` prints the values in effect):"]
    for s in settings_of(cls):
        lines.append(f"  {s.variable} (default: {default_text(s.field)})")
        lines += textwrap.wrap(s.summary, 100, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps the description; keeps the settings list's lines as they are."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("settings ("):
            return text
        return super()._fill_text(text, width, indent)


def service_parser(cls: type[BaseSettings], description: str) -> tuple[argparse.ArgumentParser, Any]:
    """A service's parser: ``--help`` listing its settings, ``--version``, and its subcommands'
    holder with ``config`` in it (the caller adds its own)."""
    from fedstream.version import add_version_argument

    prog = program_of(cls)
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=help_epilog(cls),
                                     formatter_class=_HelpFormatter)
    add_version_argument(parser, prog)
    sub = parser.add_subparsers(dest="command", metavar="{config,...}")
    sub.add_parser(
        "config", help="print the settings in effect (environment applied, defaults filled, credentials "
        "masked) as VARIABLE=value lines, and exit",
    )
    return parser, sub


def _default_cell(field: FieldInfo) -> str:
    """The default in backticks when it is a value, plain when it is words."""
    text = default_text(field)
    extra = field.json_schema_extra
    if text in ("unset", "required") or (isinstance(extra, dict) and "doc_default" in extra):
        return _cell(text)
    return f"`{_cell(text)}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(classes: list[type[BaseSettings]]) -> str:
    """docs/settings.md: one table per service."""
    out = [
        "# Settings",
        "",
        "Every environment variable of every service, generated from the settings models "
        "(`make settings-doc`; a test fails when this page is stale). Nested names are joined "
        "by `__`; lists and objects are written as JSON. `fedstream-<service> --help` lists them "
        "too, and `fedstream-<service> config` prints the values in effect, credentials masked. "
        "A variable with a service's prefix that names no setting is refused at start.",
    ]
    for cls in classes:
        out += ["", f"## {program_of(cls)}", "", f"Prefix `{prefix_of(cls)}`.", "",
                "| variable | type | default | meaning |", "| --- | --- | --- | --- |"]
        for s in settings_of(cls):
            meaning = s.description + (" (a credential: `config` masks it)" if s.secret else "")
            out.append(f"| `{s.variable}` | {_cell(type_text(s.field))} | {_default_cell(s.field)} "
                       f"| {_cell(meaning)} |")
    return "\n".join(out) + "\n"


def load_classes(names: list[str]) -> list[type[BaseSettings]]:
    """The settings classes named ``module:Class`` (the Makefile's settings-doc names the services')."""
    out = []
    for name in names:
        module, _, attr = name.partition(":")
        out.append(getattr(importlib.import_module(module), attr))
    return out


if __name__ == "__main__":
    sys.stdout.write(markdown(load_classes(sys.argv[1:])))
