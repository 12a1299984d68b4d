"""The declared configuration: every key once, with its type, default, meaning and checks.

The command line (flags and their `SIDECAR_*` twins), `check-config`, the tables in docs/configuration.md and
the `config` part of the Helm chart's values.schema.json are all derived from these classes (see
`sidecar.config.sources` and `sidecar.config.schema`). The objects are frozen dataclasses; pydantic checks
them when they are built and reports every problem at once, each with its key path.

To add a key: add a field to the class of its section, typed with one of `sidecar.config.types`' types (or a
`Literal`), with `key(default, "what it does", ge=...)`. Cross-field checks go in the class's `_check`.
Then run `python -m sidecar.config.schema --write` to refresh the chart schema and the docs table.
"""

from __future__ import annotations

import ipaddress
import json
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn
from urllib.parse import urlsplit

from pydantic import (
    BeforeValidator,
    ConfigDict,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)
from pydantic.dataclasses import dataclass
from pydantic.fields import FieldInfo
from pydantic_core import InitErrorDetails, PydanticCustomError

from sidecar.config.errors import ConfigError
from sidecar.config.types import (
    ASYMMETRIC_ALGS,
    Boolish,
    Cli,
    Duration,
    HeaderList,
    HeaderName,
    Hint,
    HostPort,
    HttpUrl,
    StringList,
    Text,
    WholeNumber,
    _list,
    _ref,
    _text,
    fail,
    key,
)

if TYPE_CHECKING:
    from sidecar.policy import Rule

MODEL = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


# --- raising several problems from one check, each at its own path ------------------------------------------


def loc_of(path: str) -> tuple[str | int, ...]:
    """`providers[0].algorithms[1]` -> ("providers", 0, "algorithms", 1)."""
    out: list[str | int] = []
    for part in re.findall(r"\[(\d+)\]|([^.\[\]]+)", path):
        out.append(int(part[0]) if part[0] else part[1])
    return tuple(out)


def raise_all(title: str, found: Iterable[tuple[str, str]]) -> None:
    """Raise the (relative path, problem) pairs as one validation error; do nothing when there are none."""
    details = [
        InitErrorDetails(
            type=PydanticCustomError("config", "{problem}", {"problem": problem}), loc=loc_of(path), input=None
        )
        for path, problem in found
    ]
    if details:
        raise ValidationError.from_exception_data(title, details)


def reraise(e: ConfigError, base: str = "") -> NoReturn:
    """A ConfigError from a helper (policy's parsers) as a validation error at its path below `base`."""
    prefix = base if base else ""
    rel = [(p[len(prefix) :].lstrip(".") if prefix and p.startswith(prefix) else p, q) for p, q in e.problems]
    raise_all("config", rel)
    raise AssertionError("unreachable")  # pragma: no cover


# --- value types that belong to one key ---------------------------------------------------------------------


def _algorithm(v: Any) -> str:
    s = _text(v)
    if s not in ASYMMETRIC_ALGS:
        why = (
            "symmetric algorithms are refused: a JWKS public key must never act as an HMAC secret"
            if s.upper().startswith("HS")
            else "'none' is never accepted"
            if s.lower() == "none"
            else "unknown algorithm"
        )
        fail(f"{s!r}: {why} (allowed: {', '.join(ASYMMETRIC_ALGS)})")
    return s


def _token_sources(v: Any) -> tuple[str, ...]:
    from sidecar.policy import parse_sources  # policy imports this package

    try:
        return parse_sources("", v)
    except ConfigError as e:
        reraise(e)


def _origin(v: Any) -> str:
    o = _text(v)
    if o != "*" and not re.match(r"^https?://[A-Za-z0-9.*-]+(:\d+)?$", o):
        fail(f"{o!r} is not an origin (scheme://host[:port], '*' allowed in host)")
    if o != "*" and (serial := _serialised_origin(o)) != o:
        # browsers send origins serialised and the Fetch standard compares them byte for byte
        fail(f"{o!r} is never sent by a browser; write {serial!r}")
    if "*" in o and o != "*" and (o.count("*") > 1 or "://*." not in o):
        fail(f"{o!r}: '*' may only be the leftmost label, as https://*.example.com")
    return o


def _public_path(v: Any) -> str:
    path = _text(v)
    if (
        not path.startswith("/")
        or "%" in path
        or "//" in path
        or "/./" in path
        or "/../" in path
        or path.endswith(("/.", "/.."))
    ):
        fail(f"{path!r} must be a plain absolute path (no dot segments, '//' or %)")
    return path


def _cidr(v: Any) -> str:
    s = _text(v)
    try:
        ipaddress.ip_network(s, strict=False)
    except ValueError:
        fail(f"{s!r} is not an IP network (CIDR)")
    return s


