"""The value types a config key can have, each with its parser, its error wording and its JSON Schema.

A type here is an `Annotated` alias: pydantic runs the parser, and the JSON Schema is a reference to one
shared definition (`TYPE_SCHEMAS`), so the chart's schema names the same types the model does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, WithJsonSchema
from pydantic_core import PydanticCustomError

from sidecar.config.errors import ConfigError

ASYMMETRIC_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


# --- markers a field's type may carry -----------------------------------------------------------------


@dataclass(frozen=True)
class Cli:
    """How a key appears on the command line. Keys of the top level and of its sections get a flag named
    after their path (`jwks.max_stale` is `--jwks-max-stale`); this marker renames it, makes it repeatable
    (`many`), marks it required in `--help`, or removes it (`name=None`). Provider keys get a flag only with
    this marker, and it sets the first provider."""

    name: str | None = ""
    many: bool = False
    required: bool = False
    metavar: str = ""  # what --help shows for the value (default: from the type)


@dataclass(frozen=True)
class Hint:
    """What a missing required key needs, in words (replaces the bare "required")."""

    text: str


def key(default: Any = ..., doc: str = "", **constraints: Any) -> Any:
    """A config key: its default (omit for a required key), one line saying what it does, and constraints
    (`ge=`, `min_length=`...) that pydantic checks and the JSON Schema shows."""
    if callable(default) and not isinstance(default, str | bool | int | float | tuple):
        return Field(default_factory=default, description=doc, **constraints)
    return Field(default, description=doc, **constraints)


# --- failing with our own words ------------------------------------------------------------------------


def fail(problem: str) -> NoReturn:
    """Raise a validation error whose message is exactly `problem` (braces in it are safe)."""
    raise PydanticCustomError("config", "{problem}", {"problem": problem})


# --- parsers ---------------------------------------------------------------------------------------------


def seconds(v: Any) -> float:
    if isinstance(v, bool):
        fail(f"expected a duration such as 30, '30s', '5m' or '24h', got {v!r}")
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str) and (m := _DURATION.match(v.strip())):
        return float(m.group(1)) * _UNITS[m.group(2)]
    fail(f"expected a duration such as 30, '30s', '5m' or '24h', got {v!r}")


def _whole(v: Any) -> int:
    if isinstance(v, str) and v.strip().isdigit():
        return int(v.strip())
    if isinstance(v, bool) or not isinstance(v, int):
        fail(f"expected a whole number, got {v!r}")
    return v


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in _TRUE + _FALSE:
        return v.strip().lower() in _TRUE
    fail(f"expected true or false, got {v!r}")


def _text(v: Any) -> str:
    if not isinstance(v, str):
        fail(f"expected a string, got {type(v).__name__}")
    if not v.strip():
        fail("must not be empty")
    return v


def _list(v: Any) -> Any:
    if isinstance(v, str):
        return [s for s in (x.strip() for x in v.split(",")) if s]
    if not isinstance(v, list | tuple):
        fail(f"expected a list of strings, got {type(v).__name__}")
    return v


def _hostport(v: Any) -> str:
    s = _text(v)
    host, sep, port = s.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        fail(f"expected HOST:PORT with a port from 1 to 65535, such as 0.0.0.0:8000, got {s!r}")
    return s


def _url(v: Any) -> str:
    s = _text(v)
    parts = urlsplit(s)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        fail(f"expected an absolute http or https URL, got {s!r}")
    try:
        port = parts.port
    except ValueError:
        fail(f"{s!r}: the port must be a number from 1 to 65535")
    if port == 0:
        fail(f"{s!r}: the port must be a number from 1 to 65535")
    return s


def _header_name(v: Any) -> str:
    s = _text(v)
    if not HEADER_NAME.match(s):
        fail(f"{s!r} is not a valid HTTP header name")
    return s


def _ref(name: str) -> WithJsonSchema:
    # a placeholder: pydantic resolves every $ref among its own definitions; schema.py turns it into a $ref
    return WithJsonSchema({"x-type": name})


# --- the types -------------------------------------------------------------------------------------------

Duration = Annotated[float, BeforeValidator(seconds), _ref("Duration")]
WholeNumber = Annotated[int, BeforeValidator(_whole), _ref("WholeNumber")]
Boolish = Annotated[bool, BeforeValidator(_bool), _ref("Boolish")]
Text = Annotated[str, BeforeValidator(_text), WithJsonSchema({"type": "string", "minLength": 1})]
StringList = Annotated[tuple[Text, ...], BeforeValidator(_list), _ref("StringList")]
HostPort = Annotated[str, BeforeValidator(_hostport), _ref("HostPort")]
HttpUrl = Annotated[str, BeforeValidator(_url), _ref("HttpUrl")]
HeaderName = Annotated[str, BeforeValidator(_header_name), _ref("HeaderName")]
HeaderList = Annotated[
    tuple[HeaderName, ...],
    BeforeValidator(_list),
    WithJsonSchema({"oneOf": [{"type": "array", "items": {"x-type": "HeaderName"}}, {"type": "string"}]}),
]

TYPE_SCHEMAS: dict[str, dict[str, Any]] = {
    "Duration": {
        "description": 'Seconds as a number, or a string such as "500ms", "30s", "5m", "24h", "1d".',
        "oneOf": [
            {"type": "number", "minimum": 0},
            {"type": "string", "pattern": r"^\s*[0-9]+(\.[0-9]+)?(ms|s|m|h|d)?\s*$"},
        ],
    },
    "WholeNumber": {
        "description": "A whole number (a string of digits is accepted too).",
        "oneOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": r"^\s*[0-9]+\s*$"}],
    },
    "StringList": {
        "description": "A list of strings, or one comma-separated string.",
        "oneOf": [{"type": "array", "items": {"type": "string", "minLength": 1}}, {"type": "string"}],
    },
    "Boolish": {
        "oneOf": [{"type": "boolean"}, {"type": "string", "enum": [*_TRUE, *_FALSE]}],
    },
    "HostPort": {"type": "string", "pattern": "^.+:[0-9]{1,5}$", "description": "HOST:PORT"},
    "HttpUrl": {"type": "string", "pattern": "^https?://[^/]+"},
    "HeaderName": {"type": "string", "pattern": HEADER_NAME.pattern},
    "Algorithm": {"type": "string", "enum": list(ASYMMETRIC_ALGS)},
}


# --- the helper other modules (policy) use to read lists with a path --------------------------------------


def strings(path: str, v: Any) -> tuple[str, ...]:
    """A list of non-empty strings; a comma-separated string is accepted too (what the environment holds)."""
    if isinstance(v, str):
        v = [s for s in (x.strip() for x in v.split(",")) if s]
    if not isinstance(v, list | tuple):
        raise ConfigError(path, f"expected a list of strings, got {type(v).__name__}")
    out = []
    for i, x in enumerate(v):
        if not isinstance(x, str):
            raise ConfigError(f"{path}[{i}]", f"expected a string, got {type(x).__name__}")
        if not x.strip():
            raise ConfigError(f"{path}[{i}]", "must not be empty")
        out.append(x)
    return tuple(out)
