"""Route rules and token sources as configured: frozen, and checked at start.

A rule names what a request needs (no token, any valid token, a provider, scopes, claim values, client
ids) for some methods and a path. Rules are ordered and the first match wins. Checks that can fail at
start do: a rule naming an unknown provider, a bad pattern, or a rule that an earlier rule always
shadows is a `ConfigError` with the rule's position.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.config import HEADER_NAME, ConfigError, strings

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
UNMATCHED = ("token", "public", "deny")
MODES = ("enforce", "report")
_SEGMENT = re.compile(r"^[A-Za-z0-9._~!$&'()+,;=:@%-]*$")


@dataclass(frozen=True, slots=True)
class ClaimCheck:
    claim: str  # a name, or a dotted path into nested objects
    equals: tuple[Any, ...] = ()  # one of these values (exact JSON equality); empty: only presence
    present: bool = True


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    kind: str  # exact | prefix | pattern
    path: str
    methods: frozenset[str] = frozenset()  # empty: every method
    public: bool = False
    deny: bool = False
    providers: tuple[str, ...] = ()  # empty: any provider
    scopes: tuple[str, ...] = ()  # all of these
    scopes_any: tuple[str, ...] = ()  # at least one of these
    claims: tuple[ClaimCheck, ...] = ()
    clients: tuple[str, ...] = ()  # azp or client_id must be one of these
    claim_headers: tuple[tuple[str, str], ...] | None = None  # None: the global claim_headers
    strip_authorization: bool | None = None  # None: the global setting
    mode: str | None = None  # enforce | report; None: the global `mode`

    @property
    def needs_claims(self) -> bool:
        return bool(self.providers or self.scopes or self.scopes_any or self.claims or self.clients)


# --- paths ---------------------------------------------------------------------------------------------


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """`*` is one whole segment, a final `**` is any number of segments (zero included)."""
    parts = pattern.strip("/").split("/") if pattern != "/" else []
    out = ""
    for seg in parts:
        if seg == "**":
            out += "(?:/.*)?"
        elif seg == "*":
            out += "/[^/]+"
        else:
            out += "/" + re.escape(seg)
    return re.compile((out or "/") + ("" if pattern.endswith("**") else "/?"))


def _check_path(where: str, kind: str, path: str) -> None:
    if not path.startswith("/") or "//" in path or "%" in path or "\\" in path:
        raise ConfigError(where, f"{path!r} must be a plain absolute path (no '//', '%' or '\\\\')")
    segments = path.strip("/").split("/") if path != "/" else []
    for i, seg in enumerate(segments):
        if seg in (".", ".."):
            raise ConfigError(where, f"{path!r} has a dot segment; rules match normalised paths")
        if kind != "pattern" and "*" in seg:
            raise ConfigError(where, f"{path!r} has '*': use `pattern:` for wildcards")
        if kind == "pattern" and "*" in seg and seg not in ("*", "**"):
            raise ConfigError(where, f"invalid pattern {path!r}: '*' must be a whole segment")
        if seg == "**" and i != len(segments) - 1:
            raise ConfigError(where, f"invalid pattern {path!r}: '**' may only be the last segment")
        if not _SEGMENT.match(seg.replace("*", "")):
            raise ConfigError(where, f"invalid path {path!r}: segment {seg!r} has characters a path cannot hold")


def covers(a: Rule, b: Rule) -> bool:
    """True when every request `b` matches is matched by `a` first (so `b` can never apply)."""
    if a.methods and (not b.methods or not b.methods <= a.methods):
        return False
    if a.kind == "prefix":
        base = a.path.rstrip("/")
        literal = b.path if b.kind != "pattern" else b.path.split("*", 1)[0].rstrip("/")
        if b.kind == "pattern" and "*" not in b.path:
            literal = b.path
        return base == "" or literal == base or literal.startswith(base + "/")
    if a.kind == "exact":
        return b.kind == "exact" and a.path.rstrip("/") == b.path.rstrip("/")
    if b.kind == "exact":
        return pattern_regex(a.path).fullmatch(b.path) is not None
    return b.kind == "pattern" and a.path == b.path


# --- parsing -------------------------------------------------------------------------------------------

_RULE_KEYS = {
    "name",
    "methods",
    "exact",
    "prefix",
    "pattern",
    "public",
    "deny",
    "providers",
    "scopes",
    "scopes_any",
    "claims",
    "clients",
    "claim_headers",
    "strip_authorization",
    "mode",
}


def _claims(where: str, raw: Any) -> tuple[ClaimCheck, ...]:
    if not isinstance(raw, Mapping):
        raise ConfigError(where, "expected a mapping of claim to value, {one_of: [...]} or {present: true}")
    out = []
    for claim, spec in raw.items():
        at = f"{where}.{claim}"
        if isinstance(spec, Mapping):
            if set(spec) == {"one_of"} and isinstance(spec["one_of"], list) and spec["one_of"]:
                out.append(ClaimCheck(str(claim), tuple(spec["one_of"])))
            elif set(spec) == {"present"} and spec["present"] is True:
                out.append(ClaimCheck(str(claim)))
            else:
                raise ConfigError(at, "expected a value, {one_of: [non-empty list]} or {present: true}")
        elif isinstance(spec, str | int | float | bool):
            out.append(ClaimCheck(str(claim), (spec,)))
        else:
            raise ConfigError(at, "expected a value, {one_of: [...]} or {present: true}")
    return tuple(out)


def parse_rules(
    raw: Any, providers: set[str], parse_claim_headers: Any, public_paths: tuple[str, ...]
) -> tuple[Rule, ...]:
    """Public paths first (as prefix rules), then the configured rules, in order."""
    rules: list[Rule] = [Rule(name=f"public:{p}", kind="prefix", path=p, public=True) for p in public_paths]
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise ConfigError("rules", "expected a list of rules")
    names: set[str] = set()
    for i, r in enumerate(raw):
        where = f"rules[{i}]"
        if not isinstance(r, Mapping):
            raise ConfigError(where, "expected a mapping")
        for k in r:
            if k not in _RULE_KEYS:
                raise ConfigError(f"{where}.{k}", f"unknown key (allowed: {', '.join(sorted(_RULE_KEYS))})")
        name = r.get("name", f"rule{i}")
        if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9_.:-]{1,64}$", name):
            raise ConfigError(f"{where}.name", "expected 1-64 characters of [A-Za-z0-9_.:-] (it is a metric label)")
        if name in names:
            raise ConfigError(f"{where}.name", f"{name!r} is used by an earlier rule")
        names.add(name)
        kinds = [k for k in ("exact", "prefix", "pattern") if k in r]
        if len(kinds) != 1:
            raise ConfigError(where, "set exactly one of exact, prefix or pattern")
        kind = kinds[0]
        path = r[kind]
        if not isinstance(path, str):
            raise ConfigError(f"{where}.{kind}", "expected a path")
        _check_path(f"{where}.{kind}", kind, path)
        methods = frozenset(m.upper() for m in strings(f"{where}.methods", r.get("methods", [])))
        for m in methods - HTTP_METHODS:
            raise ConfigError(f"{where}.methods", f"unknown method {m!r}")
        public, deny = r.get("public", False), r.get("deny", False)
        if not isinstance(public, bool) or not isinstance(deny, bool):
            raise ConfigError(f"{where}.public", "public and deny must be true or false")
        provs = strings(f"{where}.providers", r.get("providers", []))
        for p in provs:
            if p not in providers:
                raise ConfigError(
                    f"{where}.providers", f"unknown provider {p!r} (configured: {', '.join(sorted(providers))})"
                )
        strip = r.get("strip_authorization")
        if strip is not None and not isinstance(strip, bool):
            raise ConfigError(f"{where}.strip_authorization", "expected true or false")
        mode = r.get("mode")
        if mode is not None and mode not in MODES:
            raise ConfigError(f"{where}.mode", f"expected one of {', '.join(MODES)}")
        if mode is not None and public:
            raise ConfigError(f"{where}.mode", "a public rule refuses nothing, so it has nothing to report")
        rule = Rule(
            name=name,
            kind=kind,
            path=path,
            methods=methods,
            public=public,
            deny=deny,
            providers=provs,
            scopes=strings(f"{where}.scopes", r.get("scopes", [])),
            scopes_any=strings(f"{where}.scopes_any", r.get("scopes_any", [])),
            claims=_claims(f"{where}.claims", r.get("claims", {})),
            clients=strings(f"{where}.clients", r.get("clients", [])),
            claim_headers=parse_claim_headers(r["claim_headers"], f"{where}.claim_headers")
            if "claim_headers" in r
            else None,
            strip_authorization=strip,
            mode=mode,
        )
        if (public or deny) and (rule.needs_claims or (public and deny)):
            raise ConfigError(where, "a public or deny rule cannot also require a provider, scopes, claims or clients")
        for j, earlier in enumerate(rules):
            if covers(earlier, rule):
                shadow = (
                    f"public_paths entry {earlier.path!r}"
                    if earlier.name.startswith("public:")
                    else (f"rules[{j - len(public_paths)}] ({earlier.name})")
                )
                raise ConfigError(where, f"unreachable: every request it matches is matched first by {shadow}")
        rules.append(rule)
    return tuple(rules)


def parse_sources(where: str, raw: Any) -> tuple[str, ...]:
    """Token sources of a provider: `header` (Authorization: Bearer), `header:NAME`, `cookie:NAME`, `query:NAME`."""
    sources = strings(where, raw)
    if not sources:
        raise ConfigError(where, "list at least one token source")
    for i, s in enumerate(sources):
        kind, _, name = s.partition(":")
        if s == "header":
            continue
        if kind not in ("header", "cookie", "query") or not HEADER_NAME.match(name):
            raise ConfigError(f"{where}[{i}]", f"{s!r}: expected header, header:NAME, cookie:NAME or query:NAME")
        if kind == "header" and name.lower() == "authorization":
            raise ConfigError(f"{where}[{i}]", "use plain `header` for Authorization: Bearer")
    return sources
