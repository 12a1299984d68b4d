"""The decision endpoint: answer a gateway's auth subrequest instead of proxying.

nginx `auth_request` sends the original method and URI as `X-Original-Method` / `X-Original-URI`; Traefik
`forwardAuth` as `X-Forwarded-Method` / `X-Forwarded-Uri`; Envoy's HTTP `ext_authz` keeps the method and
puts the original path after its `path_prefix`. Those headers are believed only from
`decision.trusted_sources`, and only when they tell one story: a copy repeated, two names that disagree, or
a URI without its method is `ConflictingForwarded`, since a gateway that passes client headers on
(Traefik does by default) would otherwise let the client pick what is judged. From anyone else the request
is judged as what it literally is.

The target is judged only when app routers read it one way (`target.py`). 200 carries the identity headers
for the gateway to copy. Every refusal carries its reason in `X-Auth-Reason`; nginx turns any status but
2xx/401/403 into a 500, so a request in nginx's form (`X-Original-URI`) gets 403 where the proxy would say
400. In report mode a refusal for the token is a 200 with `X-Auth-Report: <reason>` and no identity headers.
An auth subrequest about a CORS preflight is judged like any OPTIONS request: a 2xx would send an
unauthenticated OPTIONS on to the app. Gateways route real preflights to this listener directly instead,
and get the sidecar's CORS answer (docs/gateways.md).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict

from sidecar import errors
from sidecar.authorize import authorize, preflight
from sidecar.config import Decision
from sidecar.responses import reject, report
from sidecar.rules import RuleSet
from sidecar.target import Readings

if TYPE_CHECKING:
    from sidecar.state import Sidecar

_ORIGINAL = (("X-Original-Method", "X-Original-URI"), ("X-Forwarded-Method", "X-Forwarded-Uri"))
NGINX_URI = "X-Original-URI"
REASON_HEADER = "X-Auth-Reason"
NGINX_STATUSES = frozenset({401, 403, 503})  # 503 needs the error_page of docs/gateways.md to stay a 503
_METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §9.1: a method is a token
# Symfony, Laravel and IIS URL Rewrite route by these instead of the target; CGI maps `_` to `-`.
_REROUTING = frozenset({"x-original-url", "x-rewrite-url"})


def _trust(cfg: Decision) -> Callable[[str | None], bool]:
    networks = [ipaddress.ip_network(c, strict=False) for c in cfg.trusted_sources]

    def trusted(peer: str | None) -> bool:
        try:
            address = ipaddress.ip_address(peer or "")
        except ValueError:
            return False
        return any(address in n for n in networks)

    return trusted


@dataclass(frozen=True, slots=True)
class Original:
    method: str
    target: str
    subrequest: bool  # a gateway's auth subrequest (forwarded headers, Envoy prefix), not a request sent here


def forwarded(headers: CIMultiDictProxy[str]) -> tuple[str, str] | None:
    """The method and URI named in forwarded headers, None when there are none; `ConflictingForwarded`
    when they repeat, disagree, or a URI comes without its method (guessing GET would skip method rules)."""
    methods: list[str] = []
    uris: list[str] = []
    for method_header, uri_header in _ORIGINAL:
        m, u = headers.getall(method_header, []), headers.getall(uri_header, [])
        for name, values in ((method_header, m), (uri_header, u)):
            if len(values) > 1:
                raise errors.ConflictingForwarded(f"{name} appears {len(values)} times")
        if bool(m) != bool(u):
            present, absent = (method_header, uri_header) if m else (uri_header, method_header)
            raise errors.ConflictingForwarded(f"{present} without {absent}")
        methods += m
        uris += u
    if not uris:
        return None
    if len(set(uris)) > 1:
        raise errors.ConflictingForwarded("X-Original-URI and X-Forwarded-Uri name different targets")
    if len(set(methods)) > 1:
        raise errors.ConflictingForwarded("X-Original-Method and X-Forwarded-Method name different methods")
    if not _METHOD.fullmatch(methods[0]):
        raise errors.ConflictingForwarded("the forwarded method is not an HTTP method token")
    return methods[0].upper(), uris[0]


def _envoy_target(raw: str, prefix: str) -> str | None:
    if raw == prefix or raw.startswith(prefix + "/") or raw.startswith(prefix + "?"):
        return raw[len(prefix) :] or "/"
    return None


def original_request(request: web.Request, cfg: Decision, trusted: bool) -> Original:
    """The method and target the gateway is asking about."""
    for name in request.headers:
        if name.lower().replace("_", "-") in _REROUTING:
            raise errors.ConflictingForwarded(f"{name[:40]}: some frameworks route by it instead of the target")
    envoy = _envoy_target(request.raw_path, cfg.envoy_prefix)
    if trusted:
        named = forwarded(request.headers)
        if named is not None:
            if envoy is not None and named != (request.method.upper(), envoy):
                raise errors.ConflictingForwarded("the forwarded headers and the Envoy path disagree")
            return Original(*named, subrequest=True)
    if envoy is not None:
        return Original(request.method, envoy, subrequest=True)
    return Original(request.method, request.raw_path, subrequest=False)


def decision_app(state: Sidecar, key: web.AppKey[Sidecar]) -> web.Application:
    assert state.cfg.decision is not None
    cfg = state.cfg.decision
    trusted = _trust(cfg)
    readings = Readings(state.rules, RuleSet(state.cfg, fold_case=True))

    async def decide(request: web.Request) -> web.StreamResponse:
        s = request.app[key]
        origin = request.headers.get("Origin")
        cors_extra = s.cors.actual(origin) if s.cors.enabled else ()
        s.metrics.in_flight.inc()
        try:
            original = original_request(request, cfg, trusted(request.remote))
            if not original.subrequest and s.cors.enabled and s.cors.is_preflight(original.method, request.headers):
                return web.Response(status=204, headers=CIMultiDict(preflight(s, request.headers)))
            path, query = readings.single(original.method, original.target)
            # the gateway passes the client's headers on, so override headers and `_method` in the query are
            # judged as in proxy mode; a form body's `_method` never reaches this listener (see gateways.md)
            also = s.overrides.methods(request.headers, query)
            allowed = await authorize(s, original.method, path, request.headers, MultiDict(parse_qsl(query)), also)
            out = CIMultiDict(allowed.identity)
            if allowed.reported is not None:
                # report mode: 200 so the gateway forwards, with the verdict for it to copy to the app
                report(s, request, allowed.reported)
                out[s.report_header] = allowed.reported.reason
            for name, value in cors_extra:
                out.add(name, value)
            return web.Response(status=200, headers=out)
        except errors.Rejection as r:
            # nginx's auth_request passes 401/403 on and turns anything else into a 500
            nginx = NGINX_URI in request.headers
            status = 403 if nginx and r.status not in NGINX_STATUSES else r.status
            resp = reject(s, request, r, cors_extra, status)
            resp.headers[REASON_HEADER] = r.reason
            return resp
        finally:
            s.metrics.in_flight.dec()

    app = web.Application()
    app[key] = state
    app.router.add_route("*", "/{tail:.*}", decide)
    return app
