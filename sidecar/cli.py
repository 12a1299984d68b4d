"""Command line: `sidecar run | check-config | demo | healthcheck`. Flags > environment (SIDECAR_*) > config file.

Every flag is a path in the config file's model; merging builds one mapping that `config.load` checks.
Exit code 2 on any config problem, with the exact key path.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from sidecar.config import Config, ConfigError, load

EXIT_CONFIG = 2


@dataclass(frozen=True)
class Flag:
    name: str  # --name on the command line, SIDECAR_NAME in the environment
    path: tuple[str, ...]  # where it lands in the config model; ("provider", key) means providers[0]
    help: str
    many: bool = False  # repeatable flag; comma-separated in the environment
    switch: bool = False  # takes no value on the command line


FLAGS: tuple[Flag, ...] = (
    Flag("listen", ("listen",), "proxy listener HOST:PORT (default 0.0.0.0:8000)"),
    Flag("upstream", ("upstream",), "the app, e.g. http://127.0.0.1:8080"),
    Flag("admin-listen", ("admin_listen",), "health/readiness/metrics listener (default 0.0.0.0:9901)"),
    Flag("admin-actions", ("admin_actions",), "admin actions: off | loopback (default) | on"),
    Flag("jwks-url", ("provider", "jwks_url"), "the provider's JWKS URL"),
    Flag("jwks-file", ("provider", "jwks_file"), "a JWKS file instead of a URL"),
    Flag("discovery", ("provider", "discovery"), "find jwks_uri via the issuer's OIDC discovery", switch=True),
    Flag("issuer", ("provider", "issuer"), "the exact `iss` accepted"),
    Flag("audience", ("provider", "audiences"), "an accepted `aud` (repeatable, any-of)", many=True),
    Flag("algorithms", ("provider", "algorithms"), "allowed algs, comma-separated (default: all asymmetric)"),
    Flag("leeway", ("leeway",), "clock-skew leeway for exp/nbf/iat (default 60s)"),
    Flag("expired-grace", ("expired_grace",), "accept tokens expired up to this long past leeway (default 0)"),
    Flag("public-path", ("public_paths",), "path prefix served without a token (repeatable)", many=True),
    Flag(
        "claim-header",
        ("claim_headers",),
        "NAME=CLAIM header for the app (repeatable; a.b for nested)",
        many=True,
    ),
    Flag(
        "cors-origin",
        ("cors", "origins"),
        "allowed CORS origin (repeatable; https://*.example.com patterns)",
        many=True,
    ),
    Flag(
        "strip-authorization",
        ("strip_authorization",),
        "do not forward Authorization to the app",
        switch=True,
    ),
    Flag("jwks-refresh", ("jwks", "refresh"), "key set refresh interval (default 5m)"),
    Flag(
        "jwks-max-stale",
        ("jwks", "max_stale"),
        "keep using last good keys this long when the IdP fails (default 24h)",
    ),
    Flag(
        "jwks-refetch-cooldown",
        ("jwks", "refetch_cooldown"),
        "min time between unknown-kid refetches (default 30s)",
    ),
    Flag(
        "key-retention",
        ("jwks", "key_retention"),
        "trust a key removed from the JWKS this long (default 24h)",
    ),
    Flag("workers", ("workers",), "worker processes (default 0: one per CPU this container may use)"),
    Flag("log-level", ("log_level",), "debug | info | warning | error"),
)


def _env_name(flag: Flag) -> str:
    return "SIDECAR_" + flag.name.upper().replace("-", "_")


def _set(tree: dict[str, Any], flag: Flag, value: Any) -> None:
    if flag.path[0] == "provider":
        providers = tree.setdefault("providers", [])
        if not isinstance(providers, list):
            raise ConfigError("providers", "expected a list of providers")
        if not providers:
            providers.append({})
        first = providers[0]
        if flag.path[1] in ("jwks_url", "jwks_file", "discovery"):
            # a key source given on the command line replaces the file's, it does not add a second one
            for k in ("jwks_url", "jwks_file", "discovery"):
                first.pop(k, None)
        first[flag.path[1]] = value
        return
    node = tree
    for key in flag.path[:-1]:
        node = node.setdefault(key, {})
    node[flag.path[-1]] = value


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


def merge(args: argparse.Namespace, environ: Mapping[str, str]) -> dict[str, Any]:
    """file < env < flags, as one raw mapping for `config.load`."""
    path = args.config or environ.get("SIDECAR_CONFIG")
    tree = read_file(path) if path else {}
    for flag in FLAGS:
        env_value = environ.get(_env_name(flag))
        if env_value is not None and env_value != "":
            _set(tree, flag, env_value)
    for flag in FLAGS:
        value = getattr(args, flag.name.replace("-", "_"))
        if value is None or value is False:
            continue
        _set(tree, flag, value)
    return tree


def build_config(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> Config:
    return load(merge(args, environ))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sidecar", description="JWT-validating reverse proxy for a pod")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="verify tokens and proxy to the app")
    run.add_argument("--config", help="YAML config file (env SIDECAR_CONFIG)")
    for flag in FLAGS:
        kw: dict[str, Any] = {"help": f"{flag.help} [env {_env_name(flag)}]"}
        if flag.switch:
            kw["action"] = "store_true"
        elif flag.many:
            kw["action"] = "append"
        run.add_argument(f"--{flag.name}", **kw)
    check = sub.add_parser("check-config", help="validate a config file and print the effective config")
    check.add_argument("file")
    demo = sub.add_parser("demo", help="dev issuer + echo app + sidecar on loopback, with curl lines")
    demo.add_argument("--port", type=int, default=0, help="sidecar port (default: a free one)")
    health = sub.add_parser("healthcheck", help="exit 0 if the running sidecar's /healthz answers 200 (HEALTHCHECK)")
    health.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the answer (default 2)")
    return p


def _fail(e: ConfigError) -> int:
    print(f"config error: {e.path}: {e.problem}", file=sys.stderr)
    return EXIT_CONFIG


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "check-config":
        try:
            cfg = load(read_file(args.file))
        except ConfigError as e:
            return _fail(e)
        print(yaml.safe_dump(cfg.effective(), sort_keys=False), end="")
        return 0
    if args.command == "demo":
        from sidecar.devtools.demo import run_demo

        return run_demo(args.port)
    if args.command == "healthcheck":
        from sidecar.healthcheck import check

        return check(args.timeout)
    try:
        cfg = build_config(args)
    except ConfigError as e:
        return _fail(e)
    from sidecar.workers import cpu_limit, shared_directory

    workers = cfg.workers or cpu_limit()
    shared = shared_directory() if workers > 1 else None  # before sidecar.app imports prometheus_client
    from sidecar.app import serve

    return serve(cfg, workers, shared)
