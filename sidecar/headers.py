"""Header names the sidecar reads or writes, and the rules for which client headers never pass."""

from __future__ import annotations

from urllib.parse import unquote_plus

from multidict import CIMultiDict, CIMultiDictProxy

X_FORWARDED_FOR = "X-Forwarded-For"
X_FORWARDED_PROTO = "X-Forwarded-Proto"
X_FORWARDED_HOST = "X-Forwarded-Host"
# Set by the sidecar (inside the identity namespace, so a client can never send them):
GRACE_SUFFIX = "Token-Expired-Seconds"  # seconds past `exp` of a token accepted inside expired_grace

# RFC 9110 §7.6.1 plus the legacy ones every proxy strips (RFC 2616 §13.5.1).
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Connection",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
    )
)

# Headers the sidecar sets itself on the way to the app; `Connection` may never remove these.
SIDECAR_SET = frozenset(h.lower() for h in (X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST))
_PROTECTED = SIDECAR_SET | {"authorization"}


def connection_named(headers: CIMultiDictProxy[str]) -> set[str]:
    """Header names listed in `Connection` (RFC 9110 §7.6.1): hop-by-hop for this one connection."""
    return {t.strip().lower() for value in headers.getall("Connection", ()) for t in value.split(",") if t.strip()}


def identity_key(name: str) -> str:
    """Fold a header name the way servers that map `_` to `-` (CGI, WSGI, nginx) would see it."""
    return name.lower().replace("_", "-")


class HeaderPolicy:
    """Which client headers are dropped before a request reaches the app. Built once from config."""

    __slots__ = ("_prefix",)

    def __init__(self, identity_prefix: str) -> None:
        self._prefix = identity_key(identity_prefix)

    def is_identity(self, name: str) -> bool:
        return identity_key(name).startswith(self._prefix)

    def forwardable(self, headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
        """The client's headers minus hop-by-hop, `Connection`-named and identity-namespace headers."""
        # `Connection` never removes what the sidecar sets, nor the token it just verified
        drop = HOP_BY_HOP | (connection_named(headers) - _PROTECTED)
        prefix = self._prefix
        out: CIMultiDict[str] = CIMultiDict()
        for name, value in headers.items():
            low = name.lower()
            if low in drop or low.replace("_", "-").startswith(prefix) or low == "host":
                continue
            out.add(name, value)
        return out


def remove_token(headers: CIMultiDict[str], query: str, sources: tuple[str, ...]) -> str:
    """Remove a token from where it came (an optional token that did not verify); returns the new query."""
    for source in sources:
        kind, _, name = source.partition(":")
        if source == "header":
            headers.popall("Authorization", None)
        elif kind == "header":
            headers.popall(name, None)
        elif kind == "cookie":
            kept = [
                part.strip()
                for value in headers.popall("Cookie", ())
                for part in value.split(";")
                if part.strip() and part.strip().partition("=")[0] != name
            ]
            if kept:
                headers["Cookie"] = "; ".join(kept)
        elif kind == "query":
            query = "&".join(p for p in query.split("&") if p and unquote_plus(p.partition("=")[0]) != name)
    return query


def header_safe(value: str) -> str:
    """A claim value made safe for a header: no CR, LF, NUL or other controls ever reach the app."""
    if value.isprintable():
        return value
    return "".join(c if c.isprintable() else " " for c in value)