def _claim_pairs(v: Any) -> tuple[tuple[str, str], ...]:
    """A mapping {Header: claim}, or NAME=CLAIM strings (a list, or comma-separated: what flags give)."""
    if v is None:
        return ()
    found: list[tuple[str, str]] = []
    out: list[tuple[str, str]] = []
    if isinstance(v, Mapping):
        items = [(str(k), x, str(k)) for k, x in v.items()]
    elif isinstance(v, list | tuple | str):
        if isinstance(v, tuple) and all(isinstance(x, tuple) for x in v):
            items = [(str(n), c, str(n)) for n, c in v]
        else:
            items = []
            for i, entry in enumerate(_list(v)):
                name, eq, claim = str(entry).partition("=")
                if not eq:
                    found.append((f"[{i}]", f"expected NAME=CLAIM, got {entry!r}"))
                    continue
                items.append((name.strip(), claim.strip(), name.strip()))
    else:
        fail("expected a mapping of header name to claim (dots for nested claims)")
    from sidecar.config.types import HEADER_NAME

    for name, claim, where in items:
        if not HEADER_NAME.match(name):
            found.append((where, f"{name!r} is not a valid HTTP header name"))
        elif not isinstance(claim, str) or not claim.strip():
            found.append((where, "expected a claim name (dots for nested claims)"))
        else:
            out.append((name, claim))
    raise_all("claim_headers", found)
    return tuple(out)


# Headers other auth proxies set for the app (oauth2-proxy, Authelia, Pomerium, Traefik forwardAuth setups,
# Kong, Google IAP, AWS ALB, Cloudflare Access, Azure Easy Auth, Vouch, authentik, Envoy/Istio, the Kubernetes
# front proxy, Apache/nginx mTLS). An app moved behind the sidecar may still trust them, so a client must never
# be able to send them. A trailing `*` makes an entry a prefix. The `foreign_identity_headers` key replaces the list.
FOREIGN_IDENTITY_HEADERS: tuple[str, ...] = (
    "X-Forwarded-User",
    "X-Forwarded-Email",
    "X-Forwarded-Groups",
    "X-Forwarded-Preferred-Username",
    "X-Forwarded-Access-Token",
    "X-Forwarded-Client-Cert",
    "X-Auth-Request-*",
    "Remote-User",
    "Remote-Groups",
    "Remote-Email",
    "Remote-Name",
    "X-Remote-*",
    "X-User",
    "X-User-Id",
    "X-Email",
    "X-Authenticated-*",
    "X-Consumer-*",
    "X-Credential-Identifier",
    "X-Anonymous-Consumer",
    "X-Userinfo",
    "X-Id-Token",
    "X-Jwt-Payload",
    "X-Jwt-Assertion",
    "X-Pomerium-*",
    "X-Goog-Authenticated-*",
    "X-Goog-Iap-Jwt-Assertion",
    "X-Amzn-Oidc-*",
    "Cf-Access-*",
    "X-Ms-Client-Principal*",
    "X-Ms-Token-*",
    "X-Vouch-*",
    "X-Authentik-*",
    "X-Ssl-Client-*",
    "X-Client-Cert*",
    "X-Client-Verify",
    "X-Client-Dn",
)
# Headers that make many frameworks (Rack, Laravel, Symfony, Express method-override, ASP.NET Core, Spring
# setups) treat a POST as another method: a request is judged under every method they name (override.py).
METHOD_OVERRIDE_HEADERS: tuple[str, ...] = ("X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override")


def _header_or_prefix(v: Any) -> str:
    """A header name; a trailing `*` makes it a prefix (at least three characters before it)."""
    from sidecar.config.types import HEADER_NAME

    name = _text(v)
    base = name[:-1] if name.endswith("*") else name
    if not HEADER_NAME.match(base) or "*" in base or (name.endswith("*") and len(base) < 3):
        fail(f"{name!r} is not a header name or a prefix like X-Auth-Request-*")
    if base.lower().replace("_", "-") in ("authorization", "cookie", "host"):
        fail(f"{name!r}: this header is judged by the token rules, not dropped")
    return name


def _param_name(v: Any) -> str:
    name = _text(v)
    if not name or any(c in name for c in "&;=# "):
        fail(f"{name!r} is not a query parameter name")
    return name


def _auth_scheme(v: Any) -> str:
    from sidecar.config.types import HEADER_NAME

    scheme = _text(v)
    if not HEADER_NAME.match(scheme):
        fail(f"{scheme!r} is not an auth scheme (a token, like Basic)")
    if scheme.lower() == "bearer":
        fail("Bearer tokens are always verified; they never pass unverified")
    return scheme


