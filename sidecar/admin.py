"""The admin port: liveness, readiness, Prometheus metrics, and key actions (loopback-only by default).

Probes and metrics answer anyone: kubelet and Prometheus send the pod IP (or a Service name) as `Host`, and
what they read is not secret. `/admin/*` is also kept from browsers, which can reach a loopback listener
from any page: a cross-site page (CSRF) by a form or `fetch`, a DNS-rebinding page by making its own name
resolve to 127.0.0.1. So `Host` must name this listener (a loopback name, the address the connection
arrived at, the configured listen host or `admin_hosts`), a browser's `Origin` and `Sec-Fetch-Site` must
say same-origin, and an action must be a request no page can send without a CORS preflight, which this
port never grants: `Content-Type: application/json` or an `X-Sidecar-Admin` header.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from sidecar.config import Config
from sidecar.metrics import exposition

if TYPE_CHECKING:
    from sidecar.state import Sidecar

log = logging.getLogger("sidecar.admin")
ADMIN_HEADER = "X-Sidecar-Admin"
_LOOPBACK_NAMES = frozenset({"localhost"})
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})


def _host_name(host: str) -> str | None:
    """The name in a `Host` value, lowercased, without port or brackets; None when it is malformed."""
    host = host.strip().lower()
    if host.startswith("["):
        name, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not (rest[:1] == ":" and rest[1:].isdigit())):
            return None
        return name
    name, colon, port = host.partition(":")
    if (colon and not port.isdigit()) or not name:
        return None
    return name.removesuffix(".")


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _names_this_listener(request: web.Request, cfg: Config) -> bool:
    hosts = request.headers.getall("Host", [])
    name = _host_name(hosts[0]) if len(hosts) == 1 else None
    if name is None:
        return False
    ip = _ip(name)
    if name in _LOOPBACK_NAMES or (ip is not None and ip.is_loopback) or name in cfg.admin_hosts:
        return True
    listen_host = cfg.admin_listen.rpartition(":")[0].strip("[]").lower()
    if listen_host not in _WILDCARDS and (name == listen_host or (ip is not None and ip == _ip(listen_host))):
        return True
    # kubelet and an operator's curl to the pod IP name the address the connection arrived at; a rebinding
    # page names its own domain, whatever address that resolved to
    sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
    local = _ip(str(sockname[0])) if isinstance(sockname, tuple) and sockname else None
    return ip is not None and ip == local


def _same_origin(request: web.Request, origin: str) -> bool:
    host = request.headers.get("Host", "").strip().lower()
    mine = {f"http://{host}", f"https://{host}"}
    if host.endswith(":80"):
        mine.add("http://" + host.removesuffix(":80"))
    if host.endswith(":443"):
        mine.add("https://" + host.removesuffix(":443"))
    return origin.strip().lower() in mine


def browser_refusal(request: web.Request, cfg: Config, action: bool) -> tuple[str, str] | None:
    """(reason, description) when `request` may come from a browser page that is not this port's own."""
    if not _names_this_listener(request, cfg):
        return "foreign_host", "Host must name this listener or a loopback name (DNS rebinding guard)"
    origins = request.headers.getall("Origin", [])
    if len(origins) > 1 or (origins and not _same_origin(request, origins[0])):
        return "cross_origin", "a request from another origin (or Origin: null) may not use /admin/*"
    site = request.headers.getall("Sec-Fetch-Site", [])
    if len(site) > 1 or (site and site[0].strip().lower() not in ("same-origin", "none")):
        return "cross_site", "Sec-Fetch-Site says another site sent this request"
    if action:
        media = request.headers.get("Content-Type", "").partition(";")[0].strip().lower()
        if media != "application/json" and ADMIN_HEADER not in request.headers:
            return (
                "simple_request",
                f"admin actions need Content-Type: application/json or an {ADMIN_HEADER} header",
            )
    return None


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
    purged = s.verifier.forget(index, kid)  # kid or RFC 7638 thumbprint; the new state drops them everywhere
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
            "pid": os.getpid(),  # which worker answered: each has its own view until a reload reaches it
            "providers": {pk.provider.name: {"usable": pk.usable(), "last_error": pk.last_error} for pk in s.keys},
        }
        return _json(body, 200 if ready else 503)

    async def metrics(request: web.Request) -> web.Response:
        s = request.app[key]
        s.refresh_gauges()
        return web.Response(body=exposition(s.metrics), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _allowed(request: web.Request, action: bool = True) -> None:
        cfg = request.app[key].cfg
        mode = cfg.admin_actions
        reachable = mode == "on"
        if mode == "loopback":
            reachable = (peer := _ip(request.remote or "")) is not None and peer.is_loopback
        if not reachable:
            raise web.HTTPForbidden(
                text=json.dumps({"reason": "admin_actions_disabled", "mode": mode}),
                content_type="application/json",
            )
        refused = browser_refusal(request, cfg, action)
        if refused is not None:
            reason, description = refused
            log.warning(
                "admin request refused",
                extra={"reason": reason, "method": request.method, "path": request.path[:256], "peer": request.remote},
            )
            raise web.HTTPForbidden(
                text=json.dumps({"reason": reason, "description": description}), content_type="application/json"
            )

    def _provider(request: web.Request) -> str:
        name = request.match_info["provider"]
        if not any(pk.provider.name == name for pk in request.app[key].keys):
            raise web.HTTPNotFound(
                text=json.dumps({"reason": "unknown_provider", "provider": name}), content_type="application/json"
            )
        return name

    async def show_keys(request: web.Request) -> web.Response:
        _allowed(request, action=False)
        return _json([pk.describe() for pk in request.app[key].keys])

    async def show_config(request: web.Request) -> web.Response:
        _allowed(request, action=False)
        s = request.app[key]
        return _json({**s.loaded.describe(), "reload": s.cfg.reload, "config": s.cfg.effective()})

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

    async def explain(request: web.Request) -> web.Response:
        # The body holds a token: it is read here and answered, never logged (nor is any part of it).
        _allowed(request)
        from sidecar.explain import explain_request

        return await explain_request(request.app[key], request)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/admin/keys", show_keys)
    app.router.add_get("/admin/config", show_config)
    app.router.add_post("/admin/keys/{provider}/refresh", refresh)
    app.router.add_post("/admin/keys/{provider}/{kid}/revoke", revoke)
    app.router.add_post("/admin/explain", explain)
    return app
