"""The closed list of reasons the sidecar answers a request itself.

Every reason is one exception class carrying its HTTP status, its RFC 6750 error code and its metric
label. Responses, metrics, logs, the README table and the tests all read this list; nothing else in the
package invents a reason string.
"""

from __future__ import annotations

from typing import ClassVar


class Rejection(Exception):
    """A request the sidecar answers itself instead of forwarding."""

    status: ClassVar[int]
    reason: ClassVar[str]  # the metric label and the `reason` field of the JSON body
    error: ClassVar[str | None]  # RFC 6750 `error`; None means no `error` attribute is sent
    family: ClassVar[str]  # which counter it lands in: "auth", "request" or "upstream"
    summary: ClassVar[str]  # one line for the README table

    def __init__(self, description: str | None = None) -> None:
        super().__init__(description or self.summary)
        self.description = description or self.summary
        # Set where a token was found: the log line derives kid, iss and a fingerprint from it (never
        # logging the token), and a public path removes an optional token that failed from its source.
        self.token: str | None = None
        self.source: str | None = None
        self.route: str | None = None  # the route rule that applied, for sidecar_route_requests_total
        self.context: dict[str, object] = {}  # kid/alg/iss already known where it was raised, for the log line


# --- token problems: 401 (RFC 6750 invalid_token unless no token was sent) ---------------------------


class AuthFailure(Rejection):
    status = 401
    error: ClassVar[str | None] = "invalid_token"
    family = "auth"


class MissingToken(AuthFailure):
    reason = "missing_token"
    error = None  # RFC 6750 §3.1: no error code when the request carried no credentials
    summary = "no bearer token in the request"


class Malformed(AuthFailure):
    reason = "malformed"
    summary = "the token is not a well-formed JWS compact serialisation"


class UnsupportedAlg(AuthFailure):
    reason = "unsupported_alg"
    summary = "the token's alg is not allowed for this provider or does not fit the key"


class UnknownKid(AuthFailure):
    reason = "unknown_kid"
    summary = "no trusted key has the token's kid (without kid: none of the candidate keys verifies it)"


class BadSignature(AuthFailure):
    reason = "bad_signature"
    summary = "the signature does not verify with the provider's key"


class Expired(AuthFailure):
    reason = "expired"
    summary = "the token expired (beyond leeway and grace)"


class NotYetValid(AuthFailure):
    reason = "not_yet_valid"
    summary = "nbf is in the future beyond the leeway"


class IssuedInFuture(AuthFailure):
    reason = "issued_in_future"
    summary = "iat is in the future beyond the leeway (check this host's clock)"


class IssuerMismatch(AuthFailure):
    reason = "issuer_mismatch"
    summary = "iss is not a configured issuer"


class AudienceMismatch(AuthFailure):
    reason = "audience_mismatch"
    summary = "aud names none of the accepted audiences"


class MissingClaim(AuthFailure):
    reason = "missing_claim"
    summary = "a required claim is absent"


class InvalidClaim(AuthFailure):
    reason = "invalid_claim"
    summary = "a registered claim has the wrong JSON type or value"


class TokenTooLarge(AuthFailure):
    reason = "token_too_large"
    summary = "the token is longer than limits.max_token_bytes"


class MultipleTokens(AuthFailure):
    status = 400
    error = "invalid_request"
    reason = "multiple_tokens"
    summary = "more than one token in the request (RFC 6750 section 2)"


class WrongTokenSource(AuthFailure):
    reason = "wrong_token_source"
    summary = "the token came from a place (cookie, header, query) its provider does not accept"


class KeysUnavailable(AuthFailure):
    status = 503
    error = None
    reason = "keys_unavailable"
    summary = "no usable keys for the provider yet (or keys older than jwks.max_stale)"


# --- valid token, not enough for this route: 403 (RFC 6750 insufficient_scope) -------------------------


class Forbidden(AuthFailure):
    status = 403
    error: ClassVar[str | None] = "insufficient_scope"

    def __init__(self, description: str | None = None, scope: str | None = None) -> None:
        super().__init__(description)
        self.scope = scope  # RFC 6750 §3: the scope the resource needs


class InsufficientScope(Forbidden):
    reason = "insufficient_scope"
    summary = "the token lacks a scope the route requires"


class ClaimMismatch(Forbidden):
    reason = "claim_mismatch"
    summary = "a claim, the client (azp/client_id) or the provider is not one the route accepts"


class RouteDenied(Forbidden):
    error = None
    reason = "route_denied"
    summary = "a rule (or unmatched: deny) refuses this method and path to everyone"


# --- malformed HTTP requests --------------------------------------------------------------------------


class RequestRejected(Rejection):
    family = "request"
    error = None


class BadRequest(RequestRejected):
    status = 400
    reason = "bad_request"
    summary = "the HTTP request is malformed"


class HeadersTooLarge(RequestRejected):
    status = 431
    reason = "headers_too_large"
    summary = "a header, the head or the header count exceeds limits.max_header*"


class BodyTooLarge(RequestRejected):
    status = 413
    reason = "body_too_large"
    summary = "the body exceeds limits.max_body_bytes"


class CorsRejected(RequestRejected):
    status = 403
    reason = "cors_rejected"
    summary = "a CORS preflight from an origin, method or header the policy does not allow"


class AmbiguousTarget(RequestRejected):
    status = 400
    reason = "ambiguous_target"
    summary = "decision mode: app routers could read the original target more than one way"


class ConflictingForwarded(RequestRejected):
    status = 400
    reason = "conflicting_forwarded"
    summary = "decision mode: forwarded method/URI headers repeat, disagree, lack their pair, or X-Original-URL is sent"


class RequestLineTooLong(RequestRejected):
    status = 414
    reason = "request_line_too_long"
    summary = "the request line exceeds limits.max_header_bytes (answered before it is buffered)"


# --- the upstream app ---------------------------------------------------------------------------------


class UpstreamFailure(Rejection):
    family = "upstream"
    error = None


class UpstreamUnavailable(UpstreamFailure):
    status = 502
    reason = "upstream_unavailable"
    summary = "the app refused the connection or broke it"


class UpstreamTimeout(UpstreamFailure):
    status = 504
    reason = "upstream_timeout"
    summary = "the app did not answer within limits.upstream_timeout"


# --- added for key identity and token lifetime (issue 9) -------------------------------------------------


class LifetimeTooLong(AuthFailure):
    reason = "lifetime_too_long"
    summary = "exp is further from iat (or from now, without iat) than the provider's max_token_lifetime"


def all_reasons() -> list[type[Rejection]]:
    """Every concrete reason, in declaration order (the README table and the metrics use this)."""
    found: list[type[Rejection]] = []

    def walk(cls: type[Rejection]) -> None:
        for sub in cls.__subclasses__():
            if "reason" in sub.__dict__:
                found.append(sub)
            walk(sub)

    walk(Rejection)
    return found


AUTH_REASONS: tuple[str, ...] = tuple(c.reason for c in all_reasons() if c.family == "auth")
REQUEST_REASONS: tuple[str, ...] = tuple(c.reason for c in all_reasons() if c.family == "request")
UPSTREAM_REASONS: tuple[str, ...] = tuple(c.reason for c in all_reasons() if c.family == "upstream")
