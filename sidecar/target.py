"""The request target in decision mode: the one reading every common app router agrees on, or a refusal.

The proxy forwards the normalised path it judged, so the app routes what the sidecar saw. In decision mode
the gateway forwards the target exactly as the client sent it (nginx `$request_uri`, Traefik's
`X-Forwarded-Uri`, Envoy's path), and the app's router reads it its own way: aiohttp and Starlette decode
it, Express routes the encoded form and ignores case, Go's mux cleans dot segments, Tomcat and Spring drop
`;` parameters, URL parsers stop at `#` or read `//x` as a host. A target is judged only when all of
those readings are one path and pick one rule; anything else is `AmbiguousTarget`, never a more
permissive verdict.
"""

from __future__ import annotations

import re
import string
import unicodedata
from urllib.parse import unquote_to_bytes

from sidecar.errors import AmbiguousTarget
from sidecar.rules import RuleSet

# RFC 3986 §2.3: producers never need to encode these, and a router that decodes and one that does not
# read `%61dmin` differently. So an escape of one of them is refused rather than guessed.
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
# Escapes that change the path's structure once decoded: a separator, a second layer of encoding, a
# parameter, a query or fragment start.
_STRUCTURAL = frozenset("/\\%;?#")
_ESCAPES = re.compile(r"%([0-9A-Fa-f]{2})")
_WELL_FORMED = re.compile(r"(?:[^%]|%[0-9A-Fa-f]{2})*")
_UNREADABLE = re.compile(r"[^\x21-\x7e]|[#\\]")


class Readings:
    """The rule set twice: as configured (case-sensitive), and case-folded as a case-insensitive router reads."""

    def __init__(self, rules: RuleSet, folded: RuleSet) -> None:
        self.rules = rules
        self.folded = folded

    def single(self, method: str, target: str) -> tuple[str, str]:
        """(decoded path, raw query) when every reading agrees; else raises `AmbiguousTarget` saying why."""
        path, query = _checked(target)
        decoded = _decoded(path)
        # Express, Go's mux and Starlette run a GET handler for HEAD
        methods = (method, "GET") if method == "HEAD" else (method,)
        names = set()
        for m in methods:
            names.add(self.rules.route(m, decoded).name)
            names.add(self.folded.route(m, decoded.lower()).name)
            if decoded != path:  # a router that matches the encoded form (Express) reads the raw path
                names.add(self.rules.route(m, path).name)
                names.add(self.folded.route(m, path.lower()).name)
        if len(names) > 1:
            raise AmbiguousTarget(
                f"routers that decode, keep escapes, ignore case or serve HEAD as GET would pick {sorted(names)}"
            )
        return decoded, query


def _checked(target: str) -> tuple[str, str]:
    if not target.startswith("/"):
        # absolute-form (`http://host/p`), authority-form, `*`: the gateway's own parser chose the path
        raise AmbiguousTarget("the original target is not an origin-form path")
    bad = _UNREADABLE.search(target)
    if bad is not None:
        c = bad.group(0)
        if c == "#":
            raise AmbiguousTarget("a fragment: the client never sends one, and routers cut it or keep it")
        if c == "\\":
            raise AmbiguousTarget("a backslash: some routers and URL parsers read it as '/'")
        raise AmbiguousTarget("a control, space or non-ASCII character in the target")
    path, _, query = target.partition("?")
    if path.startswith("//"):
        raise AmbiguousTarget("'//' at the start: URL parsers read what follows as a host")
    if ";" in path:
        raise AmbiguousTarget("';' parameters: Tomcat and Spring drop them, other routers keep them")
    if not _WELL_FORMED.fullmatch(path):
        raise AmbiguousTarget("a '%' that does not start a two-digit hex escape")
    for escape in _ESCAPES.finditer(path):
        c = chr(int(escape.group(1), 16))
        if c in _UNRESERVED:
            raise AmbiguousTarget(f"an escaped unreserved character {escape.group(0)!r}: decoding routers read {c!r}")
        if c in _STRUCTURAL:
            raise AmbiguousTarget(f"an escaped {c!r} ({escape.group(0)}): it changes the path once decoded")
        if ord(c) < 0x20 or ord(c) == 0x7F:
            raise AmbiguousTarget(f"an escaped control character {escape.group(0)!r}")
    return path, query


def _decoded(path: str) -> str:
    try:
        decoded = unquote_to_bytes(path).decode("utf-8")  # strict: overlong forms and bad bytes fail here
    except UnicodeDecodeError:
        raise AmbiguousTarget("escapes that are not UTF-8 (or an overlong form)") from None
    if not decoded.isascii() and unicodedata.normalize("NFKC", decoded) != decoded:
        # fullwidth dots and slashes (U+FF0E, U+FF0F), ligatures: a normalising router reads other characters
        raise AmbiguousTarget("characters that Unicode compatibility normalisation (NFKC) changes")
    segments = decoded.split("/")[1:]
    for i, seg in enumerate(segments):
        if seg in (".", ".."):
            raise AmbiguousTarget("a dot segment: Go's mux resolves it, Express and Starlette keep it")
        if seg == "" and i != len(segments) - 1:
            raise AmbiguousTarget("an empty segment ('//'): some routers merge it, others keep it")
    return decoded
