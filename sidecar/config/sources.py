"""Where config values come from: the YAML file, `SIDECAR_*` environment variables and command-line flags.

Precedence is flags > environment > file. The flags and their environment twins are derived from the model
(`FLAGS`): every key of the top level and of its sections has one, named after its path, unless its type
carries `Cli(None)`; provider keys marked with `Cli(...)` set the first provider.
"""

from __future__ import annotations

import argparse
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from sidecar.config.errors import ConfigError
from sidecar.config.model import Config, Provider, fields_of, section_class
from sidecar.config.types import Cli

KEY_SOURCES = ("jwks_url", "jwks_file", "discovery")


@dataclass(frozen=True)
class Flag:
    name: str  # --name on the command line, SIDECAR_NAME in the environment
    path: tuple[str, ...]  # where it lands in the config model; ("provider", key) means providers[0]
    help: str
    many: bool = False  # repeatable flag; comma-separated values too, and in the environment
    switch: bool = False  # a true/false key: --name / --no-name
    required: bool = False  # required unless the config file provides it
    default: Any = field(default=None, compare=False)
    metavar: str = "VALUE"

    @property
    def env(self) -> str:
        return "SIDECAR_" + self.name.upper().replace("-", "_")

    @property
    def key(self) -> str:
        """The config key it sets, as the docs write it."""
        if self.path[0] == "provider":
            return "providers[0]." + self.path[1]
        return ".".join(self.path)


def _cli(info: Any) -> Cli | None:
    return next((m for m in info.metadata if isinstance(m, Cli)), None)


_METAVARS = {"Duration": "DURATION", "WholeNumber": "N", "HostPort": "HOST:PORT", "HttpUrl": "URL"}


def _metavar(info: Any, name: str) -> str:
    """What `--help` shows as the value: the type's name, the choices, or the flag's own noun."""
    args = [a for a in typing.get_args(info.annotation) if a is not type(None)]
    if typing.get_origin(info.annotation) is typing.Literal:
        return "{" + ",".join(typing.get_args(info.annotation)) + "}"
    metadata = list(info.metadata) + [m for a in args for m in getattr(a, "__metadata__", ())]
    for m in metadata:
        schema = getattr(m, "json_schema", None)
        if isinstance(schema, dict) and schema.get("x-type") in _METAVARS:
            return _METAVARS[schema["x-type"]]
    return name.rpartition("-")[2].upper()


