"""Wiring: the request's path through the sidecar, the shared state on the app, and the process lifecycle.

handle(): size checks → CORS preflight → normalised path → authorize (route rule, one token, verify with
cache/keys/PyJWT/claims, route requirements) → header hygiene → forward (or WebSocket). Any `Rejection` on
the way becomes the sidecar's own answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import importlib.machinery
import logging
import os
import signal
import sys
import warnings
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

from aiohttp import web
from multidict import CIMultiDict

from sidecar import errors
from sidecar.admin import admin_app
from sidecar.authorize import preflight
from sidecar.clock import Clock, OffsetClock, clock_from_environment
from sidecar.config import Config
from sidecar.connlimits import ConnLimits
from sidecar.cors import CorsPolicy
from sidecar.decision import decision_app
from sidecar.gate import admit, is_websocket
from sidecar.guard import GuardedRunner, OnClose, counting
from sidecar.headers import GRACE_SUFFIX, REPORT_SUFFIX, HeaderPolicy
from sidecar.http.server import LEAN, LeanServer
from sidecar.keys.channel import LocalChannel, SocketChannel, line_limit
from sidecar.keys.hub import KeyHub, same_key_source
from sidecar.keys.process import run_keys_process, socket_path
from sidecar.keys.state import StateFile
from sidecar.keys.view import KeyView
from sidecar.metrics import Metrics
from sidecar.override import MethodOverride
from sidecar.proxy import forward, upstream_session
from sidecar.reload import ConfigSource, Loaded, Reloader, config_hash, current
from sidecar.responses import reject, setup_logging
from sidecar.rules import RuleSet
from sidecar.scrub import TokenForms
from sidecar.state import Sidecar
from sidecar.token_cache import TokenCache
from sidecar.verify import Verifier
from sidecar.websocket import proxy_websocket
from sidecar.workers import run_workers

log = logging.getLogger("sidecar")
T = TypeVar("T")


STATE = web.AppKey("sidecar", Sidecar)


def build_state(
    cfg: Config, clock: Clock | None = None, metrics: Metrics | None = None, shared: str | None = None
) -> Sidecar:
    """One worker's state. Alone (`shared` None) it runs the fetchers itself; one of several reads the key
    state the keys process published (at once, from the state file) and follows it over the socket."""
    clock = clock or clock_from_environment()
    metrics = metrics or Metrics()
    keys = [KeyView(p, cfg.jwks, clock, metrics) for p in cfg.providers]
    channel: LocalChannel | SocketChannel
    if shared is None:
        channel = LocalChannel(KeyHub(cfg, clock, metrics), keys)
    else:
        ask_timeout = 2 * cfg.jwks.fetch_timeout + 1  # discovery and JWKS, each bounded by fetch_timeout
        channel = SocketChannel(socket_path(shared), keys, ask_timeout, line_limit(cfg.jwks.max_bytes))
        for state in StateFile(shared).read().values():
            channel.install(state)
    for view in keys:
        view.update_gauges()  # every key series has its sample from the start, in every process
    return _assemble(cfg, clock, metrics, keys, channel, Loaded(config_hash(cfg)))


def _assemble(
    cfg: Config,
    clock: Clock,
    metrics: Metrics,
    keys: list[KeyView],
    channel: LocalChannel | SocketChannel,
    loaded: Loaded,
    cache: TokenCache | None = None,
) -> Sidecar:
    rules = RuleSet(cfg)
    metrics.routes([r.name for r in cfg.rules] if cfg.route_metrics else [])
    return Sidecar(
        cfg=cfg,
        clock=clock,
        metrics=metrics,
        keys=keys,
        channel=channel,
        verifier=Verifier(cfg, keys, clock, metrics, rules, cache),
        cors=CorsPolicy(cfg.cors),
        headers=HeaderPolicy.from_config(cfg),
        forms=TokenForms.from_config(cfg),
        overrides=MethodOverride(cfg.method_override_headers, cfg.method_override_params),
        rules=rules,
        token_sources=tuple(dict.fromkeys(src for p in cfg.providers for src in p.token_sources)),
        grace_header=cfg.identity_header_prefix + GRACE_SUFFIX,
        report_header=cfg.identity_header_prefix + REPORT_SUFFIX,
        claim_headers=cfg.all_claim_headers,
        loaded=loaded,
    )


def _cache_holds(old: Config, new: Config) -> bool:
    """Whether cached verifications stay right: an entry holds a provider index, the audience and issuer
    checks passed, its claim-header values and its rule verdicts. Times are checked on every hit."""
    return (
        old.providers == new.providers
        and old.rules == new.rules
        and old.all_claim_headers == new.all_claim_headers
        and (old.token_cache_size, old.token_cache_max_bytes) == (new.token_cache_size, new.token_cache_max_bytes)
    )


def rebuild(old: Sidecar, cfg: Config, loaded: Loaded) -> Sidecar:
    """The next state for a reloaded config. A provider whose key source is unchanged keeps its view (its
    keys, no fetch); a changed one gets a new view that starts from the old keys, so tokens keep verifying
    until the new source's keys arrive. The channel delivers key states to the new views from now on."""
    by_name = {v.provider.name: v for v in old.keys}
    keys = []
    for p in cfg.providers:
        view = by_name.get(p.name)
        if view is not None and same_key_source(view.provider, p, old.cfg.jwks, cfg.jwks):
            view.provider = p  # the same keys; the provider's other keys are the verifier's, from cfg
        else:
            seed, view = view, KeyView(p, cfg.jwks, old.clock, old.metrics)
            if seed is not None and seed.state.fetched_at is not None:
                view.install(seed.state)
            view.update_gauges()
        keys.append(view)
    old.channel.rewire(keys)
    cache = old.verifier.cache if _cache_holds(old.cfg, cfg) else None
    new = _assemble(cfg, old.clock, old.metrics, keys, old.channel, loaded, cache)
    new.upstream, new.tasks, new.draining = old.upstream, old.tasks, old.draining
    return new


