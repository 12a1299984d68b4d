"""Several worker processes on one port: SO_REUSEPORT, one key state for the pod, metrics summed.

The supervisor forks the keys process (the pod's only JWKS fetcher, `sidecar.keys.process`) and N
workers, and never runs an event loop or a thread itself, so every fork starts from a clean process. It
forwards SIGTERM/SIGINT to the workers, then stops the keys process once they are gone, forwards SIGHUP (a
config reload) to every child, and restarts a child that dies on its own (backing off, then giving up, when
it dies before it serves). Key states
reach the workers over a Unix socket in the shared directory (`sidecar.keys.channel`); workers share
nothing at request time. Metrics use prometheus-client's multiprocess mode, so any worker's `/metrics`
reports the sum over all processes. See docs/workers.md for the guarantees.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("sidecar.workers")
_RESTART_PAUSE = 1.0
_MAX_RESTART_PAUSE = 8.0
_STARTUP_ATTEMPTS = 5  # children dying before they serve, in a row, before the supervisor gives up


def cpu_limit(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPUs this container may use: the cgroup quota if there is one, else the CPUs we may run on."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]  # cgroup v2
        if quota != "max":
            return max(1, min(allowed, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        q = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        p = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
        if q > 0 and p > 0:
            return max(1, min(allowed, math.ceil(q / p)))
    except (OSError, ValueError):
        pass
    return max(1, allowed)


def shared_directory() -> str:
    """Create the workers' shared directory and point prometheus-client at it.

    Must run before anything imports prometheus_client: it picks its value store once, at import."""
    assert "prometheus_client" not in sys.modules, "prometheus_client was imported before multiprocess mode was set"
    shared = tempfile.mkdtemp(prefix="sidecar-workers-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = shared
    return shared


@dataclass
class _Child:
    slot: str  # "keys" or "worker N": a restarted child takes the slot of the one that died
    started: int  # read end of the pipe the child writes one byte to once it serves


Main = Callable[[Callable[[], None]], int]  # a child's body; it calls its argument once it serves


def run_workers(
    n: int,
    shared: str,
    serve_one: Main,
    keys_main: Main | None = None,
    *,
    pause: float = _RESTART_PAUSE,
    max_pause: float = _MAX_RESTART_PAUSE,
    attempts: int = _STARTUP_ATTEMPTS,
) -> int:
    """Fork the keys process (when given) and n workers; restart any that dies on its own. A child that
    dies before it serves is restarted after a pause that doubles each time; after `attempts` such deaths
    in a row the supervisor gives up: it stops the others and returns 1. Returns 0 once every child has
    stopped cleanly after a signal. Workers are stopped first, the keys process after them."""
    children: dict[int, _Child] = {}
    failures: dict[str, int] = {}
    stopping = False
    failed = False

    def spawn(slot: str, main: Main) -> None:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the child's loop takes it (a reload)
            os.close(read_end)
            for other in children.values():
                os.close(other.started)

            def started() -> None:
                with contextlib.suppress(OSError):
                    os.write(write_end, b"1")
                    os.close(write_end)

            code = 1
            try:
                code = main(started)
            except BaseException:  # the supervisor only sees an exit code: say why here
                log.exception("child failed", extra={"slot": slot})
            finally:
                os._exit(code)
        os.close(write_end)
        children[pid] = _Child(slot, read_end)
        log.info("child started", extra={"role": slot.split()[0], "slot": slot, "pid": pid})

    def main_for(slot: str) -> Main:
        return keys_main if slot == "keys" and keys_main is not None else serve_one

    def signal_workers(signum: int) -> None:
        for pid, child in list(children.items()):
            if child.slot != "keys":
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)

    def stop_keys_when_alone() -> None:
        if stopping and all(c.slot == "keys" for c in children.values()):
            for pid in list(children):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        signal_workers(signum)
        stop_keys_when_alone()

    def hangup(signum: int, _frame: object) -> None:
        for pid in list(children):  # every child reloads its config: the workers and the keys process
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, hangup)
    if keys_main is not None:
        spawn("keys", keys_main)
    for i in range(n):
        spawn(f"worker {i}", serve_one)
    try:
        while children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            if pid not in children:
                continue
            child = children.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            served = _served(child.started)
            _mark_dead(pid)
            if stopping:
                failed = failed or code != 0
                stop_keys_when_alone()
                continue
            if served:
                failures[child.slot] = 0
                wait = pause
            else:
                failures[child.slot] = failures.get(child.slot, 0) + 1
                if failures[child.slot] >= attempts:
                    log.error(
                        "a child keeps dying before it serves; giving up",
                        extra={"slot": child.slot, "pid": pid, "exit": code, "attempts": attempts},
                    )
                    failed = stopping = True
                    signal_workers(signal.SIGTERM)
                    stop_keys_when_alone()
                    continue
                wait = min(pause * 2 ** (failures[child.slot] - 1), max_pause)
            log.error(
                "worker died; restarting it" if child.slot != "keys" else "keys process died; restarting it",
                extra={"slot": child.slot, "pid": pid, "exit": code, "during_start_up": not served, "pause": wait},
            )
            time.sleep(wait)
            if not stopping:
                spawn(child.slot, main_for(child.slot))
            else:
                stop_keys_when_alone()
    finally:
        for child in children.values():
            os.close(child.started)
        shutil.rmtree(shared, ignore_errors=True)
    return 1 if failed else 0


def _served(read_end: int) -> bool:
    """Whether the child said it serves (its byte is in the pipe); closes the pipe."""
    try:
        os.set_blocking(read_end, False)
        return os.read(read_end, 1) == b"1"
    except OSError:
        return False
    finally:
        os.close(read_end)


def _mark_dead(pid: int) -> None:
    try:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
    except Exception:
        pass