def _serialised_origin(origin: str) -> str:
    """An origin as a browser serialises it: lowercase scheme and host, no default port."""
    scheme, _, rest = origin.partition("://")
    host, colon, port = rest.partition(":")
    default = {"http": "80", "https": "443"}.get(scheme.lower())
    port = str(int(port)) if colon and port else ""
    return f"{scheme.lower()}://{host.lower()}" + (f":{port}" if port and port != default else "")


def _admin_host(v: Any) -> str:
    host = _text(v).lower().strip("[]")
    if not re.fullmatch(r"[a-z0-9.:-]+", host) or host.count(":") == 1:
        fail(f"{host!r} must be a host name or IP address, without port")
    return host


HeaderOrPrefix = Annotated[str, BeforeValidator(_header_or_prefix), WithJsonSchema({"type": "string", "minLength": 1})]
ParamName = Annotated[str, BeforeValidator(_param_name), WithJsonSchema({"type": "string", "minLength": 1})]
AuthScheme = Annotated[str, BeforeValidator(_auth_scheme), WithJsonSchema({"type": "string", "minLength": 1})]
AdminHost = Annotated[str, BeforeValidator(_admin_host), WithJsonSchema({"type": "string", "minLength": 1})]
Algorithm = Annotated[str, BeforeValidator(_algorithm), _ref("Algorithm")]
Origin = Annotated[str, BeforeValidator(_origin), WithJsonSchema({"type": "string", "minLength": 1})]
PublicPath = Annotated[str, BeforeValidator(_public_path), WithJsonSchema({"type": "string", "pattern": "^/"})]
Cidr = Annotated[str, BeforeValidator(_cidr), WithJsonSchema({"type": "string", "minLength": 1})]
_TOKEN_SOURCE = {"type": "string", "pattern": "^(header|(header|cookie|query):[A-Za-z0-9!#$%&'*+.^_`|~-]+)$"}
ClaimHeaders = Annotated[tuple[tuple[str, str], ...], BeforeValidator(_claim_pairs), _ref("ClaimHeaders")]
if TYPE_CHECKING:
    Rules = tuple[Rule, ...]
else:
    Rules = Annotated[
        tuple[Any, ...],
        BeforeValidator(lambda v: fail("expected a list of rules") if not isinstance(v, list | tuple) else v),
        WithJsonSchema({"type": "array", "items": {"x-type": "Rule"}}),
    ]


def _lower(v: Any) -> Any:
    return v.lower() if isinstance(v, str) else v


# --- the sections ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True, config=MODEL)
class JwksAuth:
    """Credentials for fetching a provider's JWKS and discovery (the Kubernetes API server's /openid/v1/jwks)."""

    bearer_token_file: Annotated[Text, Hint("required (a file holding the bearer token, re-read on every fetch)")] = (
        key(doc="a file holding the bearer token; re-read on every fetch, sent over https to that origin only")
    )


MAX_KIDLESS_CANDIDATES_LIMIT = 16  # each candidate costs a signature check per token without kid


def _provider_schema(schema: dict[str, Any]) -> None:
    schema["properties"]["audience"] = {
        "x-type": "StringList",
        "description": "alias of audiences",
    }
    schema.pop("required", None)
    schema["required"] = ["issuer"]


