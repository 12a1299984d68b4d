"""`sidecar healthcheck`: the image's HEALTHCHECK, asking `/healthz` on the admin port the sidecar really uses.

The admin address can come from the config file, `SIDECAR_ADMIN_LISTEN` or `--admin-listen`, and only the
running `sidecar run` knows which one won. So the check reads that process's command line, working directory
and environment from /proc (same container, same user) and resolves them exactly as `run` does: flags >
environment > file. A fixed 9901 would report a healthy sidecar as unhealthy once the port is moved.

Exit status as Docker reads it: 0 healthy, 1 unhealthy. A one-line reason goes to stdout (the health log).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HEALTHY, UNHEALTHY = 0, 1
PROC = Path("/proc")


@dataclass(frozen=True)
class Running:
    """What `run` was started with: its arguments after `run`, its environment and its working directory."""

    pid: int
    args: tuple[str, ...]
    environ: dict[str, str]
    cwd: str | None


def _run_args(argv: list[str]) -> tuple[str, ...] | None:
    """The arguments after `run` when argv is a `sidecar run` (console script or `python -m sidecar`)."""
    for i, word in enumerate(argv):
        if word == "-m" and i + 1 < len(argv) and argv[i + 1] == "sidecar":
            rest = argv[i + 2 :]
        elif os.path.basename(word) == "sidecar":
            rest = argv[i + 1 :]
        else:
            continue
        return tuple(rest[1:]) if rest[:1] == ["run"] else None
    return None


def _environ(raw: bytes) -> dict[str, str]:
    out = {}
    for item in raw.split(b"\0"):
        name, sep, value = item.partition(b"=")
        if sep and name:
            out[name.decode(errors="replace")] = value.decode(errors="replace")
    return out


def find_running(proc: Path = PROC) -> Running | None:
    """The `sidecar run` with the lowest pid: the supervisor when there are workers (they share its argv)."""
    me = os.getpid()
    pids = sorted(int(p.name) for p in proc.iterdir() if p.name.isdigit() and int(p.name) != me)
    for pid in pids:
        try:
            argv = [a.decode(errors="replace") for a in (proc / str(pid) / "cmdline").read_bytes().split(b"\0")]
        except OSError:
            continue  # gone, or not ours to read
        args = _run_args([a for a in argv if a])
        if args is None:
            continue
        try:
            environ = _environ((proc / str(pid) / "environ").read_bytes())
        except OSError:
            environ = dict(os.environ)  # an exec'd health check gets the container's environment too
        try:
            cwd: str | None = os.readlink(proc / str(pid) / "cwd")
        except OSError:
            cwd = None
        return Running(pid=pid, args=args, environ=environ, cwd=cwd)
    return None


def healthz_url(admin_listen: str) -> str:
    """Where to ask: a wildcard bind is asked on loopback of the same family."""
    host, _, port = admin_listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "*"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/healthz"


def admin_listen_of(running: Running) -> str:
    """The admin address `run` resolved from the same flags, environment and config file.

    Only that key is read, not the whole config checked: `run` checked it at start, and a key file that turned
    bad since (a mounted Secret's update) must cost the last good keys' staleness, not a container restart."""
    from sidecar.cli import parser
    from sidecar.config.model import Config, fields_of, split_hostport
    from sidecar.config.sources import merge

    args = parser().parse_args(["run", *running.args])
    environ = dict(running.environ)
    config = args.config or environ.pop("SIDECAR_CONFIG", None)
    if config and not os.path.isabs(config) and running.cwd:
        config = os.path.join(running.cwd, config)  # relative to where `run` started, not to us
    args.config = config
    address = str(merge(args, environ).raw.get("admin_listen", fields_of(Config)["admin_listen"].default))
    split_hostport(address)  # a ValueError when it is no HOST:PORT
    return address


def check(timeout: float = 2.0, proc: Path = PROC) -> int:
    running = find_running(proc)
    if running is None:
        print("unhealthy: no `sidecar run` process found")
        return UNHEALTHY
    try:
        url = healthz_url(admin_listen_of(running))
    except (SystemExit, ValueError) as e:  # argparse exits on bad flags; ConfigError is a ValueError
        print(f"unhealthy: cannot resolve the admin address of pid {running.pid}: {e}")
        return UNHEALTHY
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            status = resp.status
    except urllib.error.HTTPError as e:
        status = e.code
    except (OSError, ValueError) as e:
        print(f"unhealthy: {url}: {e}")
        return UNHEALTHY
    print(f"{'healthy' if status == 200 else 'unhealthy'}: {url} {status}")
    return HEALTHY if status == 200 else UNHEALTHY
