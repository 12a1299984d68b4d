"""The admin port: liveness, readiness, Prometheus metrics, and key actions (loopback-only by default)."""

from __future__ import annotations

import ipaddress
import json
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from sidecar.metrics import exposition

if TYPE_CHECKING:
    from sidecar.app import Sidecar

log = logging.getLogger("sidecar.admin")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(data, indent=1), content_type="application/json")


async def apply_action(s: Sidecar, action: dict[str, Any]) -> dict[str, Any]:
    """Refresh or revoke, once for the pod, by its fetcher. Every worker gets the resulting key state (this
    one before the answer, the others within milliseconds) and drops the cached tokens of a revoked key."""
    index = next(i for i, pk in enumerate(s.keys) if pk.provider.name == action["provider"])
    pk = s.keys[index]
    if action["action"] == "refresh":
        return await pk.refresh()
    kid = action["kid"]
    purged = s.verifier.cache.forget_kid(index, kid)  # counted here; the new state drops them everywhere
    result = await pk.revoke(kid)
    return {"revoked": kid, **result, "cached_tokens_dropped": purged, "ok": "error" not in result}


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
        s.refresh_gauges()
        return web.Response(body=exposition(s.metrics), headers={"Content-Type": CONTENT_TYPE_LATEST})

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

    def _provider(request: web.Request) -> str:
        name = request.match_info["provider"]
        if not any(pk.provider.name == name for pk in request.app[key].keys):
            raise web.HTTPNotFound(
                text=json.dumps({"reason": "unknown_provider", "provider": name}), content_type="application/json"
            )
        return name

    async def show_keys(request: web.Request) -> web.Response:
        _allowed(request)
        return _json([pk.describe() for pk in request.app[key].keys])

    async def act(request: web.Request, action: dict[str, Any]) -> web.Response:
        s = request.app[key]
        result = await apply_action(s, action)
        return _json(result, 200 if result.get("ok", True) else 502)

    async def refresh(request: web.Request) -> web.Response:
        _allowed(request)
        return await act(request, {"action": "refresh", "provider": _provider(request)})

    async def revoke(request: web.Request) -> web.Response:
        _allowed(request)
        return await act(
            request, {"action": "revoke", "provider": _provider(request), "kid": request.match_info["kid"]}
        )

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/admin/keys", show_keys)
    app.router.add_post("/admin/keys/{provider}/refresh", refresh)
    app.router.add_post("/admin/keys/{provider}/{kid}/revoke", revoke)
    return app
