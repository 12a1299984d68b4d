"""The whole configuration as frozen dataclasses, parsed and checked once at start.

`load(raw)` takes the merged mapping (file < env < flags, merged by `cli`) and returns a `Config` or raises
`ConfigError` naming the exact key path and the problem. Every default lives here, and nowhere else.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from sidecar.policy import Rule

ASYMMETRIC_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class ConfigError(ValueError):
    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    issuer: str
    audiences: tuple[str, ...]
    jwks_url: str | None = None
    jwks_file: str | None = None
    discovery: bool = False  # read jwks_uri from {issuer}/.well-known/openid-configuration
    algorithms: tuple[str, ...] = ASYMMETRIC_ALGS
    required_claims: tuple[str, ...] = ("exp",)
    revoked_kids: frozenset[str] = frozenset()
    token_sources: tuple[str, ...] = ("header",)  # header | header:NAME | cookie:NAME | query:NAME


@dataclass(frozen=True, slots=True)
class Cors:
    origins: tuple[str, ...] = ()  # exact origins, "*", or patterns like https://*.example.com
    methods: tuple[str, ...] = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
    headers: tuple[str, ...] = ("Authorization", "Content-Type")
    expose_headers: tuple[str, ...] = ()
    max_age: int = 600
    allow_credentials: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.origins)


@dataclass(frozen=True, slots=True)
class Jwks:
    refresh: float = 300.0
    min_refresh: float = 60.0  # lower bound for an IdP's Cache-Control max-age
    max_refresh: float = 3600.0  # upper bound for it
    max_stale: float = 86400.0
    refetch_cooldown: float = 30.0
    key_retention: float = 86400.0
    fetch_timeout: float = 5.0
    max_bytes: int = 1_048_576


@dataclass(frozen=True, slots=True)
class Limits:
    max_token_bytes: int = 8192
    max_header_bytes: int = 16384  # one header line (name + value)
    max_headers_total_bytes: int = 65536
    max_body_bytes: int = 0  # 0: no limit (the app decides)
    upstream_connect_timeout: float = 5.0
    upstream_timeout: float = 60.0
    drain_timeout: float = 20.0
    max_headers: int = 100  # header lines in one request head
    header_timeout: float = 30.0  # a request head must arrive within this, from its first byte (or the accept)
    idle_timeout: float = 75.0  # keep-alive: silence allowed between a response and the next request
    body_timeout: float = 60.0  # longest pause between two reads of a request body


@dataclass(frozen=True, slots=True)
class Decision:
    """An extra listener that answers auth subrequests (nginx auth_request, Traefik forwardAuth, Envoy ext_authz)."""

    listen: str
    trusted_sources: tuple[str, ...] = ("127.0.0.1/32", "::1/128")  # CIDRs whose X-Original-*/X-Forwarded-* count
    envoy_prefix: str = "/ext_authz"  # Envoy's http_service path_prefix: the original path follows it


_DECISION_DEFAULTS = Decision(listen="0.0.0.0:8001")


@dataclass(frozen=True, slots=True)
class Config:
    providers: tuple[Provider, ...]
    listen: str = "0.0.0.0:8000"
    upstream: str = "http://127.0.0.1:8080"
    admin_listen: str = "0.0.0.0:9901"
    admin_actions: str = "loopback"  # off | loopback | on
    leeway: float = 60.0
    expired_grace: float = 0.0
    public_paths: tuple[str, ...] = ()
    claim_headers: tuple[tuple[str, str], ...] = ()
    identity_header_prefix: str = "X-Auth-"
    strip_authorization: bool = False
    realm: str = "sidecar"
    token_cache_size: int = 100_000
    token_cache_max_bytes: int = 32 << 20  # memory bound of the cache as well (large claims make large entries)
    workers: int = 0  # 0: the CPUs this container may use (cgroup quota)
    log_level: str = "info"
    cors: Cors = field(default_factory=Cors)
    jwks: Jwks = field(default_factory=Jwks)
    limits: Limits = field(default_factory=Limits)
    rules: tuple[Rule, ...] = ()  # public_paths first, then the configured rules; first match wins
    unmatched: str = "token"  # what a request no rule matches needs: token | public | deny
    route_metrics: bool = False  # count requests by rule name in sidecar_route_requests_total
    decision: Decision | None = None
    websocket_close_on_expiry: bool = True

    @property
    def all_claim_headers(self) -> tuple[tuple[str, str], ...]:
        """Every (header, claim) pair the global setting or any rule uses, in a fixed order."""
        pairs = list(self.claim_headers)
        for rule in self.rules:
            for pair in rule.claim_headers or ():
                if pair not in pairs:
                    pairs.append(pair)
        return tuple(pairs)

    def effective(self) -> dict[str, Any]:
        """The config as a plain mapping in the file's own shape (what `check-config` prints)."""
        out: dict[str, Any] = asdict(self)
        out["claim_headers"] = dict(self.claim_headers)
        for p in out["providers"]:
            p["revoked_kids"] = sorted(p["revoked_kids"])
        out["rules"] = [rule_to_file(r) for r in self.rules if not r.name.startswith("public:")]
        result: dict[str, Any] = _lists(out)
        return result


