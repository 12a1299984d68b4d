"""The admin port: liveness, readiness, Prometheus metrics, and key actions (loopback-only by default)."""

from __future__ import annotations

import ipaddress
import json
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from sidecar.app import Sidecar


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(data, indent=1), content_type="application/json")


def admin_app(state: Sidecar, key: web.AppKey[Sidecar]) -> web.Application:
    app = web.Application()
    app[key] = state

    async def healthz(request: web.Request) -> web.Response:
        return _json({"status": "alive"})

    async def readyz(request: web.Request) -> web.Response:
        s = request.app[key]
        ready = s.ready()
        body = {
            "ready": ready,
            "draining": s.draining,
            "providers": {pk.provider.name: {"usable": pk.usable(), "last_error": pk.last_error} for pk in s.keys},
        }
        return _json(body, 200 if ready else 503)

    async def metrics(request: web.Request) -> web.Response:
        s = request.app[key]
        for pk in s.keys:
            pk.update_gauges()
        s.metrics.ready.set(1 if s.ready() else 0)
        return web.Response(body=generate_latest(s.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _allowed(request: web.Request) -> None:
        mode = request.app[key].cfg.admin_actions
        if mode == "on":
            return
        if mode == "loopback":
            try:
                if request.remote and ipaddress.ip_address(request.remote).is_loopback:
                    return
            except ValueError:
                pass
        raise web.HTTPForbidden(
            text=json.dumps({"reason": "admin_actions_disabled", "mode": mode}),
            content_type="application/json",
        )

    def _provider(request: web.Request) -> Any:
        name = request.match_info["provider"]
        for pk in request.app[key].keys:
            if pk.provider.name == name:
                return pk
        raise web.HTTPNotFound(
            text=json.dumps({"reason": "unknown_provider", "provider": name}), content_type="application/json"
        )

    async def show_keys(request: web.Request) -> web.Response:
        _allowed(request)
        return _json([pk.describe() for pk in request.app[key].keys])

    async def refresh(request: web.Request) -> web.Response:
        _allowed(request)
        pk = _provider(request)
        ok = await pk.refresh()
        return _json({"refreshed": ok, **pk.describe()}, 200 if ok else 502)

    async def revoke(request: web.Request) -> web.Response:
        _allowed(request)
        pk = _provider(request)
        s = request.app[key]
        kid = request.match_info["kid"]
        found = pk.keys.revoke(kid)
        index = s.keys.index(pk)
        purged = s.verifier.cache.forget_kid(index, kid)
        return _json({"revoked": kid, "was_trusted": found, "cached_tokens_dropped": purged})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/admin/keys", show_keys)
    app.router.add_post("/admin/keys/{provider}/refresh", refresh)
    app.router.add_post("/admin/keys/{provider}/{kid}/revoke", revoke)
    return app