async def apply_config(apps: list[web.Application], cfg: Config, loaded: Loaded) -> None:
    """Build the next state and swap it in: one reference per listener's app, swapped with no await between
    them. A request reads the state once, at its start, so requests in flight finish under the old one."""
    old = apps[0][STATE]
    new = rebuild(old, cfg, loaded)
    try:
        if isinstance(new.channel, LocalChannel):
            await new.channel.hub.reconfigure(cfg)  # a changed source fetches first; the old state serves meanwhile
        added = [v for v in new.keys if v.provider.name not in {k.provider.name for k in old.keys}]
        deadline = asyncio.get_running_loop().time() + 2 * cfg.jwks.fetch_timeout + 1
        while any(not v.usable() for v in added) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)  # a new provider: its first keys (by the pod's fetcher) before the swap
    except BaseException:
        old.channel.rewire(old.keys)  # the old state stays in force: its views get the key states again
        raise
    logging.getLogger().setLevel(cfg.log_level.upper())
    with warnings.catch_warnings():
        # aiohttp warns on any change to a started app's mapping; this one is the single intended change.
        warnings.simplefilter("ignore", DeprecationWarning)
        for app in apps:
            app[STATE] = new
            if (lean := app.get(LEAN)) is not None:
                lean.state = new


async def handle(request: web.Request) -> web.StreamResponse:
    """The aiohttp engine's proxy handler (the lean engine's is sidecar/http/server.py); both decide in gate.py."""
    s = request.app[STATE]
    m = s.metrics
    cfg = s.cfg
    origin = request.headers.get("Origin")
    cors_extra = s.cors.actual(origin) if s.cors.enabled else ()
    m.in_flight.inc()
    try:
        if s.cors.enabled and s.cors.is_preflight(request.method, request.headers):
            return web.Response(status=204, headers=CIMultiDict(preflight(s, request.headers)))
        path, _, raw_query = request.raw_path.partition("?")
        a = await admit(
            s,
            request,
            path,
            raw_query,
            request.headers,
            request.query,
            request.remote,
            request.scheme,
            request.host,
            request.body_exists,
        )
        assert s.upstream is not None
        if is_websocket(request.method, request.headers):
            return await proxy_websocket(
                request, s.upstream, cfg.upstream + a.path_qs, a.headers, a.expires_at, s.clock, m
            )
        return await forward(
            request, s.upstream, cfg.upstream, a.path_qs, a.headers, cors_extra, cfg.limits.max_body_bytes, m, a.scan
        )
    except errors.Rejection as r:
        if cfg.route_metrics and r.route:
            m.route_requests.labels(r.route, r.reason).inc()
        return reject(s, request, r, cors_extra)
    finally:
        m.in_flight.dec()


