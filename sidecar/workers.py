"""Several worker processes on one port: SO_REUSEPORT, metrics summed across them, admin actions shared.

The parent forks N workers before any event loop or thread exists, forwards SIGTERM/SIGINT to them, and
restarts a worker that dies on its own. Each worker is a full sidecar with its own key refresher: N
small JWKS fetches per refresh interval instead of one, in exchange for workers that share nothing at
request time. Metrics use prometheus-client's multiprocess mode, so any worker's `/metrics` reports the
sum over all of them. Admin actions (refresh, revoke) are written to a file in the shared directory that
every worker follows, so a revocation reaches all workers within `FOLLOW_INTERVAL`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("sidecar.workers")
FOLLOW_INTERVAL = 0.25
_RESTART_PAUSE = 1.0


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


class SharedActions:
    """Admin actions every worker applies: an append-only file of JSON lines in the shared directory."""

    def __init__(self, directory: str) -> None:
        self.path = Path(directory) / "admin-actions.jsonl"
        self._offset = 0

    def publish(self, action: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(action) + "\n")

    def read_new(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, encoding="utf-8") as f:
                f.seek(self._offset)
                lines = f.readlines()
                self._offset = f.tell()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.endswith("\n")]

    async def follow(self, apply: Callable[[dict[str, Any]], Any]) -> None:
        while True:
            for action in self.read_new():
                result = apply(action)
                if asyncio.iscoroutine(result):
                    await result
            await asyncio.sleep(FOLLOW_INTERVAL)


def shared_directory() -> str:
    """Create the workers' shared directory and point prometheus-client at it.

    Must run before anything imports prometheus_client: it picks its value store once, at import."""
    assert "prometheus_client" not in sys.modules, "prometheus_client was imported before multiprocess mode was set"
    shared = tempfile.mkdtemp(prefix="sidecar-workers-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = shared
    return shared


def run_workers(n: int, shared: str, serve_one: Callable[[], int]) -> int:
    """Fork n workers running `serve_one`; return 0 once all of them have stopped cleanly after a signal."""
    children: dict[int, int] = {}
    stopping = False

    def spawn(slot: int) -> None:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 1
            try:
                code = serve_one()
            finally:
                os._exit(code)
        children[pid] = slot

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for slot in range(n):
        spawn(slot)
    failed = False
    try:
        while children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            if pid not in children:
                continue
            slot = children.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            _mark_dead(pid)
            if stopping:
                failed = failed or code != 0
                continue
            log.error("worker died; restarting it", extra={"worker": slot, "pid": pid, "exit": code})
            time.sleep(_RESTART_PAUSE)
            if not stopping:
                spawn(slot)
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    return 1 if failed else 0


def _mark_dead(pid: int) -> None:
    try:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
    except Exception:
        pass
