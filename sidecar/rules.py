"""Which requests need what: the normalised path, and the route rules matched against it.

The path is decoded once and its dot segments and `//` resolved; that canonical form is both what rules
match and what the app receives. A path that cannot be read one way only (double encoding, an encoded
`/` or `\\`, a NUL, `;` parameters, `..` above the root) gets no canonical form: it is never public, it must
satisfy every rule that applies to its method, and it is forwarded exactly as sent.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from sidecar.config import Config
from sidecar.headers import Memo
from sidecar.policy import Rule, pattern_regex

_REMEMBERED = 256  # paths up to this long have their reading remembered (RuleSet.reading)

# Characters kept literal when the canonical path is re-encoded for the app.
_SAFE = "/:@!$&'()*+,=-._~"


# A path every reading agrees on as it is: no escapes, no empty or dot segments, only characters that
# `encode` keeps. Most requests' paths; they skip decoding and re-encoding.
_PLAIN = re.compile(r"(?:/[A-Za-z0-9_:@!$&'()*+,=\-.~]+)*/?")


def _plain(path: str) -> bool:
    return _PLAIN.fullmatch(path) is not None and "/." not in path


def normalise(raw_path: str) -> str | None:
    """The canonical decoded path, or None when the path is ambiguous."""
    if _plain(raw_path):
        return raw_path
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
    return canonical if _plain(canonical) else quote(canonical, safe=_SAFE)


def reading(raw_path: str) -> tuple[str | None, str]:
    """The path's canonical form (None when ambiguous) and the path the app is sent: the canonical one
    re-encoded, or the path as it came when it has no single reading (it is then held to every rule)."""
    canonical = normalise(raw_path)
    if canonical is None or canonical is raw_path:  # a plain path is its own canonical form
        return canonical, raw_path
    return canonical, encode(canonical)


INSUFFICIENT_SCOPE, CLAIM_MISMATCH, WRONG_PROVIDER = 1, 2, 3  # verdict bytes; 0 means the token satisfies the rule
UNMATCHED_ROUTE, AMBIGUOUS_ROUTE = "(unmatched)", "(ambiguous)"


@dataclass(frozen=True, slots=True)
class Route:
    """What a request needs, once its method and normalised path are known."""

    name: str
    public: bool = False
    deny: bool = False
    rules: tuple[int, ...] = ()  # indices of rules whose requirements must all hold (empty: any valid token)
    header_indices: tuple[int, ...] = ()  # into Config.all_claim_headers
    strip_authorization: bool = False
    # report-only: a refusal for the token (or a deny) is forwarded with the would-be reason (authorize.py)
    report: bool = False


def token_scopes(claims: Mapping[str, Any]) -> set[str]:
    """Scopes from `scope` (space-delimited string, RFC 8693) and `scp` (array or string, as Entra ID and Okta send)."""
    out: set[str] = set()
    for name in ("scope", "scp"):
        v = claims.get(name)
        if isinstance(v, str):
            out.update(v.split())
        elif isinstance(v, list):
            out.update(x for x in v if isinstance(x, str))
    return out


def _same(value: Any, wanted: Any) -> bool:
    if isinstance(value, bool) or isinstance(wanted, bool):
        return type(value) is type(wanted) and value == wanted  # JSON true is not 1
    return bool(value == wanted)


def verdict(rule: Rule, claims: Mapping[str, Any], provider: str) -> int:
    if rule.providers and provider not in rule.providers:
        return WRONG_PROVIDER
    if rule.scopes or rule.scopes_any:
        have = token_scopes(claims)
        if not have.issuperset(rule.scopes) or (rule.scopes_any and have.isdisjoint(rule.scopes_any)):
            return INSUFFICIENT_SCOPE
    for check in rule.claims:
        value = claim_value(claims, check.claim)
        if value is None:
            return CLAIM_MISMATCH
        if check.equals:
            values = value if isinstance(value, list) else [value]
            if not any(_same(v, w) for v in values for w in check.equals):
                return CLAIM_MISMATCH
    if rule.clients:
        client = claims.get("azp", claims.get("client_id"))
        if not isinstance(client, str) or client not in rule.clients:
            return CLAIM_MISMATCH
    return 0


def claim_value(claims: Mapping[str, Any], path: str) -> Any:
    """A claim by exact name, else by dotted path into nested objects (`realm_access.roles`)."""
    if path in claims:
        return claims[path]
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


class RuleSet:
    """The configured rules, compiled once; `route()` is called on every request."""

    def __init__(self, cfg: Config, fold_case: bool = False) -> None:
        """`fold_case`: match rule paths case-insensitively (the caller lowercases the path it routes), as
        a case-insensitive router (Express's default) would; decision mode compares both readings."""
        self.rules = cfg.rules
        self._checked = tuple(i for i, r in enumerate(cfg.rules) if r.needs_claims)
        pairs = cfg.all_claim_headers
        default_headers = tuple(pairs.index(p) for p in cfg.claim_headers)
        self._matchers = [self._matcher(r, fold_case) for r in cfg.rules]
        self._routes = [
            Route(
                name=r.name,
                public=r.public,
                deny=r.deny,
                rules=(i,) if r.needs_claims else (),
                header_indices=default_headers
                if r.claim_headers is None
                else tuple(pairs.index(p) for p in r.claim_headers),
                strip_authorization=cfg.strip_authorization if r.strip_authorization is None else r.strip_authorization,
                report=(r.mode or cfg.mode) == "report",
            )
            for i, r in enumerate(cfg.rules)
        ]
        self._unmatched = Route(
            name=UNMATCHED_ROUTE,
            public=cfg.unmatched == "public",
            deny=cfg.unmatched == "deny",
            header_indices=default_headers,
            strip_authorization=cfg.strip_authorization,
            report=cfg.mode == "report",
        )
        # some request may be refused: readiness then waits for keys (a report-only sidecar forwards without)
        self.enforces = not self._unmatched.report or any(
            not route.report for route in self._routes if not route.public
        )
        self._readings: Memo[str, tuple[str | None, str]] = Memo(reading)

    def reading(self, raw_path: str) -> tuple[str | None, str]:
        """`reading(raw_path)`, remembered (bounded) for paths of up to 256 characters: clients ask for the
        same paths again and again, and a hit is a lookup instead of a pattern match (~1,700 instructions)."""
        return self._readings[raw_path] if len(raw_path) <= _REMEMBERED else reading(raw_path)

    @staticmethod
    def _matcher(rule: Rule, fold_case: bool = False) -> Callable[[str], bool]:
        path = rule.path.lower() if fold_case else rule.path
        if rule.kind == "exact":
            exact = {path, path.rstrip("/") or "/", path.rstrip("/") + "/"}
            return exact.__contains__
        if rule.kind == "prefix":
            base = path.rstrip("/")
            if not base:
                return lambda _path: True
            below = base + "/"
            return lambda path: path == base or path.startswith(below)
        regex = pattern_regex(path)
        return lambda path: regex.fullmatch(path) is not None

    def verdicts(self, claims: Mapping[str, Any], provider: str) -> bytes:
        """One byte per rule (0: satisfied), computed once per verified token and cached with it."""
        out = bytearray(len(self.rules))
        for i in self._checked:
            out[i] = verdict(self.rules[i], claims, provider)
        return bytes(out)

    def route(self, method: str, canonical: str | None) -> Route:
        if canonical is not None:
            for i, rule in enumerate(self.rules):
                if (not rule.methods or method in rule.methods) and self._matchers[i](canonical):
                    return self._routes[i]
            return self._unmatched
        # A path with no single reading must satisfy every rule it might be: never public, denied if any
        # rule that applies to the method denies, and held to every requirement of the others.
        applicable = [i for i, r in enumerate(self.rules) if not r.methods or method in r.methods]
        unmatched = self._unmatched
        deny = unmatched.deny or any(self.rules[i].deny for i in applicable)
        return Route(
            name=AMBIGUOUS_ROUTE,
            deny=deny,
            rules=tuple(i for i in applicable if self.rules[i].needs_claims),
            header_indices=unmatched.header_indices,
            strip_authorization=unmatched.strip_authorization
            or any(self._routes[i].strip_authorization for i in applicable),
            # reported only when every reading would be: an odd spelling never turns enforcement off
            report=unmatched.report and all(self._routes[i].report for i in applicable if not self.rules[i].public),
        )