# --- app and lifecycle ----------------------------------------------------------------------------------


async def _resources(app: web.Application) -> AsyncIterator[None]:
    s = app[STATE]
    lim = s.cfg.limits
    s.upstream = upstream_session(lim.upstream_connect_timeout, lim.upstream_timeout)
    await s.channel.start()
    s.tasks.append(asyncio.create_task(_gauges(app), name="gauges"))
    yield
    for t in s.tasks:
        t.cancel()
    await asyncio.gather(*s.tasks, return_exceptions=True)
    s.tasks.clear()
    await s.channel.close()
    await s.upstream.close()


async def _gauges(app: web.Application) -> None:
    """Key-set gauges kept current without a scrape: with several workers a scrape reaches only one."""
    while True:
        app[STATE].refresh_gauges()  # the state in force: a reload swaps it
        await asyncio.sleep(1.0)


def proxy_app(state: Sidecar) -> web.Application:
    app = web.Application(client_max_size=0)
    app[STATE] = state
    app.router.add_route("*", "/{tail:.*}", handle)
    app.cleanup_ctx.append(_resources)
    return app


def _split(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    return host.strip("[]"), int(port)


async def _pods_first_keys(s: Sidecar) -> None:
    """One of several workers listens only once the keys process has told it the outcome of every provider's
    first fetch (bounded by the time such a fetch may take): a worker that opened earlier would refuse with
    503 a token its siblings, and the /readyz they answer, already accept."""
    if not isinstance(s.channel, SocketChannel):
        return  # one worker: nobody to disagree with
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(2 * s.cfg.jwks.fetch_timeout + 1):
            while not all(v.state.fetched_at is not None or v.state.last_error is not None for v in s.keys):
                await asyncio.sleep(0.02)


def _guarded(app: web.Application, cfg: Config, limits: ConnLimits, closed: OnClose) -> GuardedRunner:
    """An aiohttp listener for requests (the aiohttp proxy engine, the decision endpoint), guarded."""
    return GuardedRunner(
        app,
        limits,
        closed,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=cfg.limits.drain_timeout,
        # The guard refuses longer lines (414/431) before the parser sees them; these bound chunked trailers.
        max_field_size=cfg.limits.max_header_bytes,
        max_line_size=cfg.limits.max_header_bytes,
        max_headers=cfg.limits.max_headers,
    )


async def run_until_signal(
    state: Sidecar,
    stop: asyncio.Event | None = None,
    reuse_port: bool = False,
    started: Callable[[], None] = lambda: None,
    announce: bool = True,
    source: ConfigSource | None = None,
    counts_reloads: bool = True,
) -> None:
    """Serve until SIGTERM/SIGINT (or `stop`), then drain: not ready at once, stop accepting, finish in flight.
    With a `source` and `reload` on, a changed config file or SIGHUP applies the new config (sidecar.reload)."""
    cfg = state.cfg
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread, or Windows
            loop.add_signal_handler(sig, stop.set)
    # Head size, header count and slow clients are bounded per connection, before aiohttp's parser buffers.
    limits, closed = ConnLimits.from_config(cfg.limits), counting(state.metrics)
    admin_runner = GuardedRunner(
        admin_app(state, STATE), limits.for_admin(), closed, access_log=None, handle_signals=False
    )
    await admin_runner.setup()
    lean: LeanServer | None = None
    proxy_runner: GuardedRunner | None = None
    if cfg.proxy_engine == "aiohttp":
        proxy_runner = _guarded(proxy_app(state), cfg, limits, closed)
        await proxy_runner.setup()
    else:
        lean = await LeanServer.create(state, limits, closed)
    await _pods_first_keys(state)
    admin_host, admin_port = _split(cfg.admin_listen)
    host, port = _split(cfg.listen)
    if proxy_runner is not None:
        await web.TCPSite(proxy_runner, host, port, reuse_address=True, reuse_port=reuse_port, backlog=1024).start()
        proxy = proxy_runner.app
    else:
        assert lean is not None
        await lean.listen(host, port, reuse_port)
        proxy = lean.app
    decision_runner = None
    if cfg.decision is not None:
        decision_runner = _guarded(decision_app(state, STATE), cfg, limits, closed)
        await decision_runner.setup()
        d_host, d_port = _split(cfg.decision.listen)
        await web.TCPSite(decision_runner, d_host, d_port, reuse_address=True, reuse_port=reuse_port).start()
    apps = [proxy, *(r.app for r in (admin_runner, decision_runner) if r is not None)]
    reloader: Reloader | None = None
    if source is not None and cfg.reload:
        reloader = Reloader(source, cfg, functools.partial(apply_config, apps), state.metrics, counts_reloads)
        await reloader.first_look()  # a ready worker has seen the file as it is: a later edit is a reload
    # The admin listener opens last: a /readyz that answers means this worker's other listeners accept.
    await web.TCPSite(admin_runner, admin_host, admin_port, reuse_address=True, reuse_port=reuse_port).start()
    watching: asyncio.Task[None] | None = None
    if reloader is not None:
        watching = asyncio.create_task(reloader.run(), name="reload")
        hup: Callable[[], None] = reloader.hangup
    else:
        hup = functools.partial(log.warning, "SIGHUP ignored: reload is off")
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, hup)
    if announce:  # with several workers the parent says it once for the pod
        log.info(
            "listening",
            extra={"listen": cfg.listen, "admin": cfg.admin_listen, "upstream": cfg.upstream, "compiled": compiled()},
        )
    else:
        log.debug("worker serving", extra={"pid": os.getpid()})
    started()
    # Everything built so far lives as long as the process: keep the collector from rescanning it, and
    # collect the young generation less often (requests make short-lived, acyclic garbage).
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)
    await stop.wait()
    if watching is not None:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
    state = proxy[STATE]
    state.draining = True
    log.info("draining", extra={"timeout": cfg.limits.drain_timeout})
    if lean is not None:
        await lean.close(cfg.limits.drain_timeout)
    else:
        assert proxy_runner is not None
        await proxy_runner.cleanup()
    if decision_runner is not None:
        await decision_runner.cleanup()
    await admin_runner.cleanup()
    log.info("stopped")


