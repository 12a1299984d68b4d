"""The decision endpoint: answer a gateway's auth subrequest instead of proxying.

nginx `auth_request` sends the original method and URI as `X-Original-Method` / `X-Original-URI`; Traefik
`forwardAuth` as `X-Forwarded-Method` / `X-Forwarded-Uri`; Envoy's HTTP `ext_authz` keeps the method and
puts the original path after its `path_prefix`. Those headers are believed only from
`decision.trusted_sources`: from anyone else the subrequest is judged as what it literally is, so a
client cannot claim to be a preflight or a public path. 200 carries the identity headers for the gateway
to copy; 401/403/503 carry the reason, as the proxy would.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from aiohttp import web
from multidict import CIMultiDict, MultiDict

from sidecar import errors
from sidecar.authorize import authorize, preflight
from sidecar.config import Decision
from sidecar.responses import reject
from sidecar.rules import normalise

if TYPE_CHECKING:
    from sidecar.app import Sidecar

_ORIGINAL = (("X-Original-Method", "X-Original-URI"), ("X-Forwarded-Method", "X-Forwarded-Uri"))


def _trust(cfg: Decision) -> Callable[[str | None], bool]:
    networks = [ipaddress.ip_network(c, strict=False) for c in cfg.trusted_sources]

    def trusted(peer: str | None) -> bool:
        try:
            address = ipaddress.ip_address(peer or "")
        except ValueError:
            return False
        return any(address in n for n in networks)

    return trusted


def original_request(request: web.Request, cfg: Decision, trusted: bool) -> tuple[str, str]:
    """The method and URI the gateway is asking about."""
    if trusted:
        for method_header, uri_header in _ORIGINAL:
            uri = request.headers.get(uri_header)
            if uri is not None:
                return request.headers.get(method_header, "GET").upper(), uri
    raw = request.raw_path
    if raw == cfg.envoy_prefix or raw.startswith(cfg.envoy_prefix + "/") or raw.startswith(cfg.envoy_prefix + "?"):
        return request.method, raw[len(cfg.envoy_prefix) :] or "/"
    return request.method, raw


def decision_app(state: Sidecar, key: web.AppKey[Sidecar]) -> web.Application:
    assert state.cfg.decision is not None
    cfg = state.cfg.decision
    trusted = _trust(cfg)

    async def decide(request: web.Request) -> web.StreamResponse:
        s = request.app[key]
        method, uri = original_request(request, cfg, trusted(request.remote))
        origin = request.headers.get("Origin")
        cors_extra = s.cors.actual(origin) if s.cors.enabled else ()
        s.metrics.in_flight.inc()
        try:
            if s.cors.enabled and s.cors.is_preflight(method, request.headers):
                return web.Response(status=200, headers=CIMultiDict(preflight(s, request.headers)))
            path, _, query = uri.partition("?")
            if not path.startswith("/"):
                raise errors.BadRequest("the original URI must be an absolute path")
            allowed = await authorize(s, method, normalise(path), request.headers, MultiDict(parse_qsl(query)))
            out = CIMultiDict(allowed.identity)
            for name, value in cors_extra:
                out.add(name, value)
            return web.Response(status=200, headers=out)
        except errors.Rejection as r:
            return reject(s, request, r, cors_extra)
        finally:
            s.metrics.in_flight.dec()

    app = web.Application()
    app[key] = state
    app.router.add_route("*", "/{tail:.*}", decide)
    return app