@dataclass(frozen=True, slots=True, kw_only=True, config=ConfigDict(**MODEL, json_schema_extra=_provider_schema))
class Provider:
    """One identity provider. A token is matched to a provider by its `iss`."""

    name: Annotated[Text, Cli(None)] = key("default", "label in metrics and admin URLs (default, provider1, ...)")
    issuer: Annotated[
        Text, Cli("issuer", required=True), Hint("required (the exact `iss` this provider's tokens carry)")
    ] = key(doc="the exact `iss` its tokens carry")
    audiences: Annotated[
        StringList, Cli("audience", many=True, required=True), Hint("required: at least one accepted `aud` value")
    ] = key(doc="accepted `aud` values, any of", min_length=1)
    jwks_url: Annotated[HttpUrl | None, Cli("jwks-url")] = key(None, "the JWKS URL (one key source per provider)")
    jwks_file: Annotated[Text | None, Cli("jwks-file")] = key(
        None,
        "a JWKS file instead (a mounted ConfigMap or Secret); must exist and parse at start, re-read when it changes",
    )
    discovery: Annotated[Boolish, Cli("discovery")] = key(
        False, "read `jwks_uri` from {issuer}/.well-known/openid-configuration (and check its `issuer`)"
    )
    algorithms: Annotated[
        tuple[Algorithm, ...],
        BeforeValidator(_list),
        Cli("algorithms", many=True),
        Hint("must list at least one algorithm"),
        WithJsonSchema(
            {
                "oneOf": [
                    {"type": "array", "items": {"x-type": "Algorithm"}, "minItems": 1},
                    {"type": "string"},
                ]
            }
        ),
    ] = key(ASYMMETRIC_ALGS, "allowed `alg` values; HS* and none are config errors", min_length=1)
    required_claims: StringList = key(("exp",), "claims that must be present (`iss` and `aud` always are)")
    revoked_kids: Annotated[frozenset[Text], BeforeValidator(_list), _ref("StringList")] = key(
        frozenset(), "keys never trusted, even while the IdP publishes them: a kid or an RFC 7638 thumbprint"
    )
    max_token_lifetime: Duration = key(
        86400.0, "refuse tokens whose exp is further than this from iat (from now, without iat); 0: no bound", ge=0
    )
    max_kidless_candidates: WholeNumber = key(
        4, "keys tried for a token without kid; 0: such tokens are refused", ge=0, le=MAX_KIDLESS_CANDIDATES_LIMIT
    )
    ca_file: Text | None = key(None, "PEM bundle that replaces the system trust for this provider's https key source")
    jwks_auth: JwksAuth | None = key(None, "credentials for the key source: {bearer_token_file: PATH}")
    token_sources: Annotated[
        tuple[str, ...],
        BeforeValidator(_token_sources),
        WithJsonSchema({"type": "array", "minItems": 1, "items": _TOKEN_SOURCE}),
    ] = key(
        ("header",),
        "where its tokens may come from: header (Authorization: Bearer), header:NAME, cookie:NAME, query:NAME",
    )

    @model_validator(mode="before")
    @classmethod
    def _alias(cls, raw: Any) -> Any:
        if isinstance(raw, Mapping) and "audience" in raw:
            if "audiences" in raw:
                fail("set audiences or its alias audience, not both")
            raw = {("audiences" if k == "audience" else k): v for k, v in raw.items()}
        return raw

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> Provider:
        sources = [
            s
            for s, on in (("jwks_url", self.jwks_url), ("jwks_file", self.jwks_file), ("discovery", self.discovery))
            if on
        ]
        if len(sources) != 1:
            raise_all(
                "provider",
                [
                    (
                        "",
                        "set exactly one key source: jwks_url, jwks_file, or discovery: true"
                        + (f" (got {', '.join(sources)})" if sources else "")
                        + " (flags: --jwks-url, --jwks-file, --discovery)",
                    )
                ],
            )
        if self.discovery and urlsplit(self.issuer).scheme not in ("http", "https"):
            raise_all("provider", [("issuer", f"discovery needs an http(s) issuer URL, got {self.issuer!r}")])
        https_source = (self.jwks_url or (self.issuer if self.discovery else "")).lower().startswith("https://")
        raise_all(
            "provider",
            [
                (
                    name,
                    "needs an https key source (jwks_url, or discovery with an https issuer)"
                    + ("; a credential is never sent in clear text" if name == "jwks_auth" else ""),
                )
                for name, value in (("ca_file", self.ca_file), ("jwks_auth", self.jwks_auth))
                if value is not None and not https_source
            ],
        )
        if self.jwks_file:
            problems = _jwks_file_problems(self.jwks_file, self.algorithms)
            context = info.context if isinstance(info.context, dict) else {}
            if problems and problems[0].startswith("cannot read") and "unread_files" in context:
                context["unread_files"].append(f"{problems[0]} (run refuses to start without it)")
                problems = []
            raise_all("provider", [("jwks_file", p) for p in problems])
        return self


def _jwks_file_problems(path: str, algorithms: tuple[str, ...]) -> list[str]:
    from sidecar.jwks import InvalidJwks, parse_jwks

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return [f"cannot read {path}: {e.strerror}"]
    try:
        parse_jwks(json.loads(data), frozenset(algorithms))
    except ValueError as e:  # json's decode error is a ValueError too
        why = str(e) if isinstance(e, InvalidJwks) else f"not JSON ({e})"
        return [f"{path} is not a usable JWK Set: {why}"]
    return []


