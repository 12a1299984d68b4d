"""Which requests need a token: the normalised path, and the public paths matched against it.

The path is decoded once and its dot segments and `//` resolved; that canonical form is both what rules
match and what the app receives. A path that cannot be read one way only (double encoding, an encoded
`/` or `\\`, a NUL, `;` parameters, `..` above the root) gets no canonical form: it is never public, and
it is forwarded exactly as sent, behind a verified token.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

# Characters kept literal when the canonical path is re-encoded for the app.
_SAFE = "/:@!$&'()*+,=-._~"


def normalise(raw_path: str) -> str | None:
    """The canonical decoded path, or None when the path is ambiguous."""
    if not raw_path.startswith("/"):
        return None
    low = raw_path.lower()
    if "%2f" in low or "%5c" in low or "%25" in low or "%00" in low or "\\" in raw_path:
        return None
    try:
        decoded = unquote(raw_path, errors="strict")
    except UnicodeDecodeError:
        return None
    if "%" in decoded or ";" in decoded or any(ord(c) < 0x20 or ord(c) == 0x7F for c in decoded):
        return None
    out: list[str] = []
    for seg in decoded.split("/")[1:]:
        if seg in ("", "."):
            continue
        if seg == "..":
            if not out:
                return None
            out.pop()
        else:
            out.append(seg)
    canonical = "/" + "/".join(out)
    if decoded.endswith(("/", "/.", "/..")) and out:
        canonical += "/"
    return canonical


def encode(canonical: str) -> str:
    return quote(canonical, safe=_SAFE)


class PublicPaths:
    """Prefix matches on whole segments: `/public` covers `/public` and `/public/x`, not `/publicity`."""

    __slots__ = ("_exact", "_prefixes")

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        self._exact = frozenset(p.rstrip("/") or "/" for p in prefixes)
        self._prefixes = tuple(p.rstrip("/") + "/" for p in prefixes)

    def __bool__(self) -> bool:
        return bool(self._exact)

    def match(self, canonical: str | None) -> bool:
        if canonical is None or not self._exact:
            return False
        return canonical in self._exact or canonical.startswith(self._prefixes)