def compiled() -> int:
    """How many of the sidecar's modules run as C extensions: a `SIDECAR_COMPILE=1` build, as in the image
    (docs/performance.md), compiles the request path's; a plain install runs them all as Python (0)."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    files = [getattr(m, "__file__", None) or "" for name, m in list(sys.modules.items()) if name.startswith("sidecar.")]
    return sum(1 for f in files if f.endswith(suffixes))


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` on uvloop where there is one (`uvloop.install()` is deprecated: a loop factory instead)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; Windows has none
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def _serve_one(
    cfg: Config, shared: str | None, started: Callable[[], None] = lambda: None, source: ConfigSource | None = None
) -> int:
    alone = shared is None

    async def main() -> None:
        state = build_state(cfg, shared=shared)
        await run_until_signal(
            state, reuse_port=not alone, started=started, announce=alone, source=source, counts_reloads=alone
        )

    run(main())
    return 0


def serve(cfg: Config, workers: int = 1, shared: str | None = None, source: ConfigSource | None = None) -> int:
    """Run the sidecar: one process, or `workers` processes sharing the port and the `shared` directory,
    with the pod's fetchers in one keys process beside them."""
    setup_logging(cfg.log_level)
    if isinstance(clock_from_environment(), OffsetClock):
        log.warning("test clock in use (SIDECAR_TEST_CLOCK_FILE): never set this outside tests")
    if workers == 1 or shared is None:
        return _serve_one(cfg, None, source=source)
    log.info(
        "listening",
        extra={
            "listen": cfg.listen,
            "admin": cfg.admin_listen,
            "upstream": cfg.upstream,
            "workers": workers,
            "compiled": compiled(),
        },
    )
    return run_workers(
        workers,
        shared,
        # a restarted child reads the config as it is now: reloads since the pod started are not lost
        lambda started: _serve_one(current(cfg, source), shared, started, source),
        lambda started: run_keys_process(current(cfg, source), shared, started, source=source),
    )
