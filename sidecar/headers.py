"""Header names the sidecar reads or writes, and the rules for which client headers never pass."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Final, TypeVar

from multidict import CIMultiDict, CIMultiDictProxy, istr

if TYPE_CHECKING:
    from sidecar.config import Config

# Names as multidict's case-insensitive strings, as aiohttp's `hdrs` has them: a multidict folds a plain
# string's case on every lookup and assignment, an `istr`'s once (about a third of a lookup's time).
AUTHORIZATION: Final = istr("Authorization")
CONNECTION: Final = istr("Connection")
CONTENT_LENGTH: Final = istr("Content-Length")
COOKIE: Final = istr("Cookie")
EXPECT: Final = istr("Expect")
HOST: Final = istr("Host")
ORIGIN: Final = istr("Origin")
UPGRADE: Final = istr("Upgrade")
X_FORWARDED_FOR: Final = istr("X-Forwarded-For")
X_FORWARDED_PROTO: Final = istr("X-Forwarded-Proto")
X_FORWARDED_HOST: Final = istr("X-Forwarded-Host")
# Set by the sidecar (inside the identity namespace, so a client can never send them):
GRACE_SUFFIX = "Token-Expired-Seconds"  # seconds past `exp` of a token accepted inside expired_grace
REPORT_SUFFIX = "Report"  # report mode: the reason the request would have been refused

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
    return {t.strip().lower() for value in headers.getall(CONNECTION, ()) for t in value.split(",") if t.strip()}


def field_name(raw: bytes) -> istr:
    """A field name as read from the wire (any byte may be there: latin-1 keeps each), with its case kept and
    folded once for the multidict the request's fields go into (the lean engine remembers it per name)."""
    return istr(raw.decode("latin-1"))


def identity_key(name: str) -> str:
    """Fold a header name the way servers that map `_` to `-` (CGI, WSGI, nginx) would see it."""
    return name.lower().replace("_", "-")


_SEEN = 4096  # names remembered per classifier: clients send the same few names again and again

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Memo(dict[K, V]):
    """`judge`'s answer per key, remembered (bounded): header and parameter names (and an app's status lines)
    repeat on every request, so a hit is one dict lookup. Past `bound` entries it starts over; the keys still
    in use come back at once."""

    __slots__ = ("_bound", "_judge")

    def __init__(self, judge: Callable[[K], V], bound: int = _SEEN) -> None:
        super().__init__()
        self._judge: Callable[[K], V] = judge
        self._bound = bound

    def __missing__(self, name: K) -> V:
        if len(self) >= self._bound:
            self.clear()
        answer = self[name] = self._judge(name)
        return answer


class NameList:
    """Header names and `*`-suffixed prefixes, matched after case and `_`/`-` folding."""

    __slots__ = ("_exact", "_prefixes", "_seen")

    def __init__(self, entries: tuple[str, ...] | list[str]) -> None:
        self._exact = frozenset(identity_key(e) for e in entries if not e.endswith("*"))
        self._prefixes = tuple(identity_key(e[:-1]) for e in entries if e.endswith("*"))
        self._seen: Memo[str, bool] = Memo(self._judge)

    def _judge(self, name: str) -> bool:
        key = identity_key(name)
        return key in self._exact or key.startswith(self._prefixes)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._seen[name]

    @property
    def judged(self) -> Memo[str, bool]:
        """Name -> listed, for a loop over every header of a request (a lookup instead of a call per name)."""
        return self._seen


class HeaderPolicy:
    """Which client headers are dropped before a request reaches the app. Built once from config."""

    __slots__ = ("_dropped", "_exempt", "_prefix", "_seen")

    def __init__(
        self,
        identity_prefix: str,
        foreign_identity: tuple[str, ...] = (),
        exempt: tuple[str, ...] = (),
    ) -> None:
        self._prefix = identity_key(identity_prefix)
        self._dropped = NameList(foreign_identity)
        # a header the operator named as a token source is judged by the token rules, not dropped here
        self._exempt = frozenset(h.lower() for h in exempt)
        self._seen: Memo[str, bool] = Memo(self._always_dropped)  # whatever `Connection` says

    @classmethod
    def from_config(cls, cfg: Config) -> HeaderPolicy:
        sources = {src for p in cfg.providers for src in p.token_sources}
        return cls(
            cfg.identity_header_prefix,
            cfg.foreign_identity_headers,
            exempt=tuple(src.partition(":")[2] for src in sources if src.startswith("header:")),
        )

    def is_identity(self, name: str) -> bool:
        return identity_key(name).startswith(self._prefix)

    def forwardable(self, headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
        """The client's headers minus hop-by-hop, `Connection`-named, identity-namespace and foreign identity
        headers."""
        # `Connection` never removes what the sidecar sets, nor the token it just verified
        named = connection_named(headers) - _PROTECTED if CONNECTION in headers else None
        seen = self._seen
        if named:
            return CIMultiDict((n, v) for n, v in headers.items() if not seen[n] and n.lower() not in named)
        # the usual request: a copy, less the few names always dropped (one memo lookup each; a loop, not
        # `filter`: compiled, the builtin's lookup costs more than the loop)
        out = headers.copy()
        for name in headers:
            if seen[name]:
                out.popall(name, None)
        return out

    def _always_dropped(self, name: str) -> bool:
        low, key = name.lower(), identity_key(name)
        # `Proxy_Authorization` is `HTTP_PROXY_AUTHORIZATION` to a CGI/WSGI app, like `Proxy-Authorization`
        if key in HOP_BY_HOP or low == "host" or key.startswith(self._prefix):
            return True
        return low not in self._exempt and name in self._dropped


def header_safe(value: str) -> str:
    """A claim value made safe for a header: no CR, LF, NUL or other controls ever reach the app."""
    if value.isprintable():
        return value
    return "".join(c if c.isprintable() else " " for c in value)