def _is_list(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (tuple, frozenset, list)


def _flags() -> tuple[Flag, ...]:
    out: list[Flag] = []

    def add(path: tuple[str, ...], info: Any, cli: Cli | None, name: str) -> None:
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        out.append(
            Flag(
                name=cli.name if cli and cli.name else name,
                path=path,
                help=info.description or "",
                many=bool(cli and cli.many) or _is_list(info.annotation),
                switch=info.annotation is bool,
                required=bool(cli and cli.required),
                default=default,
                metavar=(cli and cli.metavar) or _metavar(info, cli.name if cli and cli.name else name),
            )
        )

    for fname, info in fields_of(Provider).items():
        cli = _cli(info)
        if cli is not None and cli.name:
            add(("provider", fname), info, cli, cli.name)
    for fname, info in fields_of(Config).items():
        cli = _cli(info)
        if cli is not None and cli.name is None:
            continue
        section = section_class(info.annotation)
        if section is None:
            add((fname,), info, cli, fname.replace("_", "-"))
            continue
        for sub, sub_info in fields_of(section).items():
            sub_cli = _cli(sub_info)
            if sub_cli is not None and sub_cli.name is None:
                continue
            add((fname, sub), sub_info, sub_cli, f"{fname}-{sub}".replace("_", "-"))
    return tuple(out)


FLAGS: tuple[Flag, ...] = _flags()


# --- reading each source ---------------------------------------------------------------------------------------


def read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError("--config", f"cannot read {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError("--config", f"{path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("(top level)", f"{path} must hold a mapping")
    return data


@dataclass
class Layer:
    """The values one source (environment or flags) sets, in the file's shape, and who set each key path."""

    tree: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)  # "providers[0].issuer" -> "--issuer"

    def set(self, flag: Flag, value: Any, origin: str) -> None:
        if flag.path[0] == "provider":
            providers = self.tree.setdefault("providers", [{}])
            providers[0][flag.path[1]] = value
        else:
            node = self.tree
            for k in flag.path[:-1]:
                node = node.setdefault(k, {})
            node[flag.path[-1]] = value
        self.origin[flag.key] = origin


def env_layer(environ: Mapping[str, str]) -> Layer:
    layer = Layer()
    for flag in FLAGS:
        value = environ.get(flag.env)
        if value is not None and value != "":
            layer.set(flag, value, flag.env)
    return layer


def flag_layer(args: argparse.Namespace) -> Layer:
    layer = Layer()
    for flag in FLAGS:
        value = getattr(args, flag.name.replace("-", "_"), None)
        if value is None:
            continue
        if flag.many:  # repeated, and each may hold comma-separated values
            value = [part.strip() for v in value for part in str(v).split(",") if part.strip()]
        layer.set(flag, value, f"--{flag.name}")
    return layer


def _truthy_source(provider: Mapping[str, Any]) -> bool:
    return any(
        provider.get(k) not in (None, "", False) and str(provider.get(k)).lower() not in ("false", "0", "no", "off")
        for k in KEY_SOURCES
    )


def _overlay(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        if k == "providers" and isinstance(out.get("providers"), list) and out["providers"]:
            first = out["providers"][0]
            first = dict(first) if isinstance(first, Mapping) else {}
            if _truthy_source(v[0]):  # a key source from a higher layer replaces the lower one's
                for s in KEY_SOURCES:
                    first.pop(s, None)
            out["providers"] = [{**first, **v[0]}, *out["providers"][1:]]
        elif isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _overlay(dict(out[k]), v)
        else:
            out[k] = v
    return out


@dataclass
class Merged:
    raw: dict[str, Any]
    origin: dict[str, str]  # key path -> the flag or variable that set it (absent: the file or a default)

    def explain(self, e: ConfigError) -> list[str]:
        """The error lines, each naming the flag or variable a value came from."""
        lines = []
        for path, problem in e.problems:
            src = self.origin.get(path) or next(
                (o for p, o in self.origin.items() if path.startswith(p + "[") or path.startswith(p + ".")), None
            )
            lines.append(f"config error: {path}: {problem}" + (f" (from {src})" if src else ""))
        return lines


def merge(args: argparse.Namespace, environ: Mapping[str, str]) -> Merged:
    """file < env < flags, as one raw mapping for `load`."""
    path = getattr(args, "config", None) or getattr(args, "file", None) or environ.get("SIDECAR_CONFIG")
    tree = read_file(path) if path else {}
    env, flags = env_layer(environ), flag_layer(args)
    for layer in (env, flags):
        tree = _overlay(tree, layer.tree)
    if isinstance(tree.get("providers"), list) and tree["providers"] == [{}]:
        tree.pop("providers")
    return Merged(tree, {**env.origin, **flags.origin})


def _show(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, tuple | frozenset):
        return ",".join(sorted(v) if isinstance(v, frozenset) else v) or "none"
    if isinstance(v, float) and v.is_integer():
        return f"{int(v)}"
    return str(v)


def add_flags(p: argparse.ArgumentParser) -> None:
    """The config flags, for `run` and `check-config` alike."""
    p.add_argument("--config", metavar="FILE", help="YAML config file [env SIDECAR_CONFIG]")
    for flag in FLAGS:
        extra = "required unless --config gives providers; " if flag.required else ""
        shown = "" if flag.default is None or flag.required else f"default {_show(flag.default)}; "
        kw: dict[str, Any] = {"help": f"{flag.help} [{extra}{shown}env {flag.env}]"}
        if flag.switch:
            kw["action"] = argparse.BooleanOptionalAction
            kw["default"] = None
        elif flag.many:
            kw["action"] = "append"
            kw["metavar"] = flag.metavar
        else:
            kw["metavar"] = flag.metavar
        p.add_argument(f"--{flag.name}", **kw)
