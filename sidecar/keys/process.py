"""The keys process: with several workers, the pod's fetchers run here, once, forked by the supervisor.

It resumes from the state file (a restart costs no fetch), serves the workers' channel, and exits on
SIGTERM once the supervisor has stopped the workers. It exports counters only: see `_no_gauges`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

from sidecar.clock import Clock, OffsetClock, clock_from_environment
from sidecar.config import Config
from sidecar.keys.channel import HubServer, line_limit
from sidecar.keys.hub import KeyHub
from sidecar.keys.state import StateFile
from sidecar.metrics import Metrics

log = logging.getLogger("sidecar.keys")
SOCKET_NAME = "keys.sock"
# The test clock of a pod can jump; the fetcher then looks at its schedule this often (real seconds).
_TEST_CLOCK_RECHECK = 0.2


def socket_path(shared: str) -> str:
    return str(Path(shared) / SOCKET_NAME)


def _no_gauges() -> None:
    """In multiprocess mode every process that created a gauge counts in its aggregation, and the zeros
    `Metrics()` creates here would pull `sidecar_ready` (livemin) to 0. This process only counts (fetches,
    ignored keys, refetches; the workers export every gauge from the published state), so its gauge files
    go at once, as if it had died."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def run_keys_process(cfg: Config, shared: str, started: Callable[[], None], clock: Clock | None = None) -> int:
    clock = clock or clock_from_environment()
    return asyncio.run(_serve(cfg, shared, started, clock))


async def _serve(cfg: Config, shared: str, started: Callable[[], None], clock: Clock) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    hub = KeyHub(cfg, clock, Metrics(), _TEST_CLOCK_RECHECK if isinstance(clock, OffsetClock) else None)
    _no_gauges()
    state_file = StateFile(shared)
    hub.resume(state_file.read())
    server = HubServer(hub, socket_path(shared), state_file, line_limit(cfg.jwks.max_bytes))
    await server.start()
    started()
    await hub.start()
    log.info("keys process serving", extra={"providers": [p.name for p in cfg.providers]})
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([stopping, *hub.tasks], return_when=asyncio.FIRST_COMPLETED)
        if not stop.is_set():
            # A refresher stopped (a bug): exit, and the supervisor starts a keys process that resumes the
            # published state, rather than keep serving keys nobody refreshes.
            failed = next(t for t in hub.tasks if t.done())
            log.error("a key refresher stopped; exiting to be restarted", exc_info=failed.exception())
            return 1
        return 0
    finally:
        stopping.cancel()
        await server.close()
        await hub.close()
