"""What both proxy engines do with a request head before any byte goes to the app: one code path, so the
aiohttp engine and the lean one (sidecar/http/) cannot judge a request differently.

admit(): normalised path → authorize (route rule, one token, verify, route requirements) → header hygiene
(scrub every token form but the verified one, identity headers, X-Forwarded-*) → the target for the app,
and what the body and a WebSocket still need. Any refusal is raised as a `Rejection`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from multidict import CIMultiDict, CIMultiDictProxy, MultiMapping

from sidecar import errors
from sidecar.authorize import Allowed, authorize
from sidecar.formbody import FormScan, check_encoding, content_type, form_kind
from sidecar.headers import CONNECTION, HOST, UPGRADE, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO
from sidecar.responses import report

if TYPE_CHECKING:
    from sidecar.state import Sidecar


class Seen(Protocol):
    """What the log line of a refusal names: aiohttp's request and the lean engine's both have these."""

    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def remote(self) -> str | None: ...


@dataclass(slots=True)
class Admitted:
    allowed: Allowed
    path_qs: str  # the target for the app: the canonical path (re-encoded) and the scrubbed query
    headers: CIMultiDict[str]  # what the app receives, Host and X-Forwarded-* included
    scan: FormScan | None  # a form body to read in flight (formbody.py)
    expires_at: float | None  # a WebSocket opened now must close at this wall time

    # Written out: a dataclass's generated __init__ stays Python in the compiled build (~2,000 instructions).
    def __init__(
        self,
        allowed: Allowed,
        path_qs: str,
        headers: CIMultiDict[str],
        scan: FormScan | None,
        expires_at: float | None,
    ) -> None:
        self.allowed = allowed
        self.path_qs = path_qs
        self.headers = headers
        self.scan = scan
        self.expires_at = expires_at


def is_websocket(method: str, headers: CIMultiDictProxy[str]) -> bool:
    return (
        method == "GET"
        and headers.get(UPGRADE, "").lower() == "websocket"
        and "upgrade" in headers.get(CONNECTION, "").lower()
    )


async def admit(
    s: Sidecar,
    seen: Seen,
    path: str,
    raw_query: str,
    headers: CIMultiDictProxy[str],
    query: MultiMapping[str],
    peer: str | None,
    scheme: str,
    host: str,
    has_body: bool,
) -> Admitted:
    method = seen.method
    if not path.startswith("/"):
        raise errors.BadRequest("the request target must be an absolute path")
    canonical, target = s.rules.reading(path)
    also = s.overrides.methods(headers, raw_query)
    allowed = await authorize(s, method, canonical, headers, query, also)
    out = s.headers.forwardable(headers)
    if allowed.reported is None:
        # the verified token, in the form it was read, is the only token form the app may see
        kept = None if allowed.route.strip_authorization else allowed.token_form
        raw_query = s.forms.scrub(out, raw_query, kept)
        for name, value in allowed.identity:
            out[name] = value
        if s.cfg.route_metrics:
            s.metrics.route_requests.labels(allowed.route.name, "allowed").inc()
    else:
        # report mode: the app gets what it got before the sidecar (its tokens as sent, unless the route
        # strips them) plus the verdict, and no identity from a token that failed
        report(s, seen, allowed.reported)
        if allowed.route.strip_authorization:
            raw_query = s.forms.scrub(out, raw_query, None)
        out[s.report_header] = allowed.reported.reason
    client = peer or "unknown"
    prior = headers.getall(X_FORWARDED_FOR, None)
    out[X_FORWARDED_FOR] = ", ".join((*prior, client)) if prior else client
    # An ingress or load balancer in front already set these for the original client: keep theirs.
    out.setdefault(X_FORWARDED_PROTO, scheme)
    out.setdefault(X_FORWARDED_HOST, host)
    out[HOST] = host
    path_qs = target + "?" + raw_query if raw_query else target
    scan = None
    if has_body and form_kind(ctype := content_type(headers)):

        async def judge(more: frozenset[str]) -> None:
            late = await authorize(s, method, canonical, headers, query, also | more)
            if late.reported is not None and allowed.reported is None:
                report(s, seen, late.reported)  # the head has gone: counted and logged, no header

        check_encoding(headers)
        scan = FormScan(ctype, s.forms.params, s.overrides, judge)
    expires_at = None
    verified = allowed.verified
    if s.cfg.websocket_close_on_expiry and verified is not None and verified.exp is not None:
        # when the token stops being accepted
        expires_at = verified.exp + s.cfg.leeway + s.cfg.expired_grace
    return Admitted(allowed, path_qs, out, scan, expires_at)