@dataclass(frozen=True, slots=True, kw_only=True, config=MODEL)
class Cors:
    """Cross-origin requests from browsers. Off while `origins` is empty."""

    origins: Annotated[
        tuple[Origin, ...],
        BeforeValidator(_list),
        Cli("cors-origin", many=True),
        _ref("StringList"),
    ] = key((), "exact origins, `*`, or patterns like https://*.example.com (empty: CORS off)")
    methods: Annotated[
        tuple[Text, ...], BeforeValidator(lambda v: tuple(str(x).upper() for x in _list(v))), _ref("StringList")
    ] = key(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"), "methods a preflight may ask for")
    headers: HeaderList = key(("Authorization", "Content-Type"), "request headers a preflight may ask for")
    expose_headers: HeaderList = key((), "Access-Control-Expose-Headers")
    max_age: WholeNumber = key(600, "how long a browser may cache a preflight answer, seconds")
    allow_credentials: Boolish = key(False, "allow cookies and Authorization from the browser (never with `*`)")

    @property
    def enabled(self) -> bool:
        return bool(self.origins)

    @model_validator(mode="after")
    def _check(self) -> Cors:
        if self.allow_credentials and "*" in self.origins:
            raise_all(
                "cors",
                [("allow_credentials", "cannot be true with origin '*' (browsers refuse it; name the origins)")],
            )
        return self


@dataclass(frozen=True, slots=True, kw_only=True, config=MODEL)
class Jwks:
    """Fetching and keeping the providers' keys."""

    refresh: Duration = key(
        300.0, "background refresh interval (an IdP's Cache-Control max-age wins, within bounds)", ge=1
    )
    min_refresh: Duration = key(60.0, "lower bound for an IdP's Cache-Control max-age", ge=1)
    max_refresh: Duration = key(3600.0, "upper bound for it", ge=1)
    max_stale: Duration = key(86400.0, "how long the last good keys stay in use when refreshes fail", ge=0)
    refetch_cooldown: Duration = key(30.0, "at most one unknown-kid refetch per provider in this window", ge=0)
    key_retention: Annotated[Duration, Cli("key-retention")] = key(
        86400.0, "how long a key removed from the JWKS stays trusted", ge=0
    )
    fetch_timeout: Duration = key(5.0, "per JWKS / discovery request", ge=0.1)
    max_bytes: WholeNumber = key(1_048_576, "larger JWKS responses are refused", ge=1024)

    @model_validator(mode="after")
    def _check(self) -> Jwks:
        if self.min_refresh > self.max_refresh:
            raise_all("jwks", [("min_refresh", f"must not exceed jwks.max_refresh ({self.max_refresh:g}s)")])
        return self


@dataclass(frozen=True, slots=True, kw_only=True, config=MODEL)
class Limits:
    """Sizes and timeouts."""

    max_token_bytes: WholeNumber = key(8192, "longer tokens: 401 token_too_large", ge=256)
    max_header_bytes: WholeNumber = key(16384, "one header line (name + value): 431; the request line: 414", ge=1024)
    max_headers_total_bytes: WholeNumber = key(65536, "all headers together: 431", ge=4096)
    max_body_bytes: WholeNumber = key(0, "413 beyond it, by Content-Length or while streaming (0: no limit)", ge=0)
    upstream_connect_timeout: Duration = key(5.0, "connecting to the app; then 502", ge=0.1)
    upstream_timeout: Duration = key(60.0, "no response from the app for this long: 504", ge=0.1)
    drain_timeout: Duration = key(20.0, "on SIGTERM, in-flight requests get this long", ge=0)
    max_headers: WholeNumber = key(100, "header lines in one request head: 431, checked while the head arrives", ge=8)
    header_timeout: Duration = key(
        30.0, "a request head must arrive within this, from its first byte (or the accept): 408 and close", ge=0.1
    )
    idle_timeout: Duration = key(
        75.0, "keep-alive silence allowed after a response before closing (keep above the pool idle in front)", ge=0.1
    )
    body_timeout: Duration = key(60.0, "longest pause between two reads of a request body: close", ge=0.1)

    @model_validator(mode="after")
    def _check(self) -> Limits:
        if self.max_token_bytes > self.max_header_bytes:
            raise_all("limits", [("max_token_bytes", "must not exceed limits.max_header_bytes")])
        return self


@dataclass(frozen=True, slots=True, kw_only=True, config=MODEL)
class Decision:
    """An extra listener that answers auth subrequests (nginx auth_request, Traefik forwardAuth, Envoy ext_authz)."""

    listen: Annotated[HostPort, Hint("required (HOST:PORT of the decision listener)")] = key(
        doc="HOST:PORT of the decision listener"
    )
    trusted_sources: Annotated[tuple[Cidr, ...], BeforeValidator(_list), _ref("StringList")] = key(
        ("127.0.0.1/32", "::1/128"), "CIDRs whose X-Original-* / X-Forwarded-Method/-Uri headers are believed"
    )
    envoy_prefix: Text = key("/ext_authz", "Envoy's http_service.path_prefix; the original path follows it")

    @model_validator(mode="after")
    def _check(self) -> Decision:
        if not self.envoy_prefix.startswith("/") or self.envoy_prefix.endswith("/"):
            raise_all("decision", [("envoy_prefix", "must start with '/' and not end with '/'")])
        return self


@dataclass(frozen=True, slots=True, kw_only=True, config=MODEL)
class Config:
    """The whole configuration."""

    providers: Annotated[
        tuple[Provider, ...],
        Cli(None),
        Hint("at least one provider is required (flags: --issuer, --audience, --jwks-url)"),
    ] = key(doc="token issuers, at least one", min_length=1)
    listen: HostPort = key("0.0.0.0:8000", "the proxy listener, where clients (the Service) reach the sidecar")
    upstream: HttpUrl = key("http://127.0.0.1:8080", "the app: scheme://host:port, no path")
    admin_listen: HostPort = key("0.0.0.0:9901", "/healthz /readyz /metrics (+ /admin/* actions)")
    admin_actions: Annotated[Literal["off", "loopback", "on"], BeforeValidator(_lower)] = key(
        "loopback", "who may use /admin/* (refresh, list, revoke keys)"
    )
    admin_hosts: Annotated[tuple[AdminHost, ...], BeforeValidator(_list), _ref("StringList")] = key(
        (), "more Host names /admin/* answers to (e.g. a Service name), beside loopback and the listener's own"
    )
    leeway: Duration = key(60.0, "clock skew tolerated on exp, nbf and iat", ge=0)
    expired_grace: Duration = key(0.0, "accept tokens up to this long past exp + leeway, and tell the app", ge=0)
    public_paths: Annotated[
        tuple[PublicPath, ...], BeforeValidator(_list), Cli("public-path", many=True), _ref("StringList")
    ] = key((), "path prefixes (whole segments) served without a token")
    claim_headers: Annotated[ClaimHeaders, Cli("claim-header", many=True, metavar="NAME=CLAIM")] = key(
        (), "headers the app receives from verified claims: Header-Name: claim (dots for nested claims)"
    )
    identity_header_prefix: Annotated[
        HeaderName, WithJsonSchema({"allOf": [{"x-type": "HeaderName"}, {"minLength": 3}]})
    ] = key("X-Auth-", "the sidecar's header namespace; client-sent headers in it are always dropped", min_length=3)
    strip_authorization: Boolish = key(False, "true: the app never sees the token, from whichever source it came")
    authorization_passthrough: Annotated[tuple[AuthScheme, ...], BeforeValidator(_list), _ref("StringList")] = key(
        (), "Authorization schemes (e.g. Basic) forwarded unverified; any other unverified Authorization is removed"
    )
    foreign_identity_headers: Annotated[tuple[HeaderOrPrefix, ...], BeforeValidator(_list), _ref("StringList")] = key(
        FOREIGN_IDENTITY_HEADERS,
        "other auth proxies' identity headers, dropped from every request (any case, _ or -; `*` ends a prefix)",
    )
    method_override_headers: Annotated[tuple[HeaderOrPrefix, ...], BeforeValidator(_list), _ref("StringList")] = key(
        METHOD_OVERRIDE_HEADERS, "a request is also judged under every method these headers name"
    )
    method_override_params: Annotated[tuple[ParamName, ...], BeforeValidator(_list), _ref("StringList")] = key(
        ("_method",), "query and form-body parameters judged the same way"
    )
    realm: Text = key("sidecar", "the realm in WWW-Authenticate")
    token_cache_size: WholeNumber = key(
        100_000, "verified tokens remembered (by SHA-256 digest); 0 turns the cache off"
    )
    token_cache_max_bytes: WholeNumber = key(
        32 << 20, "the cache's memory bound too (large claims make large entries)", ge=1 << 20
    )
    workers: WholeNumber = key(0, "processes sharing the port; 0: the CPUs this container may use")
    log_level: Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_lower)] = key(
        "info", "JSON log lines on stderr from this level up"
    )
    reload: Boolish = key(
        True, "apply a changed config file (and SIGHUP) without a restart; false: read it once (restart to apply)"
    )
    reload_interval: Duration = key(1.0, "how often the config file is checked for a change, seconds", ge=0.1, le=60)
    cors: Cors = key(Cors, "cross-origin requests from browsers")
    jwks: Jwks = key(Jwks, "fetching and keeping keys")
    limits: Limits = key(Limits, "sizes and timeouts")
    rules: Annotated[Rules, Cli(None)] = key((), "ordered route rules, first match wins (public_paths come first)")
    unmatched: Literal["token", "public", "deny"] = key(
        "token", "what a request no rule matches needs: token (any valid token), public or deny"
    )
    route_metrics: Boolish = key(False, "count requests by rule name in sidecar_route_requests_total")
    mode: Annotated[Literal["enforce", "report"], BeforeValidator(_lower)] = key(
        "enforce", "report: forward what would be refused for its token, with X-Auth-Report (a rule's mode wins)"
    )
    decision: Decision | None = key(None, "the decision listener for gateways (off when absent)")
    websocket_close_on_expiry: Boolish = key(True, "close a proxied WebSocket when its token stops being accepted")
    proxy_engine: Annotated[Literal["lean", "aiohttp"], BeforeValidator(_lower)] = key(
        "lean", "the proxy listener's HTTP/1.1 engine: lean (llhttp on uvloop) or aiohttp (the earlier one)"
    )

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

    @model_validator(mode="before")
    @classmethod
    def _provider_names(cls, raw: Any) -> Any:
        """Unnamed providers are `default`, `provider1`, `provider2`... by position."""
        if isinstance(raw, Mapping) and isinstance(raw.get("providers"), list):
            named = [
                {"name": "default" if i == 0 else f"provider{i}", **p} if isinstance(p, Mapping) else p
                for i, p in enumerate(raw["providers"])
            ]
            raw = {**raw, "providers": named}
        return raw

    @model_validator(mode="after")
    def _check(self) -> Config:
        found: list[tuple[str, str]] = []
        for attr in ("name", "issuer"):
            seen: dict[str, int] = {}
            for i, p in enumerate(self.providers):
                value = getattr(p, attr)
                if value in seen:
                    found.append((f"providers[{i}].{attr}", f"{value!r} is already used by providers[{seen[value]}]"))
                seen.setdefault(value, i)
        found += _claim_header_problems("claim_headers", self.claim_headers, self.identity_header_prefix)
        found += _listener_problems(self)
        if urlsplit(self.upstream).path not in ("", "/") or urlsplit(self.upstream).query:
            found.append(("upstream", "must be scheme://host:port only; the request path is forwarded as is"))
        raise_all("config", found)
        object.__setattr__(self, "upstream", self.upstream.rstrip("/"))
        object.__setattr__(self, "realm", self.realm.replace('"', "'"))
        if not all(type(r).__name__ == "Rule" for r in self.rules) or not self.rules:
            object.__setattr__(self, "rules", self._parse_rules(list(self.rules)))
        return self

    def _parse_rules(self, raw: list[Any]) -> tuple[Rule, ...]:
        from sidecar.policy import parse_rules  # policy imports this package

        prefix = self.identity_header_prefix

        def claim_headers(value: Any, where: str) -> tuple[tuple[str, str], ...]:
            try:
                pairs = _claim_pairs(value)
            except ValidationError as e:
                raise ConfigError(f"{where}{_path(e.errors()[0]['loc'])}", e.errors()[0]["msg"]) from None
            except PydanticCustomError as e:
                raise ConfigError(where, e.message()) from None
            problems = _claim_header_problems(where, pairs, prefix)
            if problems:
                raise ConfigError(*problems[0], more=problems[1:])
            return pairs

        try:
            return parse_rules(raw, {p.name for p in self.providers}, claim_headers, self.public_paths)
        except ConfigError as e:
            reraise(e)


