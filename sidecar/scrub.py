"""Every form in which an app could read a token, and removing each one the sidecar did not verify.

The rule: whatever a common framework (Starlette, Django, Flask/Werkzeug, Express, Spring, Go net/http,
Rails/Rack, PHP, ASP.NET Core) could read as a token from a standard place (`Authorization` in any scheme,
`access_token` in the query, RFC 6750 §2.3) or a configured one (`header:NAME`, `cookie:NAME`,
`query:NAME`) reaches the app only when it is the very token that was verified, in the very form it was
read. Everything else in those places is removed. Readings are folded the way the most lenient common
reader folds them, so a removal may be wider than one framework needs, never narrower.
"""

from __future__ import annotations

import operator
import re
from typing import TYPE_CHECKING, Final
from urllib.parse import unquote, unquote_plus

from multidict import CIMultiDict

from sidecar.headers import AUTHORIZATION, COOKIE, Memo, identity_key

if TYPE_CHECKING:
    from sidecar.config import Config

RFC6750_QUERY = "access_token"
_PARTITION: Final = operator.methodcaller("partition", "=")
_NAME: Final = operator.itemgetter(0)
_SCHEME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# SimpleCookie (aiohttp, Bottle) also ends a cookie at whitespace, and RFC 2965 parsers (old servlet
# containers) at `,`: `a=b session=x` is two cookies to them.
_COOKIE_CHUNKS = re.compile(r"[\s,]+")


def fold_param(name: str, *, plus: bool = True, lower: bool = True) -> str:
    """A query, form or cookie name as the most lenient reader sees it: percent-decoded (`access%5Ftoken`),
    case-folded (ASP.NET Core), trimmed, with PHP's name mangling (` ` and `.` become `_`) and array or map
    suffixes dropped (`access_token[]`, `access_token[0]`: PHP, Rack, Express's qs)."""
    n = (unquote_plus(name) if plus else unquote(name)).strip()
    if lower:
        n = n.lower()
    i = n.find("[")
    if i >= 0:
        n = n[:i] if "]" in n[i:] else n[:i] + "_" + n[i + 1 :]
    return n.replace(" ", "_").replace(".", "_")


def folds() -> Memo[str, str]:
    """`fold_param` remembered per name: the same few parameter names arrive again and again."""
    return Memo(fold_param)


def auth_scheme(value: str) -> str | None:
    """The auth-scheme of an Authorization value read strictly (RFC 9110 §11.4: `scheme 1*SP credentials`)."""
    scheme = value.partition(" ")[0]
    return scheme.lower() if _SCHEME.fullmatch(scheme) else None


def _cookie_readings(part: str) -> set[str]:
    key = part.partition("=")[0]
    names = {key.strip().lower(), fold_param(key)}
    for chunk in _COOKIE_CHUNKS.split(part):
        k, eq, _ = chunk.partition("=")
        if eq and k.strip():
            names.add(k.strip().lower())
    return names


def _cookie_value(part: str) -> str:
    value = part.partition("=")[2].strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return value


class TokenForms:
    """Where tokens may be, built once from every provider's `token_sources`."""

    __slots__ = ("_cookies", "_folds", "_headers", "_passthrough", "params")

    def __init__(self, sources: tuple[str, ...], passthrough: tuple[str, ...]) -> None:
        named = [s.partition(":")[::2] for s in sources]
        # folded name -> the one spelling that is read as the token
        self._headers = {identity_key(n): n.lower() for kind, n in named if kind == "header" and n}
        self._cookies = frozenset(n.lower() for kind, n in named if kind == "cookie")
        # folded names read as a token in a query string or a form body (formbody.py)
        self.params = frozenset({RFC6750_QUERY, *(fold_param(n) for kind, n in named if kind == "query")})
        self._passthrough = frozenset(s.lower() for s in passthrough)
        self._folds = folds()

    @classmethod
    def from_config(cls, cfg: Config) -> TokenForms:
        sources = tuple(dict.fromkeys(src for p in cfg.providers for src in p.token_sources))
        return cls(sources, cfg.authorization_passthrough)

    def scrub(self, headers: CIMultiDict[str], query: str, kept: tuple[str, str] | None) -> str:
        """Remove every token form but `kept` (source, token) from `headers`; returns the new query string."""
        source, token = kept or ("", "")
        self._authorization(headers, token if source == "header" else None)
        if self._headers:
            self._named_headers(headers, source, token)
        if self._cookies and COOKIE in headers:
            self._cookie(headers, source, token)
        return self._query(query, source, token) if query else query

    def _authorization(self, headers: CIMultiDict[str], token: str | None) -> None:
        values = headers.getall(AUTHORIZATION, ())
        if not values:
            return
        if token is not None and len(values) == 1 and values[0][7:] == token and values[0][:7].lower() == "bearer ":
            return  # the common case: the one header, the verified token
        keep = [
            v
            for v in values
            if (token is not None and auth_scheme(v) == "bearer" and v.partition(" ")[2].strip(" ") == token)
            or (self._passthrough and auth_scheme(v) in self._passthrough)
        ]
        if len(keep) != len(values):
            headers.popall(AUTHORIZATION)
            for v in keep:
                headers.add(AUTHORIZATION, v)

    def _named_headers(self, headers: CIMultiDict[str], source: str, token: str) -> None:
        wanted = source.partition(":")[2].lower() if source.startswith("header:") else None
        hits = {name.lower(): name for name in headers if identity_key(name) in self._headers}
        for low, name in hits.items():
            values = headers.popall(low)
            # only the configured spelling, never its `_` twin, and only the value that was verified
            if low == wanted:
                headers.extend((name, v) for v in values if v.strip() == token)

    def _cookie(self, headers: CIMultiDict[str], source: str, token: str) -> None:
        wanted = source.partition(":")[2] if source.startswith("cookie:") else None
        values = headers.getall(COOKIE)
        parts = [p for v in values for p in v.split(";")]
        kept: list[str] = []
        changed = len(values) > 1  # several Cookie headers become one, as HTTP/2 does: the app reads them all
        for part in parts:
            readings = _cookie_readings(part)
            if readings.isdisjoint(self._cookies):
                kept.append(part.strip())
                continue
            key = part.partition("=")[0].strip()
            if key == wanted and readings == {key.lower()} and _cookie_value(part) == token:
                kept.append(part.strip())
            else:
                changed = True
        if changed:
            headers.popall(COOKIE)
            kept = [p for p in kept if p]
            if kept:
                headers[COOKIE] = "; ".join(kept)

    def _query(self, query: str, source: str, token: str) -> str:
        # the usual query holds no token parameter: told in C, one memo lookup a parameter
        names = map(_NAME, map(_PARTITION, query.replace(";", "&").split("&")))
        if self.params.isdisjoint(map(self._folds.__getitem__, names)):
            return query
        wanted = source.partition(":")[2] if source.startswith("query:") else None
        out: list[str] = []
        changed = False
        for part in query.split("&"):
            # Rack 2, old Go and old Python also split on `;`: judge each piece as its own parameter
            pieces = part.split(";")
            kept = []
            for piece in pieces:
                name, _, value = piece.partition("=")
                if self._folds[name] in self.params and not (
                    len(pieces) == 1 and unquote_plus(name) == wanted and unquote_plus(value) == token
                ):
                    continue
                kept.append(piece)
            if len(kept) != len(pieces):
                changed = True
                if kept:
                    out.append(";".join(kept))
            else:
                out.append(part)
        return "&".join(out) if changed else query
