"""Command line: `sidecar run | check-config | explain | demo | healthcheck`.

Flags > environment (SIDECAR_*) > config file.

The flags come from the config model (`sidecar.config.sources.FLAGS`), so `run` and `check-config` read the
same flags, environment and file. Exit code 2 on any config problem, one line per problem with its key path.
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
from collections.abc import Mapping, Sequence

import yaml

from sidecar import __version__
from sidecar.config import Config, ConfigError, load
from sidecar.config.model import split_hostport
from sidecar.config.sources import FLAGS, Flag, Merged, add_flags, merge, read_file

__all__ = ["EXIT_CONFIG", "FLAGS", "Flag", "build_config", "main", "parser", "read_file"]

EXIT_CONFIG = 2

EXAMPLE = """\
example:
  sidecar run --issuer https://login.example.com/realms/main --audience orders-api \\
      --jwks-url https://login.example.com/realms/main/protocol/openid-connect/certs \\
      --upstream http://127.0.0.1:8080
  sidecar run --config /etc/sidecar/config.yaml     # every key: config/full.yaml
  sidecar check-config /etc/sidecar/config.yaml     # the effective config, or every problem (exit 2)

Flags > environment (each flag's SIDECAR_* twin) > config file. Docs: docs/configuration.md
"""


def build_config(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> Config:
    return load(merge(args, environ).raw)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sidecar",
        description="JWT-validating reverse proxy for a pod",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="verify tokens and proxy to the app",
        description="Verify tokens and proxy to the app. Required: a provider (--issuer, --audience and one "
        "key source: --jwks-url, --jwks-file or --discovery), unless --config gives providers.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_flags(run)
    check = sub.add_parser(
        "check-config",
        help="validate file + environment + flags, print the effective config",
        description="Read the config exactly as `run` does (file, SIDECAR_* environment, flags), print the "
        "effective config with every default, or every problem with its key path (exit 2).",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("file", nargs="?", help="YAML config file (the same as --config)")
    add_flags(check)
    demo = sub.add_parser("demo", help="dev issuer + echo app + sidecar on loopback, with curl lines")
    demo.add_argument("--port", type=int, default=0, help="sidecar port (default: a free one)")
    explain = sub.add_parser(
        "explain",
        help="what the sidecar would decide for a token, check by check (exit 0 allowed, 1 refused, 2 usage)",
        description="Run the sidecar's own decision on one token and say why, check by check. Offline from "
        "the config (keys fetched once), or --admin URL to ask a running sidecar. Docs: docs/explain.md",
    )
    add_flags(explain)
    # declared here: importing sidecar.explain would import prometheus_client before `run` sets multiprocess mode
    explain.add_argument("--method", default="GET", help="the request's method (default GET)")
    explain.add_argument("--path", default="/", help="the request's path, for the route rule (default /)")
    explain.add_argument("--admin", metavar="URL", help="ask a running sidecar's admin listener (live keys, clock)")
    explain.add_argument("--json", action="store_true", help="machine output (shape: docs/explain.md)")
    explain.add_argument("token", help="the token, or - to read it from stdin")
    health = sub.add_parser("healthcheck", help="exit 0 if the running sidecar's /healthz answers 200 (HEALTHCHECK)")
    health.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the answer (default 2)")
    return p


def _fail(lines: list[str]) -> int:
    for line in lines:
        print(line, file=sys.stderr)
    return EXIT_CONFIG


def _listeners(cfg: Config) -> list[tuple[str, str]]:
    named = [("listen", cfg.listen), ("admin_listen", cfg.admin_listen)]
    if cfg.decision is not None:
        named.append(("decision.listen", cfg.decision.listen))
    return named


def unbindable(cfg: Config) -> list[str]:
    """Every listener address this process cannot bind, as error lines (checked before any worker starts)."""
    lines = []
    for key, address in _listeners(cfg):
        host, port = split_hostport(address)
        try:
            infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            family, _, _, _, sockaddr = infos[0]
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(sockaddr)
        except OSError as e:
            why = "the address is in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
            lines.append(f"config error: {key}: cannot listen on {address}: {why}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "demo":
        from sidecar.devtools.demo import run_demo

        return run_demo(args.port)
    if args.command == "healthcheck":
        from sidecar.healthcheck import check

        return check(args.timeout)
    if args.command == "explain":
        from sidecar.explain import run

        return run(args)
    merged: Merged | None = None
    # check-config may run where the pod's mounted key files are not (CI): it notes them instead of failing
    unread: list[str] | None = [] if args.command == "check-config" else None
    try:
        merged = merge(args, os.environ)
        cfg = load(merged.raw, unread)
    except ConfigError as e:
        return _fail(merged.explain(e) if merged else e.lines())
    if args.command == "check-config":
        for note in unread or ():
            print(f"note: {note}", file=sys.stderr)
        print(yaml.safe_dump(cfg.effective(), sort_keys=False), end="")
        return 0
    problems = unbindable(cfg)
    if problems:
        return _fail(problems)
    from sidecar.workers import cpu_limit, shared_directory

    workers = cfg.workers or cpu_limit()
    shared = shared_directory() if workers > 1 else None  # before sidecar.app imports prometheus_client
    from sidecar.app import serve
    from sidecar.reload import ConfigSource

    return serve(cfg, workers, shared, ConfigSource(args, os.environ))
