"""Finding exactly one bearer token in a request (RFC 6750 §2), or saying precisely why not."""

from __future__ import annotations

from multidict import CIMultiDictProxy, MultiMapping

from sidecar.errors import Malformed, MissingToken, MultipleTokens, TokenTooLarge

_TOKEN68 = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=")


def bearer_token(headers: CIMultiDictProxy[str], query: MultiMapping[str], max_bytes: int) -> str:
    """The request's one bearer token. A token also in the query or sent twice is `multiple_tokens`."""
    values = headers.getall("Authorization", ())
    if len(values) > 1:
        raise MultipleTokens("more than one Authorization header")
    in_query = "access_token" in query
    if not values:
        if in_query:
            # RFC 6750 §2.3 is off by default: URIs end up in logs, so tokens there are refused.
            raise MissingToken("tokens in the query string are not accepted; use the Authorization header")
        raise MissingToken()
    if in_query:
        raise MultipleTokens("a token in both the Authorization header and the query string")
    scheme, _, token = values[0].strip().partition(" ")
    if scheme.lower() != "bearer":
        raise MissingToken("Authorization scheme is not Bearer")
    token = token.strip(" ")
    if not token:
        raise Malformed("empty bearer token")
    if len(token) > max_bytes:
        raise TokenTooLarge(f"token is {len(token)} bytes, limit {max_bytes}")
    if " " in token or not _TOKEN68.issuperset(token):
        raise Malformed("the bearer token has characters outside RFC 6750 token68")
    return token
