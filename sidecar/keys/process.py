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
from sidecar.reload import ConfigSource, Reloader

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


def run_keys_process(
    cfg: Config,
    shared: str,
    started: Callable[[], None],
    clock: Clock | None = None,
    source: ConfigSource | None = None,
) -> int:
    clock = clock or clock_from_environment()
    return asyncio.run(_serve(cfg, shared, started, clock, source))


async def _serve(
    cfg: Config, shared: str, started: Callable[[], None], clock: Clock, source: ConfigSource | None = None
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    metrics = Metrics()
    hub = KeyHub(cfg, clock, metrics, _TEST_CLOCK_RECHECK if isinstance(clock, OffsetClock) else None)
    _no_gauges()
    state_file = StateFile(shared)
    hub.resume(state_file.read())
    server = HubServer(hub, socket_path(shared), state_file, line_limit(cfg.jwks.max_bytes))
    await server.start()
    started()
    await hub.start()
    log.info("keys process serving", extra={"providers": [p.name for p in cfg.providers]})
    watching: asyncio.Task[None] | None = None
    if source is not None and cfg.reload:
        # The pod's count of reloads is this process's: every worker reloads the same file.
        reloader = Reloader(source, cfg, lambda new, _loaded: _reconfigure(hub, new), metrics, True, gauge=False)
        watching = asyncio.create_task(reloader.run(), name="reload")
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, reloader.hangup)
    stopping = asyncio.create_task(stop.wait())
    try:
        while True:
            hub.reconfigured.clear()
            changed = asyncio.create_task(hub.reconfigured.wait())
            await asyncio.wait([stopping, changed, *hub.tasks], return_when=asyncio.FIRST_COMPLETED)
            changed.cancel()
            if stop.is_set():
                return 0
            failed = next((t for t in hub.tasks if t.done()), None)
            if failed is not None:
                # A refresher stopped (a bug): exit, and the supervisor starts a keys process that resumes the
                # published state, rather than keep serving keys nobody refreshes.
                log.error("a key refresher stopped; exiting to be restarted", exc_info=failed.exception())
                return 1
            # else a reload replaced refreshers: wait on the new set
    finally:
        stopping.cancel()
        if watching is not None:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
        await server.close()
        await hub.close()


async def _reconfigure(hub: KeyHub, cfg: Config) -> None:
    renewed = await hub.reconfigure(cfg)
    if renewed:
        log.info("key sources changed by a reload", extra={"providers": renewed})