def _lists(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _lists(x) for k, x in v.items()}
    if isinstance(v, tuple | list):
        return [_lists(x) for x in v]
    return v


# --- field readers: each names the path it failed at --------------------------------------------------


def _duration(path: str, v: Any, *, minimum: float = 0.0) -> float:
    if isinstance(v, bool):
        raise ConfigError(path, f"expected a duration such as 30, '30s', '5m' or '24h', got {v!r}")
    if isinstance(v, int | float):
        seconds = float(v)
    elif isinstance(v, str) and (m := _DURATION.match(v.strip())):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ConfigError(path, f"expected a duration such as 30, '30s', '5m' or '24h', got {v!r}")
    if seconds < minimum:
        raise ConfigError(path, f"must be at least {minimum:g} seconds, got {seconds:g}")
    return seconds


def _int(path: str, v: Any, *, minimum: int = 0) -> int:
    if isinstance(v, str) and v.strip().isdigit():
        v = int(v.strip())
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(path, f"expected a whole number, got {v!r}")
    if v < minimum:
        raise ConfigError(path, f"must be at least {minimum}, got {v}")
    return v


def _bool(path: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
        return v.lower() in ("true", "1", "yes", "on")
    raise ConfigError(path, f"expected true or false, got {v!r}")


def _str(path: str, v: Any, *, empty: bool = False) -> str:
    if not isinstance(v, str):
        raise ConfigError(path, f"expected a string, got {type(v).__name__}")
    if not empty and not v.strip():
        raise ConfigError(path, "must not be empty")
    return v


def strings(path: str, v: Any) -> tuple[str, ...]:
    """A list of non-empty strings; a comma-separated string is accepted too (what the environment holds)."""
    if isinstance(v, str):
        v = [s for s in (x.strip() for x in v.split(",")) if s]
    if not isinstance(v, list | tuple):
        raise ConfigError(path, f"expected a list of strings, got {type(v).__name__}")
    return tuple(_str(f"{path}[{i}]", x) for i, x in enumerate(v))


def _mapping(path: str, v: Any, allowed: set[str]) -> Mapping[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise ConfigError(path or "(top level)", f"expected a mapping, got {type(v).__name__}")
    for k in v:
        if k not in allowed:
            where = f"{path}.{k}" if path else str(k)
            raise ConfigError(where, f"unknown key (allowed: {', '.join(sorted(allowed))})")
    return v


def _hostport(path: str, v: Any) -> str:
    s = _str(path, v)
    host, sep, port = s.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(path, f"expected HOST:PORT such as 0.0.0.0:8000, got {s!r}")
    return s


def _url(path: str, v: Any, *, schemes: tuple[str, ...] = ("http", "https")) -> str:
    s = _str(path, v)
    parts = urlsplit(s)
    if parts.scheme not in schemes or not parts.netloc:
        raise ConfigError(path, f"expected an absolute {' or '.join(schemes)} URL, got {s!r}")
    return s


def _header_name(path: str, v: Any) -> str:
    s = _str(path, v)
    if not HEADER_NAME.match(s):
        raise ConfigError(path, f"{s!r} is not a valid HTTP header name")
    return s


# --- sections -----------------------------------------------------------------------------------------

_PROVIDER_KEYS = {f for f in Provider.__dataclass_fields__} | {"audience"}


def _provider(path: str, raw: Any, index: int) -> Provider:
    m = _mapping(path, raw, _PROVIDER_KEYS)
    name = _str(f"{path}.name", m.get("name", "default" if index == 0 else f"provider{index}"))
    if "issuer" not in m:
        raise ConfigError(f"{path}.issuer", "required (the exact `iss` this provider's tokens carry)")
    issuer = _str(f"{path}.issuer", m["issuer"])
    auds = m.get("audiences", m.get("audience"))
    if auds is None:
        raise ConfigError(f"{path}.audiences", "required: at least one accepted `aud` value")
    audiences = strings(f"{path}.audiences", auds)
    if not audiences:
        raise ConfigError(f"{path}.audiences", "required: at least one accepted `aud` value")
    jwks_url = _url(f"{path}.jwks_url", m["jwks_url"]) if m.get("jwks_url") else None
    jwks_file = _str(f"{path}.jwks_file", m["jwks_file"]) if m.get("jwks_file") else None
    discovery = _bool(f"{path}.discovery", m.get("discovery", False))
    sources = sum(1 for s in (jwks_url, jwks_file, discovery or None) if s)
    if sources != 1:
        raise ConfigError(
            f"{path}",
            "set exactly one key source: jwks_url, jwks_file, or discovery: true"
            + (f" (got {sources})" if sources else ""),
        )
    if discovery:
        _url(f"{path}.issuer", issuer)
    algorithms = strings(f"{path}.algorithms", m.get("algorithms", list(ASYMMETRIC_ALGS)))
    if not algorithms:
        raise ConfigError(f"{path}.algorithms", "must list at least one algorithm")
    for i, alg in enumerate(algorithms):
        if alg not in ASYMMETRIC_ALGS:
            why = (
                "symmetric algorithms are refused: a JWKS public key must never act as an HMAC secret"
                if alg.upper().startswith("HS")
                else "'none' is never accepted"
                if alg.lower() == "none"
                else "unknown algorithm"
            )
            raise ConfigError(f"{path}.algorithms[{i}]", f"{alg!r}: {why} (allowed: {', '.join(ASYMMETRIC_ALGS)})")
    required = strings(f"{path}.required_claims", m.get("required_claims", ["exp"]))
    revoked = frozenset(strings(f"{path}.revoked_kids", m.get("revoked_kids", [])))
    from sidecar.policy import parse_sources  # policy raises this module's ConfigError

    token_sources = parse_sources(f"{path}.token_sources", m.get("token_sources", ["header"]))
    return Provider(
        name=name,
        issuer=issuer,
        audiences=audiences,
        jwks_url=jwks_url,
        jwks_file=jwks_file,
        discovery=discovery,
        algorithms=algorithms,
        required_claims=required,
        revoked_kids=revoked,
        token_sources=token_sources,
    )


def _cors(raw: Any) -> Cors:
    m = _mapping("cors", raw, set(Cors.__dataclass_fields__))
    d = Cors()
    origins = strings("cors.origins", m.get("origins", []))
    for i, o in enumerate(origins):
        if o != "*" and not re.match(r"^https?://[A-Za-z0-9.*-]+(:\d+)?$", o):
            raise ConfigError(
                f"cors.origins[{i}]", f"{o!r} is not an origin (scheme://host[:port], '*' allowed in host)"
            )
    methods = tuple(x.upper() for x in strings("cors.methods", m.get("methods", list(d.methods))))
    headers = tuple(
        _header_name(f"cors.headers[{i}]", h)
        for i, h in enumerate(strings("cors.headers", m.get("headers", list(d.headers))))
    )
    expose = tuple(
        _header_name(f"cors.expose_headers[{i}]", h)
        for i, h in enumerate(strings("cors.expose_headers", m.get("expose_headers", [])))
    )
    creds = _bool("cors.allow_credentials", m.get("allow_credentials", False))
    if creds and "*" in origins:
        raise ConfigError(
            "cors.allow_credentials", "cannot be true with origin '*' (browsers refuse it; name the origins)"
        )
    return Cors(
        origins=origins,
        methods=methods,
        headers=headers,
        expose_headers=expose,
        max_age=_int("cors.max_age", m.get("max_age", d.max_age)),
        allow_credentials=creds,
    )


def _jwks(raw: Any) -> Jwks:
    m = _mapping("jwks", raw, set(Jwks.__dataclass_fields__))
    d = Jwks()
    j = Jwks(
        refresh=_duration("jwks.refresh", m.get("refresh", d.refresh), minimum=1),
        min_refresh=_duration("jwks.min_refresh", m.get("min_refresh", d.min_refresh), minimum=1),
        max_refresh=_duration("jwks.max_refresh", m.get("max_refresh", d.max_refresh), minimum=1),
        max_stale=_duration("jwks.max_stale", m.get("max_stale", d.max_stale)),
        refetch_cooldown=_duration("jwks.refetch_cooldown", m.get("refetch_cooldown", d.refetch_cooldown)),
        key_retention=_duration("jwks.key_retention", m.get("key_retention", d.key_retention)),
        fetch_timeout=_duration("jwks.fetch_timeout", m.get("fetch_timeout", d.fetch_timeout), minimum=0.1),
        max_bytes=_int("jwks.max_bytes", m.get("max_bytes", d.max_bytes), minimum=1024),
    )
    if j.min_refresh > j.max_refresh:
        raise ConfigError("jwks.min_refresh", f"must not exceed jwks.max_refresh ({j.max_refresh:g}s)")
    return j


def _limits(raw: Any) -> Limits:
    m = _mapping("limits", raw, set(Limits.__dataclass_fields__))
    d = Limits()
    lim = Limits(
        max_token_bytes=_int("limits.max_token_bytes", m.get("max_token_bytes", d.max_token_bytes), minimum=256),
        max_header_bytes=_int("limits.max_header_bytes", m.get("max_header_bytes", d.max_header_bytes), minimum=1024),
        max_headers_total_bytes=_int(
            "limits.max_headers_total_bytes",
            m.get("max_headers_total_bytes", d.max_headers_total_bytes),
            minimum=4096,
        ),
        max_body_bytes=_int("limits.max_body_bytes", m.get("max_body_bytes", d.max_body_bytes)),
        upstream_connect_timeout=_duration(
            "limits.upstream_connect_timeout",
            m.get("upstream_connect_timeout", d.upstream_connect_timeout),
            minimum=0.1,
        ),
        upstream_timeout=_duration(
            "limits.upstream_timeout", m.get("upstream_timeout", d.upstream_timeout), minimum=0.1
        ),
        drain_timeout=_duration("limits.drain_timeout", m.get("drain_timeout", d.drain_timeout)),
        max_headers=_int("limits.max_headers", m.get("max_headers", d.max_headers), minimum=8),
        header_timeout=_duration("limits.header_timeout", m.get("header_timeout", d.header_timeout), minimum=0.1),
        idle_timeout=_duration("limits.idle_timeout", m.get("idle_timeout", d.idle_timeout), minimum=0.1),
        body_timeout=_duration("limits.body_timeout", m.get("body_timeout", d.body_timeout), minimum=0.1),
    )
    if lim.max_token_bytes > lim.max_header_bytes:
        raise ConfigError("limits.max_token_bytes", "must not exceed limits.max_header_bytes")
    return lim


def _claim_headers(raw: Any, prefix: str, where: str = "claim_headers") -> tuple[tuple[str, str], ...]:
    if raw is None:
        return ()
    items: list[tuple[str, Any]]
    if isinstance(raw, Mapping):
        items = list(raw.items())
    elif isinstance(raw, list | tuple | str):
        items = []
        for i, entry in enumerate(strings(where, raw)):
            name, eq, claim = entry.partition("=")
            if not eq:
                raise ConfigError(f"{where}[{i}]", f"expected NAME=CLAIM, got {entry!r}")
            items.append((name.strip(), claim.strip()))
    else:
        raise ConfigError(where, "expected a mapping of header name to claim (dots for nested claims)")
    out = []
    for name, claim in items:
        _header_name(f"{where}.{name}", name)
        _str(f"{where}.{name}", claim)
        if not name.lower().replace("_", "-").startswith(prefix.lower().replace("_", "-")):
            raise ConfigError(
                f"{where}.{name}",
                f"must start with identity_header_prefix {prefix!r}, so a client can never send it itself",
            )
        out.append((name, claim))
    return tuple(out)


def _decision(raw: Any) -> Decision | None:
    if raw is None:
        return None
    m = _mapping("decision", raw, set(Decision.__dataclass_fields__))
    if "listen" not in m:
        raise ConfigError("decision.listen", "required (HOST:PORT of the decision listener)")
    trusted = strings("decision.trusted_sources", m.get("trusted_sources", list(_DECISION_DEFAULTS.trusted_sources)))
    for i, cidr in enumerate(trusted):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ConfigError(f"decision.trusted_sources[{i}]", f"{cidr!r} is not an IP network (CIDR)") from None
    prefix = _str("decision.envoy_prefix", m.get("envoy_prefix", _DECISION_DEFAULTS.envoy_prefix))
    if not prefix.startswith("/") or prefix.endswith("/"):
        raise ConfigError("decision.envoy_prefix", "must start with '/' and not end with '/'")
    return Decision(listen=_hostport("decision.listen", m["listen"]), trusted_sources=trusted, envoy_prefix=prefix)


def rule_to_file(rule: Rule) -> dict[str, Any]:
    """A rule back in the config file's shape (for `check-config`'s effective config)."""
    out: dict[str, Any] = {"name": rule.name, rule.kind: rule.path}
    if rule.methods:
        out["methods"] = sorted(rule.methods)
    for key in ("public", "deny", "strip_authorization"):
        if getattr(rule, key):
            out[key] = getattr(rule, key)
    for key in ("providers", "scopes", "scopes_any", "clients"):
        if getattr(rule, key):
            out[key] = list(getattr(rule, key))
    if rule.claims:
        out["claims"] = {
            c.claim: (
                {"present": True} if not c.equals else c.equals[0] if len(c.equals) == 1 else {"one_of": list(c.equals)}
            )
            for c in rule.claims
        }
    if rule.claim_headers is not None:
        out["claim_headers"] = dict(rule.claim_headers)
    return out


_TOP_KEYS = set(Config.__dataclass_fields__)


def load(raw: Mapping[str, Any] | None) -> Config:
    """Check a merged config mapping and freeze it. Raises ConfigError with the key path."""
    from sidecar.policy import UNMATCHED, parse_rules  # policy raises this module's ConfigError

    m = _mapping("", raw or {}, _TOP_KEYS)
    d = Config(providers=())
    providers_raw = m.get("providers")
    if not providers_raw:
        raise ConfigError("providers", "at least one provider is required (flags: --issuer, --audience, --jwks-url)")
    if not isinstance(providers_raw, list):
        raise ConfigError("providers", "expected a list of providers")
    providers = tuple(_provider(f"providers[{i}]", p, i) for i, p in enumerate(providers_raw))
    names: dict[str, int] = {}
    for i, p in enumerate(providers):
        if p.name in names:
            raise ConfigError(f"providers[{i}].name", f"{p.name!r} is already used by providers[{names[p.name]}]")
        names[p.name] = i
    seen: dict[str, int] = {}
    for i, p in enumerate(providers):
        if p.issuer in seen:
            raise ConfigError(f"providers[{i}].issuer", f"{p.issuer!r} is already used by providers[{seen[p.issuer]}]")
        seen[p.issuer] = i
    prefix = _header_name("identity_header_prefix", m.get("identity_header_prefix", d.identity_header_prefix))
    if len(prefix) < 3:
        raise ConfigError("identity_header_prefix", "too short to be a namespace")
    public = strings("public_paths", m.get("public_paths", []))
    for i, path in enumerate(public):
        if (
            not path.startswith("/")
            or "%" in path
            or "//" in path
            or "/./" in path
            or "/../" in path
            or path.endswith(("/.", "/.."))
        ):
            raise ConfigError(
                f"public_paths[{i}]", f"{path!r} must be a plain absolute path (no dot segments, '//' or %)"
            )
    admin_actions = _str("admin_actions", m.get("admin_actions", d.admin_actions))
    if admin_actions not in ("off", "loopback", "on"):
        raise ConfigError("admin_actions", f"expected off, loopback or on, got {admin_actions!r}")
    log_level = _str("log_level", m.get("log_level", d.log_level)).lower()
    if log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError("log_level", f"expected debug, info, warning or error, got {log_level!r}")
    upstream = _url("upstream", m.get("upstream", d.upstream))
    if urlsplit(upstream).path not in ("", "/") or urlsplit(upstream).query:
        raise ConfigError("upstream", "must be scheme://host:port only; the request path is forwarded as is")
    unmatched = _str("unmatched", m.get("unmatched", d.unmatched))
    if unmatched not in UNMATCHED:
        raise ConfigError("unmatched", f"expected one of {', '.join(UNMATCHED)}, got {unmatched!r}")
    rules = parse_rules(
        m.get("rules"), {p.name for p in providers}, lambda raw, where: _claim_headers(raw, prefix, where), public
    )
    return Config(
        providers=providers,
        listen=_hostport("listen", m.get("listen", d.listen)),
        upstream=upstream.rstrip("/"),
        admin_listen=_hostport("admin_listen", m.get("admin_listen", d.admin_listen)),
        admin_actions=admin_actions,
        leeway=_duration("leeway", m.get("leeway", d.leeway)),
        expired_grace=_duration("expired_grace", m.get("expired_grace", d.expired_grace)),
        public_paths=public,
        claim_headers=_claim_headers(m.get("claim_headers"), prefix),
        identity_header_prefix=prefix,
        strip_authorization=_bool("strip_authorization", m.get("strip_authorization", False)),
        realm=_str("realm", m.get("realm", d.realm)).replace('"', "'"),
        token_cache_size=_int("token_cache_size", m.get("token_cache_size", d.token_cache_size)),
        token_cache_max_bytes=_int(
            "token_cache_max_bytes", m.get("token_cache_max_bytes", d.token_cache_max_bytes), minimum=1 << 20
        ),
        workers=_int("workers", m.get("workers", d.workers), minimum=0),
        log_level=log_level,
        cors=_cors(m.get("cors")),
        jwks=_jwks(m.get("jwks")),
        limits=_limits(m.get("limits")),
        rules=rules,
        unmatched=unmatched,
        route_metrics=_bool("route_metrics", m.get("route_metrics", False)),
        decision=_decision(m.get("decision")),
        websocket_close_on_expiry=_bool("websocket_close_on_expiry", m.get("websocket_close_on_expiry", True)),
    )
