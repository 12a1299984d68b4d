"""The decision for one request: which route applies, which token, verified how, allowed or not.

Shared by the proxy (`app.handle`) and the decision endpoint (`decision.py`), so both answer alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from multidict import CIMultiDictProxy, MultiMapping

from sidecar import errors
from sidecar.extract import find_token
from sidecar.rules import CLAIM_MISMATCH, INSUFFICIENT_SCOPE, WRONG_PROVIDER, Route

if TYPE_CHECKING:
    from sidecar.state import Sidecar
    from sidecar.token_cache import VerifiedToken


@dataclass(slots=True)  # not frozen: built on every request, and a frozen init costs three times as much
class Allowed:
    route: Route
    identity: tuple[tuple[str, str], ...]  # headers for the app: claim headers and, in grace, the grace header
    verified: VerifiedToken | None
    # the token that was verified and where it was read (`token_sources` syntax): the one token form that may
    # reach the app; every other form is removed (scrub.py)
    token_form: tuple[str, str] | None = None  # (source, token)
    # report mode: the refusal this request escaped; it is forwarded without identity, with the reason
    reported: errors.Rejection | None = None

    # Written out: a dataclass's generated __init__ stays Python in the compiled build (~2,000 instructions).
    def __init__(
        self,
        route: Route,
        identity: tuple[tuple[str, str], ...],
        verified: VerifiedToken | None,
        token_form: tuple[str, str] | None = None,
        reported: errors.Rejection | None = None,
    ) -> None:
        self.route = route
        self.identity = identity
        self.verified = verified
        self.token_form = token_form
        self.reported = reported


def preflight(s: Sidecar, headers: CIMultiDictProxy[str]) -> tuple[tuple[str, str], ...]:
    """A real CORS preflight: the headers that allow it, or `CorsRejected`. Counted either way."""
    allowed = s.cors.preflight(headers)
    if allowed is None:
        s.metrics.cors_preflights.labels("rejected").inc()
        raise errors.CorsRejected(s.cors.refused_part(headers))
    s.metrics.cors_preflights.labels("allowed").inc()
    return allowed


async def authorize(
    s: Sidecar,
    method: str,
    canonical: str | None,
    headers: CIMultiDictProxy[str],
    query: MultiMapping[str],
    also: frozenset[str] = frozenset(),
) -> Allowed:
    """Allowed, or raises the `Rejection` that says why not. `also`: methods the app may act on instead
    (method overrides); the request must satisfy the route of each.

    One coroutine, suspended only when the token is not in the cache: the steps are plain functions, since
    a coroutine per step costs about a microsecond each on every request."""
    route = s.rules.route(method, canonical)
    for other in also:
        if other != method:
            route = _stricter(route, s.rules.route(other, canonical))
    try:
        if route.deny:
            raise errors.RouteDenied(f"{method} on this path is refused by rule {route.name!r}")
        if route.public:
            s.metrics.public_requests.inc()
        token = source = None
        try:
            token, source = find_token(headers, query, s.token_sources, s.cfg.limits.max_token_bytes, s.verifier.knows)
            started = s.clock.monotonic()
            verified, grace = s.verifier.cached(token) or await s.verifier.verify(token)
            s.metrics.validation_seconds.observe(s.clock.monotonic() - started)
            allowed = _judged(s, route, token, source, verified, grace)  # no `*`: compiled, that is a generic call
        except errors.Rejection as r:
            r.token, r.source = token, source
            if route.public:
                # A token on a public path is optional: verified, it adds identity; otherwise it never reaches
                # the app (scrub.py removes every unverified form), so an app can trust any token it receives.
                return Allowed(route, (), None)
            raise
        if not route.public:
            s.metrics.auth_success.inc()
        return allowed
    except errors.Rejection as r:
        r.route = route.name
        # Only the auth family (401/403/503 and multiple_tokens) is reportable: protocol errors are refused
        # in every mode, and they are raised outside this function anyway.
        if route.report and r.family == "auth":
            return Allowed(route, (), None, None, r)
        raise


def _stricter(a: Route, b: Route) -> Route:
    """One route holding a request to both: public only if both are, denied if either is."""
    if a == b:
        return a
    return Route(
        name=a.name,
        public=a.public and b.public,
        deny=a.deny or b.deny,
        rules=tuple(dict.fromkeys((*a.rules, *b.rules))),
        header_indices=a.header_indices,
        strip_authorization=a.strip_authorization or b.strip_authorization,
        report=a.report and b.report,
    )


def _judged(s: Sidecar, route: Route, token: str, source: str, verified: VerifiedToken, grace: float | None) -> Allowed:
    """A verified token held to its provider's sources and the route's requirements."""
    provider = s.cfg.providers[verified.provider]
    if source not in provider.token_sources:
        raise errors.WrongTokenSource(f"provider {provider.name!r} does not accept tokens from {source}")
    for i in route.rules:
        code = verified.verdicts[i]
        if code:
            rule = s.rules.rules[i]
            if code == INSUFFICIENT_SCOPE:
                needed = " ".join((*rule.scopes, *rule.scopes_any))
                raise errors.InsufficientScope(f"route {rule.name!r} needs scope {needed}", scope=needed)
            what = "a token from another provider" if code == WRONG_PROVIDER else "other claim values"
            assert code in (CLAIM_MISMATCH, WRONG_PROVIDER)
            raise errors.ClaimMismatch(f"route {rule.name!r} needs {what}")
    identity: tuple[tuple[str, str], ...] = ()
    if route.header_indices:
        pairs = s.claim_headers
        identity = tuple(
            (pairs[i][0], value) for i in route.header_indices if (value := verified.claim_values[i]) is not None
        )
    if grace is not None:
        s.metrics.grace_accepted.inc()
        identity = (*identity, (s.grace_header, str(int(grace))))
    return Allowed(route, identity, verified, (source, token))
