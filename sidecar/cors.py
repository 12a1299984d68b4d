"""CORS: answer real preflights, decorate responses for allowed origins. Headers are computed at start."""

from __future__ import annotations

import re

from multidict import CIMultiDictProxy

from sidecar.config import Cors

_VARY = ("Vary", "Origin")


class CorsPolicy:
    def __init__(self, cfg: Cors) -> None:
        self.enabled = cfg.enabled
        self._any = "*" in cfg.origins
        # The Fetch standard compares origins byte for byte, and browsers send them serialised (lowercase scheme
        # and host, no default port, no trailing slash): so does this policy. `HTTPS://App.example.com` is not
        # `https://app.example.com`, and Access-Control-Allow-Origin only ever echoes a listed origin.
        self._exact = frozenset(o for o in cfg.origins if "*" not in o)
        patterns = [o for o in cfg.origins if "*" in o and o != "*"]
        # `*.` stands for one or more whole lowercase DNS labels: `https://*.example.com` allows
        # `https://a.b.example.com` (a host under example.com), never `https://example.com.evil.com`,
        # `https://example.com`, another scheme or port, or `.`-free tricks like `evil.com#`.
        self._pattern = (
            re.compile(
                "|".join("(?:" + re.escape(p).replace(r"\*", r"[a-z0-9-]+(?:\.[a-z0-9-]+)*") + ")" for p in patterns)
            )
            if patterns
            else None
        )
        self._methods = frozenset(cfg.methods)
        self._headers = frozenset(h.lower() for h in cfg.headers)
        self.credentials = cfg.allow_credentials
        common: list[tuple[str, str]] = [_VARY]
        if cfg.allow_credentials:
            common.append(("Access-Control-Allow-Credentials", "true"))
        self._actual = tuple(common) + (
            (("Access-Control-Expose-Headers", ", ".join(cfg.expose_headers)),) if cfg.expose_headers else ()
        )
        self._preflight = (
            *common,
            ("Access-Control-Allow-Methods", ", ".join(cfg.methods)),
            ("Access-Control-Allow-Headers", ", ".join(cfg.headers)),
            ("Access-Control-Max-Age", str(cfg.max_age)),
            ("Vary", "Access-Control-Request-Method, Access-Control-Request-Headers"),
        )

    def allowed_origin(self, origin: str) -> bool:
        if self._any or origin in self._exact:
            return True
        return self._pattern is not None and self._pattern.fullmatch(origin) is not None

    def _allow_origin(self, origin: str) -> tuple[str, str]:
        return ("Access-Control-Allow-Origin", "*" if self._any and not self.credentials else origin)

    @staticmethod
    def is_preflight(method: str, headers: CIMultiDictProxy[str]) -> bool:
        return method == "OPTIONS" and "Origin" in headers and "Access-Control-Request-Method" in headers

    def preflight(self, headers: CIMultiDictProxy[str]) -> tuple[tuple[str, str], ...] | None:
        """Headers for a 204 answer, or None when origin, method or a requested header is not allowed."""
        origins = headers.getall("Origin")
        origin = origins[0]
        if not self.enabled or len(origins) > 1 or not self.allowed_origin(origin):
            return None
        if headers["Access-Control-Request-Method"] not in self._methods:
            return None
        requested = headers.get("Access-Control-Request-Headers", "")
        for h in requested.split(","):
            h = h.strip().lower()
            if h and h not in self._headers:
                return None
        return (self._allow_origin(origin), *self._preflight)

    def actual(self, origin: str | None) -> tuple[tuple[str, str], ...]:
        """Headers to add to any response (the app's or ours) for this request's Origin."""
        if not self.enabled:
            return ()
        if origin is None or not self.allowed_origin(origin):
            return (_VARY,)
        return (self._allow_origin(origin), *self._actual)

    def refused_part(self, headers: CIMultiDictProxy[str]) -> str:
        """Which part of a refused preflight the policy does not allow (origin, method or a header), in words."""
        origin = headers.get("Origin", "")
        if not self.enabled or not self.allowed_origin(origin):
            return f"origin {origin[:100]!r} is not allowed"
        method = headers.get("Access-Control-Request-Method", "")
        if method not in self._methods:
            return f"method {method[:20]!r} is not allowed"
        for h in headers.get("Access-Control-Request-Headers", "").split(","):
            h = h.strip().lower()
            if h and h not in self._headers:
                return f"header {h[:100]!r} is not allowed"
        return "not allowed"