def _claim_header_problems(where: str, pairs: tuple[tuple[str, str], ...], prefix: str) -> list[tuple[str, str]]:
    from sidecar.headers import GRACE_SUFFIX, REPORT_SUFFIX

    want = prefix.lower().replace("_", "-")
    # the sidecar's own verdict headers: a claim copied into one would read as a verdict to the app
    reserved = {(want + suffix).lower() for suffix in (GRACE_SUFFIX, REPORT_SUFFIX)}
    return [
        (f"{where}.{name}", f"must start with identity_header_prefix {prefix!r}, so a client can never send it itself")
        for name, _ in pairs
        if not name.lower().replace("_", "-").startswith(want)
    ] + [
        (f"{where}.{name}", "is a header the sidecar sets itself (grace or report verdict)")
        for name, _ in pairs
        if name.lower().replace("_", "-") in reserved
    ]


def _listener_problems(cfg: Config) -> list[tuple[str, str]]:
    """Two listeners on one port clash when their hosts are equal or either is a wildcard address."""
    named = [("listen", cfg.listen), ("admin_listen", cfg.admin_listen)]
    if cfg.decision is not None:
        named.append(("decision.listen", cfg.decision.listen))
    found = []
    for i, (key_i, addr_i) in enumerate(named):
        for key_j, addr_j in named[:i]:
            if listeners_clash(addr_i, addr_j):
                found.append(
                    (key_i, f"{addr_i} is the same address as {key_j} ({addr_j}): each listener needs its own")
                )
                break
    return found


