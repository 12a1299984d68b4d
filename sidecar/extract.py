"""Finding exactly one token in a request (RFC 6750 §2), or saying precisely why not.

Sources are the union of every provider's `token_sources`: `header` (Authorization: Bearer), `header:NAME`
(the raw token in another header), `cookie:NAME`, `query:NAME`. A token in two places, or twice in one,
is `multiple_tokens`; which provider may use which source is checked once the token's issuer is known.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from http.cookies import CookieError, SimpleCookie
from typing import Final

from multidict import CIMultiDictProxy, MultiMapping

from sidecar.errors import Malformed, MissingToken, MultipleTokens, TokenTooLarge
from sidecar.headers import AUTHORIZATION, COOKIE

# RFC 6750 b64token: these characters, then any `=`. Checking a 600-byte token costs 12,000-15,000 machine
# instructions whichever way (compiled pattern, bytes.translate), 5-7 % of a whole proxied request: a token
# the verifier already holds is known to have passed it (find_token's `known`).
_B64CHARS: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/"
BEARER = "header"
_DEFAULT = (BEARER,)


# `Bearer` followed by anything but a space: TAB, NBSP, `,`... Not a bearer token by RFC 9110 §11.4, yet an
# app that splits on any whitespace reads one there: it is refused here and never forwarded (scrub.py).
_BEARERISH = re.compile(r"\s*bearer(?![!#$%&'*+.^_`|~0-9a-z-])", re.IGNORECASE)


def _bearer(values: list[str]) -> list[str]:
    found = []
    for value in values:
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == "bearer":
            found.append(token.strip(" "))
    return found


def _cookies(headers: CIMultiDictProxy[str], name: str) -> list[str]:
    found = []
    for header in headers.getall(COOKIE, ()):
        for part in header.split(";"):
            key, eq, value = part.partition("=")
            # Starlette, Django, Go, Express and Werkzeug all trim the name and value: `session = x` is `session`
            key, value = key.strip(), value.strip()
            if eq and key == name:
                try:  # a quoted cookie value is unquoted the way browsers and frameworks read it
                    jar: SimpleCookie = SimpleCookie()
                    jar.load(f"{key}={value}")
                    found.append(jar[key].value)
                except (CookieError, KeyError):
                    found.append(value)
    return found


def _unknown(token: str) -> bool:
    return False


def find_token(
    headers: CIMultiDictProxy[str],
    query: MultiMapping[str],
    sources: tuple[str, ...],
    max_bytes: int,
    known: Callable[[str], bool] = _unknown,
) -> tuple[str, str]:
    """The request's one token and the source it came from. `known`: true for a token that passed these
    checks before (one the verifier holds), whose characters need not be checked again."""
    if sources == _DEFAULT and "access_token" not in query:
        # the common case, without the general loop: one Authorization header with a bearer token
        values = headers.getall(AUTHORIZATION, [])
        if len(values) == 1:
            scheme, _, token = values[0].strip().partition(" ")
            if scheme.lower() == "bearer" and token:
                return _checked(token.strip(" "), BEARER, max_bytes, known)
    if len(headers.getall(AUTHORIZATION, ())) > 1:
        raise MultipleTokens("more than one Authorization header")
    found: list[tuple[str, str]] = []
    for source in sources:
        kind, _, name = source.partition(":")
        if source == BEARER:
            values = _bearer(headers.getall(AUTHORIZATION, []))
        elif kind == "header":
            values = [v.strip() for v in headers.getall(name, [])]
        elif kind == "cookie":
            values = _cookies(headers, name)
        else:
            values = list(query.getall(name, []))
        found.extend((v, source) for v in values)
    if "query:access_token" not in sources and "access_token" in query:
        if found:
            raise MultipleTokens("a token in the query string as well as in the request")
        # RFC 6750 §2.3 is off unless configured: URIs end up in logs, so tokens there are refused
        raise MissingToken("tokens in the query string are not accepted here; use the Authorization header")
    if not found:
        if any(source == BEARER for source in sources) and AUTHORIZATION in headers:
            if _BEARERISH.match(headers[AUTHORIZATION]):
                raise MissingToken("Authorization: Bearer must be followed by a space, then the token")
            raise MissingToken("Authorization scheme is not Bearer")
        raise MissingToken()
    if len(found) > 1:
        where = sorted({s for _, s in found})
        raise MultipleTokens(f"{len(found)} tokens in the request ({', '.join(where)}); send exactly one")
    token, source = found[0]
    return _checked(token, source, max_bytes, known)


def is_b64token(token: str) -> bool:
    """RFC 6750 §2.1 b64token: one or more of its characters, then only `=`."""
    body = token.rstrip("=")
    return bool(body) and body.isascii() and not body.encode("ascii").translate(None, _B64CHARS)


def _checked(token: str, source: str, max_bytes: int, known: Callable[[str], bool]) -> tuple[str, str]:
    if not token:
        raise Malformed("empty bearer token")
    if len(token) > max_bytes:
        raise TokenTooLarge(f"token is {len(token)} bytes, limit {max_bytes}")
    if not known(token) and not is_b64token(token):
        padding = "; a JWS is unpadded base64url: '=' padding is refused (RFC 7515 section 2)" if "=" in token else ""
        raise Malformed("the token has characters outside RFC 6750 token68" + padding)
    return token, source


def bearer_token(headers: CIMultiDictProxy[str], query: MultiMapping[str], max_bytes: int) -> str:
    """The one `Authorization: Bearer` token (the default source)."""
    return find_token(headers, query, (BEARER,), max_bytes)[0]