def split_hostport(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    return host.strip("[]"), int(port)


def listeners_clash(a: str, b: str) -> bool:
    (ha, pa), (hb, pb) = split_hostport(a), split_hostport(b)
    wildcard = ("0.0.0.0", "::", "", "*")
    return pa == pb and (ha == hb or ha in wildcard or hb in wildcard)


def _lists(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _lists(x) for k, x in v.items()}
    if isinstance(v, tuple | list):
        return [_lists(x) for x in v]
    return v


def rule_to_file(rule: Rule) -> dict[str, Any]:
    """A rule back in the config file's shape (for `check-config`'s effective config)."""
    out: dict[str, Any] = {"name": rule.name, rule.kind: rule.path}
    if rule.methods:
        out["methods"] = sorted(rule.methods)
    for k in ("public", "deny", "strip_authorization"):
        if getattr(rule, k):
            out[k] = getattr(rule, k)
    if rule.mode is not None:
        out["mode"] = rule.mode
    for k in ("providers", "scopes", "scopes_any", "clients"):
        if getattr(rule, k):
            out[k] = list(getattr(rule, k))
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


# --- loading ----------------------------------------------------------------------------------------------------


def section_class(annotation: Any) -> type[Any] | None:
    """The config class a field holds (Cors; Decision | None; Provider in tuple[Provider, ...]), else None."""
    candidates = list(typing.get_args(annotation)) if typing.get_origin(annotation) in _WRAPPERS else [annotation]
    for c in candidates:
        if isinstance(c, type) and hasattr(c, "__pydantic_fields__"):
            return c
    return None


_WRAPPERS = (typing.Union, types.UnionType, tuple)
# where each section's keys are declared, by the first key of a path ("" is the top level)
SECTIONS: dict[str, type[Any]] = {
    "": Config,
    **{
        name: cls
        for name, info in getattr(Config, "__pydantic_fields__", {}).items()
        if (cls := section_class(info.annotation)) is not None
    },
}


def fields_of(cls: type[Any]) -> dict[str, FieldInfo]:
    """The declared keys of a section class, in order, with their types, defaults and descriptions."""
    found: dict[str, FieldInfo] = getattr(cls, "__pydantic_fields__", {})
    return found


def _path(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _section(loc: tuple[str | int, ...]) -> type[Any] | None:
    names = [p for p in loc if isinstance(p, str)]
    return SECTIONS.get(names[0] if names else "")


def _field_hint(loc: tuple[str | int, ...]) -> Hint | None:
    names = [p for p in loc if isinstance(p, str)]
    cls = SECTIONS.get(names[0] if len(names) > 1 else "")
    if cls is None or not names:
        return None
    info = fields_of(cls).get(names[-1])
    if info is None:
        return None
    return next((m for m in info.metadata if isinstance(m, Hint)), None)


def problems_of(e: ValidationError) -> list[tuple[str, str]]:
    """pydantic's errors in our words: (key path, problem)."""
    out: list[tuple[str, str]] = []
    errors = e.errors(include_url=False)
    deeper = {err["loc"][:n] for err in errors for n in range(len(err["loc"]))}
    for err in errors:
        if err["type"] == "too_short" and err["loc"] in deeper:
            continue  # a list whose items all failed is not also "empty"
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "tagged-union"))))
        kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
        path = _path(loc) or "(top level)"
        hint = _field_hint(loc)
        if kind == "config":
            problem = str(ctx.get("problem", err["msg"]))
        elif kind == "missing" or (kind == "too_short" and hint is not None):
            problem = hint.text if hint else "required"
        elif kind in ("unexpected_keyword_argument", "extra_forbidden"):
            cls = _section(loc[:-1])
            allowed = sorted(fields_of(cls)) if cls else []
            problem = "unknown key" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
        elif kind == "greater_than_equal":
            shown = f"{value:g}" if isinstance(value, int | float) else repr(value)
            problem = f"must be at least {ctx['ge']:g}, got {shown}"
        elif kind == "less_than_equal":
            shown = f"{value:g}" if isinstance(value, int | float) else repr(value)
            problem = f"must be at most {ctx['le']:g}, got {shown}"
        elif kind == "too_short":
            problem = f"must list at least {ctx.get('min_length', 1)}"
        elif kind == "string_too_short":
            problem = "too short to be a namespace" if loc == ("identity_header_prefix",) else err["msg"]
        elif kind == "literal_error":
            expected = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
            problem = f"expected one of {expected}, got {value!r}"
        elif kind in ("dataclass_type", "dataclass_args_type", "dict_type", "model_type"):
            problem = f"expected a mapping, got {type(value).__name__}"
        elif kind in ("tuple_type", "list_type"):
            problem = f"expected a list, got {type(value).__name__}"
        else:
            problem = str(err["msg"])
        out.append((path, problem))
    return out


def load(raw: Mapping[str, Any] | None, unread_files: list[str] | None = None) -> Config:
    """Check a merged config mapping and freeze it. Raises ConfigError naming every problem with its key path.

    A key file that cannot be read is a problem, unless `unread_files` is given: then it is noted there
    (`check-config` on a machine that is not the pod) and only a file that exists but is not a JWKS fails."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError("(top level)", f"expected a mapping, got {type(raw).__name__}")
    try:
        return _ADAPTER.validate_python(raw, context=None if unread_files is None else {"unread_files": unread_files})
    except ValidationError as e:
        found = problems_of(e)
        raise ConfigError(*found[0], more=found[1:]) from None


_ADAPTER: TypeAdapter[Config] = TypeAdapter(Config)
