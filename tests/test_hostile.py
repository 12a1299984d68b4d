"""Hostile input against a real `sidecar run` process.

Every case checks three invariants besides its own expected answer:
  1. nothing forged, malformed or invalid reaches the app (`upstream.record` stays empty), and an accepted
     request reaches it exactly once;
  2. the sidecar never answers 5xx;
  3. no client-sent identity header (`X-Auth-*` in any case, `_` for `-`) reaches the app; the only ones
     the app sees are those the sidecar set from verified claims.
401s must carry `WWW-Authenticate: Bearer realm=...` (with `error="invalid_token"` unless no token was
sent), a JSON `reason` from errors.py, and move `sidecar_auth_failures_total{reason=...}` by exactly one.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from sidecar import errors
from sidecar.devtools.issuer import DevIssuer, new_key
from tests.conftest import ORIGIN, Upstream, sidecar_args
from tests.hostile_cases import (
    AUDIENCE,
    DROP,
    Ring,
    b64u,
    flip_sig_byte,
    jws,
    self_signed_cert_der,
    swap_header,
    swap_payload,
    with_hmac,
    with_key,
)
from tests.support import Reply, SidecarProcess, ThreadedServer, raw, request, scrape

REALM = "sidecar"
AUTH_REASONS = set(errors.AUTH_REASONS)
REQUEST_REASONS = set(errors.REQUEST_REASONS)


# --- fixtures ------------------------------------------------------------------------------------------


class Attacker:
    """An attacker-controlled HTTP server (for jku / x5u): records every hit."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        app = web.Application()

        async def any_(request: web.Request) -> web.Response:
            self.hits.append(request.raw_path)
            return web.json_response({"keys": []})

        app.router.add_route("*", "/{tail:.*}", any_)
        self.server = ThreadedServer(app)


@pytest.fixture(scope="module")
def attacker() -> Iterator[Attacker]:
    a = Attacker()
    yield a
    a.server.stop()


@pytest.fixture(scope="module")
def ring(issuer: DevIssuer, attacker: Attacker) -> Ring:
    """Publish an ES256, an Ed25519 and an alg-less RSA key next to the issuer's RS256 key, before start."""
    es, ed, bare = new_key("ES256"), new_key("EdDSA"), new_key("RS256")
    issuer.keys.extend([es, ed])
    jwk = bare.public_jwk()
    del jwk["alg"]
    issuer.extra_keys.append(jwk)
    return Ring(
        issuer=issuer,
        rs=issuer.signing,
        es=es,
        ed=ed,
        bare=bare,
        evil_rs=new_key("RS256"),
        evil_es=new_key("ES256"),
        evil_ed=new_key("EdDSA"),
        attacker_url=attacker.server.url,
    )


@pytest.fixture(scope="module")
def sidecar(ring: Ring, issuer: DevIssuer, upstream: Upstream) -> Iterator[SidecarProcess]:
    # one worker: cache-hit cases need the second request to reach the process that cached the first
    proc = SidecarProcess(sidecar_args(issuer, upstream, "--workers", "1")).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def rs256_only(ring: Ring, issuer: DevIssuer, upstream: Upstream) -> Iterator[SidecarProcess]:
    proc = SidecarProcess(sidecar_args(issuer, upstream, "--algorithms", "RS256")).start()
    yield proc
    proc.stop()


# --- expectations and the one checker every case goes through ------------------------------------------


@dataclass(frozen=True)
class Reject:
    reason: str
    status: int | None = None  # default: from errors.py


@dataclass(frozen=True)
class Pass:
    path: str | None = None  # what the app must receive (default: what was sent)
    identity: tuple[tuple[str, str], ...] | None = (("x-auth-roles", "user"), ("x-auth-subject", "alice"))
    grace: tuple[float, float] | None = None  # expected X-Auth-Token-Expired-Seconds range


@dataclass(frozen=True)
class Refused:
    """Refused by the HTTP parser before the sidecar's handler runs (no JSON reason, no metric)."""

    statuses: tuple[int, ...] = (400,)


Expect = Reject | Pass | Refused
_BY_REASON = {c.reason: c for c in errors.all_reasons()}


def is_identity(name: str) -> bool:
    return name.lower().replace("_", "-").startswith("x-auth-")


def identity_seen(rec: dict[str, Any]) -> list[tuple[str, str]]:
    return sorted((n.lower(), v) for n, v in rec["headers"] if is_identity(n))


def failures_total(metrics: dict[str, float], family: str = "auth") -> float:
    name = "sidecar_auth_failures_total{" if family == "auth" else "sidecar_requests_rejected_total{"
    return sum(v for k, v in metrics.items() if k.startswith(name))


def series_value(metrics: dict[str, float], family: str, reason: str) -> float:
    name = "sidecar_auth_failures_total" if family == "auth" else "sidecar_requests_rejected_total"
    return metrics.get(f'{name}{{reason="{reason}"}}', 0.0)


def check(
    sc: SidecarProcess,
    up: Upstream,
    expect: Expect,
    *,
    method: str = "GET",
    path: str = "/api/resource",
    headers: list[tuple[str, str]] | None = None,
    body: bytes | None = None,
    token: str | None = None,
    metrics: bool = True,
) -> Reply:
    hdrs = list(headers or [])
    if token is not None:
        hdrs.append(("Authorization", f"Bearer {token}"))
    up.clear()
    before = scrape(sc.admin) if metrics else {}
    r = request(sc.url, method=method, path=path, headers=hdrs, body=body)
    assert r.status < 500, f"5xx from the sidecar: {r.status} {r.body[:300]!r}"
    if isinstance(expect, Refused):
        assert up.record == [], f"refused request reached the app: {up.record}"
        assert r.status in expect.statuses, (r.status, r.body[:300])
    elif isinstance(expect, Reject):
        cls = _BY_REASON[expect.reason]
        status = expect.status or cls.status
        assert up.record == [], f"rejected request reached the app: {up.record}"
        assert (r.status, _reason(r)) == (status, expect.reason), r.body[:300]
        if cls.family == "auth":
            www = r.header("WWW-Authenticate") or ""
            assert www.startswith(f'Bearer realm="{REALM}"'), www
            if cls.error is None:
                assert "error=" not in www, www
            else:
                assert f'error="{cls.error}"' in www, www
        if metrics:
            after = scrape(sc.admin)
            assert series_value(after, cls.family, expect.reason) == series_value(before, cls.family, expect.reason) + 1
            assert failures_total(after, cls.family) == failures_total(before, cls.family) + 1
    else:
        assert r.status == 200, r.body[:300]
        assert len(up.record) == 1, up.record
        rec = up.record[0]
        assert rec["path"] == (expect.path or path)
        seen = identity_seen(rec)
        grace_hdr = [v for n, v in seen if n == "x-auth-token-expired-seconds"]
        seen = [(n, v) for n, v in seen if n != "x-auth-token-expired-seconds"]
        if expect.identity is not None:
            assert seen == sorted(expect.identity), seen
        if expect.grace is None:
            assert grace_hdr == [], grace_hdr
        else:
            assert len(grace_hdr) == 1 and expect.grace[0] <= float(grace_hdr[0]) <= expect.grace[1], grace_hdr
        if token is not None and not any(k.lower() == "connection" for k, _ in hdrs):
            auth = [v for n, v in rec["headers"] if n.lower() == "authorization"]
            assert auth == [f"Bearer {token}"], auth
    return r


def _reason(r: Reply) -> str | None:
    try:
        return r.json().get("reason")
    except ValueError:
        return None


NO_IDENTITY: tuple[tuple[str, str], ...] = ()
T = Callable[[Ring], str]
MIN = 60


# ======================================================================================================
# 1. forged and confused algorithms
# ======================================================================================================

ALG_CASES = [
    pytest.param(
        lambda k: jws(k.header(k.rs, "none"), k.claims()), Reject("unsupported_alg"), id="alg-none-no-signature"
    ),
    pytest.param(
        lambda k: jws(k.header(k.rs, "None"), k.claims()), Reject("unsupported_alg"), id="alg-None-no-signature"
    ),
    pytest.param(
        lambda k: jws(k.header(k.rs, "NONE"), k.claims()), Reject("unsupported_alg"), id="alg-NONE-no-signature"
    ),
    pytest.param(
        lambda k: jws(k.header(k.rs, "nOnE"), k.claims()), Reject("unsupported_alg"), id="alg-nOnE-no-signature"
    ),
    pytest.param(
        lambda k: jws(k.header(k.rs, "none"), k.claims(), with_key(k.rs, "RS256")),
        Reject("unsupported_alg"),
        id="alg-none-with-valid-rs256-signature",
    ),
    pytest.param(
        lambda k: jws(k.header(k.rs, "none", kid=DROP), k.claims()),
        Reject("unsupported_alg"),
        id="alg-none-without-kid",
    ),
    pytest.param(
        lambda k: jws(k.header(k.rs, "none"), k.claims()).rstrip("."), Reject("malformed"), id="alg-none-two-segments"
    ),
    pytest.param(
        lambda k: jws(k.header(k.rs, "HS256"), k.claims(), with_hmac(k.rs_public_pem(), "HS256")),
        Reject("unsupported_alg"),
        id="hs256-secret-is-rsa-public-pem",
    ),
    pytest.param(
        lambda k: jws(k.header(k.rs, "HS384"), k.claims(), with_hmac(k.rs_public_pem(), "HS384")),
        Reject("unsupported_alg"),
        id="hs384-secret-is-rsa-public-pem",
    ),
    pytest.param(
        lambda k: jws(k.header(k.rs, "HS512"), k.claims(), with_hmac(k.rs_public_pem(), "HS512")),
        Reject("unsupported_alg"),
        id="hs512-secret-is-rsa-public-pem",
    ),
    pytest.param(
        lambda k: jws(k.header(k.rs, "HS256"), k.claims(), with_hmac(k.rs_public_pem("pkcs1"))),
        Reject("unsupported_alg"),
        id="hs256-secret-is-rsa-pkcs1-pem",
    ),
    pytest.param(
        lambda k: jws(k.header(k.rs, "HS256"), k.claims(), with_hmac(k.rs_public_pem("der"))),
        Reject("unsupported_alg"),
        id="hs256-secret-is-rsa-der",
    ),
    pytest.param(
        lambda k: jws(k.header(k.rs, "HS256"), k.claims(), with_hmac(k.rs_public_jwk()["n"].encode())),
        Reject("unsupported_alg"),
        id="hs256-secret-is-jwk-n-string",
    ),
    pytest.param(
        lambda k: jws(k.header(k.rs, "HS256"), k.claims(), with_hmac(json.dumps(k.rs_public_jwk()).encode())),
        Reject("unsupported_alg"),
        id="hs256-secret-is-whole-jwk-json",
    ),
    pytest.param(
        lambda k: jws(k.header(k.rs, "HS256", kid=DROP), k.claims(), with_hmac(k.rs_public_pem())),
        Reject("unsupported_alg"),
        id="hs256-pem-secret-without-kid",
    ),
    pytest.param(
        lambda k: jws(k.header(k.rs, "HS256"), k.claims(), with_hmac(b"")),
        Reject("unsupported_alg"),
        id="hs256-empty-secret",
    ),
    pytest.param(
        lambda k: jws(k.header(k.es, "RS256"), k.claims(), with_key(k.es, "ES256")),
        Reject("unsupported_alg"),
        id="rs256-header-es256-key-kid",
    ),
    pytest.param(
        lambda k: jws(k.header(k.rs, "ES256"), k.claims(), with_key(k.rs, "RS256")),
        Reject("unsupported_alg"),
        id="es256-header-rsa-key-kid",
    ),
    pytest.param(
        lambda k: jws(k.header(k.rs, "EdDSA"), k.claims(), with_key(k.ed, "EdDSA")),
        Reject("unsupported_alg"),
        id="eddsa-token-with-kid-of-rsa-key",
    ),
    pytest.param(
        lambda k: jws(k.header(k.ed, "ES256"), k.claims(), with_key(k.es, "ES256")),
        Reject("unsupported_alg"),
        id="es256-token-with-kid-of-ed25519-key",
    ),
    pytest.param(
        lambda k: jws(k.header(k.es, "ES384"), k.claims(), with_key(k.evil_es, "ES256")),
        Reject("unsupported_alg"),
        id="es384-with-p256-key-kid",
    ),
    pytest.param(lambda k: k.token(k.rs, "PS256"), Reject("unsupported_alg"), id="ps256-with-rsa-key-declared-rs256"),
    pytest.param(lambda k: k.token(k.rs, "RS384"), Reject("unsupported_alg"), id="rs384-with-rsa-key-declared-rs256"),
    pytest.param(lambda k: k.token(k.bare, "PS256"), Pass(), id="ps256-with-alg-less-rsa-key-passes"),
    pytest.param(lambda k: k.token(k.bare, "RS512"), Pass(), id="rs512-with-alg-less-rsa-key-passes"),
    pytest.param(lambda k: k.token(k.es), Pass(), id="es256-published-key-passes"),
    pytest.param(lambda k: k.token(k.ed), Pass(), id="eddsa-published-key-passes"),
    pytest.param(lambda k: k.token(k.rs), Pass(), id="rs256-published-key-passes"),
    pytest.param(
        lambda k: jws(k.header(k.rs, DROP), k.claims(), with_key(k.rs, "RS256")), Reject("malformed"), id="alg-missing"
    ),
    pytest.param(
        lambda k: jws(k.header(k.rs, None), k.claims(), with_key(k.rs, "RS256")), Reject("malformed"), id="alg-null"
    ),
    pytest.param(
        lambda k: jws(k.header(k.rs, 256), k.claims(), with_key(k.rs, "RS256")), Reject("malformed"), id="alg-integer"
    ),
    pytest.param(
        lambda k: jws(k.header(k.rs, ["RS256"]), k.claims(), with_key(k.rs, "RS256")),
        Reject("malformed"),
        id="alg-list",
    ),
    pytest.param(
        lambda k: jws(k.header(k.rs, {"name": "RS256"}), k.claims(), with_key(k.rs, "RS256")),
        Reject("malformed"),
        id="alg-object",
    ),
    pytest.param(
        lambda k: jws(k.header(k.rs, True), k.claims(), with_key(k.rs, "RS256")), Reject("malformed"), id="alg-bool"
    ),
    pytest.param(
        lambda k: jws(k.header(k.rs, ""), k.claims(), with_key(k.rs, "RS256")),
        Reject("unsupported_alg"),
        id="alg-empty-string",
    ),
    pytest.param(
        lambda k: jws(k.header(k.rs, "rs256"), k.claims(), with_key(k.rs, "RS256")),
        Reject("unsupported_alg"),
        id="alg-lowercase-rs256",
    ),
    pytest.param(
        lambda k: jws(k.header(k.rs, "RS256 "), k.claims(), with_key(k.rs, "RS256")),
        Reject("unsupported_alg"),
        id="alg-trailing-space",
    ),
    pytest.param(
        lambda k: jws(k.header(k.rs, "ES256K"), k.claims(), with_key(k.rs, "RS256")),
        Reject("unsupported_alg"),
        id="alg-es256k-not-in-allowlist",
    ),
    pytest.param(
        lambda k: jws(k.header(k.rs, "RSA-OAEP"), k.claims(), with_key(k.rs, "RS256")),
        Reject("unsupported_alg"),
        id="alg-encryption-alg",
    ),
]


@pytest.mark.parametrize(("build", "expect"), ALG_CASES)
def test_forged_or_confused_alg_never_reaches_app(
    build: T, expect: Expect, ring: Ring, sidecar: SidecarProcess, upstream: Upstream
) -> None:
    check(sidecar, upstream, expect, token=build(ring))


ALLOWLIST_CASES = [
    pytest.param(lambda k: k.token(k.es), Reject("unsupported_alg"), id="valid-es256-outside-rs256-allowlist"),
    pytest.param(lambda k: k.token(k.ed), Reject("unsupported_alg"), id="valid-eddsa-outside-rs256-allowlist"),
    pytest.param(
        lambda k: k.token(k.bare, "PS256"), Reject("unsupported_alg"), id="valid-ps256-outside-rs256-allowlist"
    ),
    pytest.param(
        lambda k: k.token(k.bare, "RS512"), Reject("unsupported_alg"), id="valid-rs512-outside-rs256-allowlist"
    ),
    pytest.param(
        lambda k: jws(k.header(k.rs, "HS256"), k.claims(), with_hmac(k.rs_public_pem())),
        Reject("unsupported_alg"),
        id="hs256-pem-secret-rs256-allowlist",
    ),
    pytest.param(
        lambda k: jws(k.header(k.rs, "none"), k.claims()), Reject("unsupported_alg"), id="none-rs256-allowlist"
    ),
    pytest.param(lambda k: k.token(k.rs), Pass(), id="valid-rs256-passes-rs256-allowlist"),
]


@pytest.mark.parametrize(("build", "expect"), ALLOWLIST_CASES)
def test_alg_outside_configured_allowlist_is_refused(
    build: T, expect: Expect, ring: Ring, rs256_only: SidecarProcess, upstream: Upstream
) -> None:
    check(rs256_only, upstream, expect, token=build(ring))


# ======================================================================================================
# 2. key material named or carried by the token itself
# ======================================================================================================

INJECTED_CASES = [
    pytest.param(
        lambda k: k.token(k.evil_rs, hdr={"jwk": k.evil_jwk()}), Reject("unknown_kid"), id="embedded-jwk-attacker-kid"
    ),
    pytest.param(
        lambda k: k.token(k.evil_rs, hdr={"jwk": k.evil_jwk(), "kid": k.rs.kid}),
        Reject("bad_signature"),
        id="embedded-jwk-with-trusted-kid",
    ),
    pytest.param(
        lambda k: k.token(k.evil_rs, hdr={"jwk": k.evil_jwk(), "kid": DROP}),
        Reject("unknown_kid"),
        id="embedded-jwk-no-kid",
    ),
    pytest.param(
        lambda k: k.token(k.evil_rs, hdr={"jku": f"{k.attacker_url}/jwks.json"}),
        Reject("unknown_kid"),
        id="jku-attacker-url",
    ),
    pytest.param(
        lambda k: k.token(k.evil_rs, hdr={"jku": f"{k.attacker_url}/jwks.json", "kid": k.rs.kid}),
        Reject("bad_signature"),
        id="jku-attacker-url-trusted-kid",
    ),
    pytest.param(
        lambda k: k.token(k.evil_rs, hdr={"jku": f"{k.issuer.issuer}/jwks.json", "kid": k.rs.kid}),
        Reject("bad_signature"),
        id="jku-real-issuer-url-attacker-signature",
    ),
    pytest.param(
        lambda k: k.token(k.evil_rs, hdr={"x5u": f"{k.attacker_url}/cert.pem"}),
        Reject("unknown_kid"),
        id="x5u-attacker-url",
    ),
    pytest.param(
        lambda k: k.token(k.evil_rs, hdr={"x5u": f"{k.attacker_url}/cert.pem", "kid": k.rs.kid}),
        Reject("bad_signature"),
        id="x5u-attacker-url-trusted-kid",
    ),
    pytest.param(
        lambda k: k.token(k.evil_rs, hdr={"x5c": [b64u(self_signed_cert_der(k.evil_rs))], "kid": DROP}),
        Reject("unknown_kid"),
        id="x5c-attacker-cert-no-kid",
    ),
    pytest.param(
        lambda k: k.token(k.evil_rs, hdr={"x5c": [b64u(self_signed_cert_der(k.evil_rs))], "kid": k.rs.kid}),
        Reject("bad_signature"),
        id="x5c-attacker-cert-trusted-kid",
    ),
    pytest.param(
        lambda k: k.token(k.rs, hdr={"crit": ["x-unknown"], "x-unknown": True}),
        Reject("malformed"),
        id="crit-unknown-extension",
    ),
    pytest.param(lambda k: k.token(k.rs, hdr={"crit": ["exp"]}), Reject("malformed"), id="crit-registered-name"),
    pytest.param(lambda k: k.token(k.rs, hdr={"crit": []}), Reject("malformed"), id="crit-empty-list"),
    pytest.param(lambda k: k.token(k.rs, hdr={"b64": False, "crit": ["b64"]}), Reject("malformed"), id="b64-false"),
    pytest.param(lambda k: k.token(k.rs, hdr={"b64": False}), Reject("malformed"), id="b64-false-without-crit"),
    pytest.param(lambda k: k.token(k.rs, hdr={"zip": "DEF"}), Reject("malformed"), id="zip-deflate"),
    pytest.param(lambda k: k.token(k.rs, hdr={"enc": "A256GCM"}), Reject("malformed"), id="enc-member"),
    pytest.param(
        lambda k: k.token(k.rs, hdr={"jwk": k.rs_public_jwk()}),
        Pass(),
        id="embedded-jwk-ignored-token-from-trusted-key-passes",
    ),
]


@pytest.mark.parametrize(("build", "expect"), INJECTED_CASES)
def test_key_material_in_token_header_is_never_trusted_or_fetched(
    build: T, expect: Expect, ring: Ring, sidecar: SidecarProcess, upstream: Upstream, attacker: Attacker
) -> None:
    check(sidecar, upstream, expect, token=build(ring))
    assert attacker.hits == [], f"the sidecar fetched an attacker URL named by the token: {attacker.hits}"


# ======================================================================================================
# 3. kid tricks
# ======================================================================================================

KID_CASES = [
    pytest.param(lambda k: k.token(k.evil_rs), Reject("unknown_kid"), id="unknown-kid"),
    pytest.param(
        lambda k: k.token(k.evil_rs, hdr={"kid": "../../dev/null"}), Reject("unknown_kid"), id="kid-path-traversal"
    ),
    pytest.param(
        lambda k: k.token(k.evil_rs, hdr={"kid": "/etc/passwd"}), Reject("unknown_kid"), id="kid-absolute-path"
    ),
    pytest.param(lambda k: k.token(k.evil_rs, hdr={"kid": "x' OR '1'='1"}), Reject("unknown_kid"), id="kid-sql-ish"),
    pytest.param(
        lambda k: k.token(k.evil_rs, hdr={"kid": "$(touch /tmp/pwn)"}), Reject("unknown_kid"), id="kid-shell-ish"
    ),
    pytest.param(lambda k: k.token(k.evil_rs, hdr={"kid": ""}), Reject("unknown_kid"), id="kid-empty-string"),
    pytest.param(lambda k: k.token(k.evil_rs, hdr={"kid": 1}), Reject("malformed"), id="kid-integer"),
    pytest.param(lambda k: k.token(k.rs, hdr={"kid": 0}), Reject("malformed"), id="kid-zero-signed-by-trusted-key"),
    pytest.param(lambda k: k.token(k.evil_rs, hdr={"kid": None}), Reject("malformed"), id="kid-null"),
    pytest.param(lambda k: k.token(k.evil_rs, hdr={"kid": [k.rs.kid]}), Reject("malformed"), id="kid-list"),
    pytest.param(lambda k: k.token(k.evil_rs, hdr={"kid": {"kid": k.rs.kid}}), Reject("malformed"), id="kid-object"),
    pytest.param(lambda k: k.token(k.evil_rs, hdr={"kid": True}), Reject("malformed"), id="kid-bool"),
    pytest.param(lambda k: k.token(k.evil_rs, hdr={"kid": "k" * 4000}), Reject("unknown_kid"), id="kid-very-long"),
    pytest.param(
        lambda k: k.token(k.evil_rs, hdr={"kid": k.rs.kid + "\x00"}), Reject("unknown_kid"), id="kid-trusted-plus-nul"
    ),
    pytest.param(
        lambda k: k.token(k.evil_rs, hdr={"kid": k.rs.kid + "\n"}), Reject("unknown_kid"), id="kid-trusted-plus-newline"
    ),
    pytest.param(
        lambda k: k.token(k.evil_rs, hdr={"kid": k.rs.kid.upper()}), Reject("unknown_kid"), id="kid-case-variant"
    ),
    pytest.param(
        lambda k: k.token(k.evil_rs, hdr={"kid": k.rs.kid}),
        Reject("bad_signature"),
        id="trusted-kid-signed-by-attacker",
    ),
    pytest.param(
        lambda k: k.token(k.bare, "RS256", hdr={"kid": k.rs.kid}),
        Reject("bad_signature"),
        id="trusted-kid-signed-by-other-trusted-key",
    ),
    pytest.param(
        lambda k: k.token(k.evil_es, hdr={"kid": k.es.kid}),
        Reject("bad_signature"),
        id="trusted-ec-kid-signed-by-attacker-ec",
    ),
    pytest.param(
        lambda k: k.token(k.evil_ed, hdr={"kid": k.ed.kid}),
        Reject("bad_signature"),
        id="trusted-ed25519-kid-signed-by-attacker",
    ),
    pytest.param(lambda k: k.token(k.rs, hdr={"kid": DROP}), Pass(), id="no-kid-several-keys-published"),
]


@pytest.mark.parametrize(("build", "expect"), KID_CASES)
def test_kid_tricks_are_rejected(
    build: T, expect: Expect, ring: Ring, sidecar: SidecarProcess, upstream: Upstream
) -> None:
    check(sidecar, upstream, expect, token=build(ring))


# ======================================================================================================
# 4. tampered and malformed tokens
# ======================================================================================================


def _pad_sig(k: Ring) -> str:
    t = k.token()
    pad = "=" * (-len(t.split(".")[2]) % 4)
    return t + (pad or "==")


TAMPER_CASES = [
    pytest.param(lambda k: flip_sig_byte(k.token()), Reject("bad_signature"), id="flipped-signature-byte"),
    pytest.param(lambda k: flip_sig_byte(k.token(k.es), 3), Reject("bad_signature"), id="flipped-es256-signature-byte"),
    pytest.param(lambda k: flip_sig_byte(k.token(k.ed), 3), Reject("bad_signature"), id="flipped-eddsa-signature-byte"),
    pytest.param(
        lambda k: swap_payload(k.token(sub="alice"), k.token(sub="admin")),
        Reject("bad_signature"),
        id="payload-swapped-from-other-token",
    ),
    pytest.param(
        lambda k: swap_payload(k.token(), jws({}, k.claims(sub="admin"))), Reject("bad_signature"), id="payload-edited"
    ),
    pytest.param(
        lambda k: swap_header(k.token(), k.token(k.es)), Reject("bad_signature"), id="header-swapped-es-onto-rs"
    ),
    pytest.param(
        lambda k: swap_header(k.token(), jws(k.header(k.rs, typ="at+jwt"), {})),
        Reject("bad_signature"),
        id="header-edited-same-alg-kid",
    ),
    pytest.param(lambda k: k.token()[:-10], Reject("bad_signature"), id="truncated-signature-by-10"),
    pytest.param(lambda k: k.token()[:-1], Reject("malformed"), id="truncated-signature-by-1-bad-base64-length"),
    pytest.param(lambda k: k.token().rsplit(".", 1)[0] + ".", Reject("bad_signature"), id="empty-signature"),
    pytest.param(lambda k: k.token() + ".extra", Reject("malformed"), id="extra-segment"),
    pytest.param(lambda k: k.token() + ".", Reject("malformed"), id="trailing-dot"),
    pytest.param(lambda k: k.token().rsplit(".", 1)[0], Reject("malformed"), id="two-segments"),
    pytest.param(lambda k: k.token().split(".")[0], Reject("malformed"), id="one-segment"),
    pytest.param(
        lambda k: ".".join([b64u(b'{"alg":"RSA-OAEP","enc":"A256GCM"}'), "AAAA", "BBBB", "CCCC", "DDDD"]),
        Reject("malformed"),
        id="five-segments-jwe-shape",
    ),
    pytest.param(lambda k: ".".join([k.token(), k.token()]), Reject("malformed"), id="two-tokens-joined"),
    pytest.param(lambda k: "..", Reject("malformed"), id="only-dots"),
    pytest.param(lambda k: "....", Reject("malformed"), id="four-dots"),
    pytest.param(lambda k: "!!!.!!!.!!!", Reject("malformed"), id="non-base64-characters"),
    pytest.param(lambda k: "a" + k.token(), Reject("malformed"), id="header-bad-base64-length"),
    pytest.param(lambda k: _pad_sig(k), Reject("malformed"), id="base64-padding-on-signature"),
    pytest.param(lambda k: k.token().replace(".", "==.", 1), Reject("malformed"), id="base64-padding-on-header"),
    pytest.param(lambda k: k.token().replace(".", ".%20", 1), Reject("malformed"), id="percent-encoding-inside"),
    pytest.param(
        lambda k: jws("not json", k.claims(), with_key(k.rs, "RS256")), Reject("malformed"), id="header-not-json"
    ),
    pytest.param(
        lambda k: jws("[1,2]", k.claims(), with_key(k.rs, "RS256")), Reject("malformed"), id="header-json-array"
    ),
    pytest.param(
        lambda k: jws('"RS256"', k.claims(), with_key(k.rs, "RS256")), Reject("malformed"), id="header-json-string"
    ),
    pytest.param(
        lambda k: jws(b"\xff\xfe{}", k.claims(), with_key(k.rs, "RS256")), Reject("malformed"), id="header-invalid-utf8"
    ),
    pytest.param(
        lambda k: jws("[" * 5000, k.claims(), with_key(k.rs, "RS256")),
        Reject("malformed"),
        id="header-deeply-nested-json",
    ),
    pytest.param(lambda k: k.signed_payload("not json"), Reject("malformed"), id="payload-not-json-validly-signed"),
    pytest.param(lambda k: k.signed_payload([1, 2]), Reject("malformed"), id="payload-json-array-validly-signed"),
    pytest.param(lambda k: k.signed_payload(42), Reject("malformed"), id="payload-json-number-validly-signed"),
    pytest.param(lambda k: k.signed_payload('"alice"'), Reject("malformed"), id="payload-json-string-validly-signed"),
    pytest.param(lambda k: k.signed_payload(None), Reject("malformed"), id="payload-json-null-validly-signed"),
    pytest.param(lambda k: k.signed_payload(b""), Reject("malformed"), id="payload-empty-validly-signed"),
    pytest.param(
        lambda k: k.signed_payload("[" * 5000), Reject("malformed"), id="payload-deeply-nested-validly-signed"
    ),
    pytest.param(lambda k: k.token(pad="x" * 9000), Reject("token_too_large"), id="token-over-max-token-bytes"),
    pytest.param(lambda k: "a" * 8193, Reject("token_too_large"), id="garbage-over-max-token-bytes"),
]


@pytest.mark.parametrize(("build", "expect"), TAMPER_CASES)
def test_tampered_or_malformed_token_is_rejected(
    build: T, expect: Expect, ring: Ring, sidecar: SidecarProcess, upstream: Upstream
) -> None:
    check(sidecar, upstream, expect, token=build(ring))


RAW_AUTH_CASES = [
    pytest.param(lambda k: f"Bearer {k.token()[:40]} {k.token()[40:]}", Reject("malformed"), id="space-inside-token"),
    pytest.param(lambda k: f"Bearer {k.token()[:40]}\t{k.token()[40:]}", Reject("malformed"), id="tab-inside-token"),
    pytest.param(lambda k: f"Bearer {k.token()},", Reject("malformed"), id="trailing-comma"),
    pytest.param(lambda k: f'Bearer "{k.token()}"', Reject("malformed"), id="quoted-token"),
    pytest.param(lambda k: f"Bearer {k.token()} extra", Reject("malformed"), id="second-word-after-token"),
    pytest.param(
        lambda k: "Bearer " + k.token()[:30] + "\u00e9" + k.token()[30:],
        Reject("malformed"),
        id="latin1-char-inside-token",
    ),
    pytest.param(
        lambda k: ("Bearer " + k.token()[:30]).encode() + "\u2603".encode() + k.token()[30:].encode(),
        Reject("malformed"),
        id="utf8-snowman-inside-token",
    ),
    pytest.param(lambda k: f"Bearer {k.token()}\x00", Refused(), id="nul-after-token-refused-by-parser"),
    pytest.param(lambda k: f"Bearer {k.token()}\x7f", Refused(), id="del-after-token-refused-by-parser"),
    pytest.param(lambda k: f"Bearer {k.token()}\x0b", Refused(), id="vertical-tab-after-token-refused-by-parser"),
]


@pytest.mark.parametrize(("build", "expect"), RAW_AUTH_CASES)
def test_token_with_characters_outside_token68_is_rejected(
    build: Callable[[Ring], Any], expect: Expect, ring: Ring, sidecar: SidecarProcess, upstream: Upstream
) -> None:
    check(sidecar, upstream, expect, headers=[("Authorization", build(ring))])


# ======================================================================================================
# 5. odd claim types and values (all validly signed by the trusted key)
# ======================================================================================================


def _now() -> int:
    return int(time.time())


CLAIM_CASES = [
    # exp
    pytest.param({"exp": "123"}, Reject("invalid_claim"), id="exp-string"),
    pytest.param({"exp": lambda: str(_now() + 300)}, Reject("invalid_claim"), id="exp-numeric-string-future"),
    pytest.param({"exp": True}, Reject("invalid_claim"), id="exp-true"),
    pytest.param({"exp": False}, Reject("invalid_claim"), id="exp-false"),
    pytest.param({"exp": None}, Reject("missing_claim"), id="exp-null"),
    pytest.param({"exp": lambda: [_now() + 300]}, Reject("invalid_claim"), id="exp-array"),
    pytest.param({"exp": {}}, Reject("invalid_claim"), id="exp-object"),
    pytest.param({"exp": float("nan")}, Reject("malformed"), id="exp-NaN"),
    pytest.param({"exp": float("inf")}, Reject("malformed"), id="exp-Infinity"),
    pytest.param({"exp": float("-inf")}, Reject("malformed"), id="exp-minus-Infinity"),
    pytest.param({"exp": 10**400}, Reject("invalid_claim"), id="exp-int-beyond-float-range"),
    pytest.param({"exp": -(10**400)}, Reject("invalid_claim"), id="exp-negative-int-beyond-float-range"),
    pytest.param({"exp": 2**63}, Reject("lifetime_too_long"), id="exp-far-future-int64-beyond-max-lifetime"),
    pytest.param({"exp": lambda: _now() + 300.5}, Pass(), id="exp-valid-float-passes"),
    pytest.param({"exp": -1}, Reject("expired"), id="exp-negative"),
    pytest.param({"exp": 0}, Reject("expired"), id="exp-zero"),
    pytest.param({"exp": DROP}, Reject("missing_claim"), id="exp-missing"),
    # nbf
    pytest.param({"nbf": "0"}, Reject("invalid_claim"), id="nbf-string"),
    pytest.param({"nbf": True}, Reject("invalid_claim"), id="nbf-bool"),
    pytest.param({"nbf": [0]}, Reject("invalid_claim"), id="nbf-array"),
    pytest.param({"nbf": float("nan")}, Reject("malformed"), id="nbf-NaN"),
    pytest.param({"nbf": 10**400}, Reject("invalid_claim"), id="nbf-int-beyond-float-range"),
    pytest.param({"nbf": lambda: _now() + 10 * MIN}, Reject("not_yet_valid"), id="nbf-future-beyond-leeway"),
    pytest.param({"nbf": 2**63}, Reject("not_yet_valid"), id="nbf-far-future"),
    pytest.param({"nbf": lambda: _now() - 10 * MIN}, Pass(), id="nbf-past-passes"),
    # iat
    pytest.param({"iat": "now"}, Reject("invalid_claim"), id="iat-string"),
    pytest.param({"iat": False}, Reject("invalid_claim"), id="iat-bool"),
    pytest.param({"iat": {"t": 1}}, Reject("invalid_claim"), id="iat-object"),
    pytest.param({"iat": 10**400}, Reject("invalid_claim"), id="iat-int-beyond-float-range"),
    pytest.param({"iat": lambda: _now() + 10 * MIN}, Reject("issued_in_future"), id="iat-future-beyond-leeway"),
    pytest.param({"iat": DROP}, Pass(), id="iat-absent-passes"),
    # iss
    pytest.param({"iss": "http://evil.example"}, Reject("issuer_mismatch"), id="iss-wrong"),
    pytest.param({"iss": DROP}, Reject("missing_claim"), id="iss-missing"),
    pytest.param({"iss": None}, Reject("missing_claim"), id="iss-null"),
    pytest.param({"iss": lambda k: [k.issuer.issuer]}, Reject("invalid_claim"), id="iss-array-with-right-issuer"),
    pytest.param({"iss": 1}, Reject("invalid_claim"), id="iss-integer"),
    pytest.param({"iss": lambda k: k.issuer.issuer.upper()}, Reject("issuer_mismatch"), id="iss-case-variant"),
    pytest.param({"iss": lambda k: k.issuer.issuer + "/"}, Reject("issuer_mismatch"), id="iss-trailing-slash"),
    pytest.param({"iss": lambda k: k.issuer.issuer + " "}, Reject("issuer_mismatch"), id="iss-trailing-space"),
    pytest.param({"iss": lambda k: k.issuer.issuer + "\x00"}, Reject("issuer_mismatch"), id="iss-trailing-nul"),
    pytest.param(
        {"iss": lambda k: k.issuer.issuer + ".evil.example"}, Reject("issuer_mismatch"), id="iss-prefix-match"
    ),
    # aud
    pytest.param({"aud": "other-api"}, Reject("audience_mismatch"), id="aud-wrong"),
    pytest.param({"aud": DROP}, Reject("missing_claim"), id="aud-missing"),
    pytest.param({"aud": None}, Reject("missing_claim"), id="aud-null"),
    pytest.param({"aud": ["a", "b"]}, Reject("audience_mismatch"), id="aud-array-without-match"),
    pytest.param({"aud": [1, 2]}, Reject("invalid_claim"), id="aud-array-of-integers"),
    pytest.param({"aud": [AUDIENCE, 2]}, Reject("invalid_claim"), id="aud-array-match-plus-integer"),
    pytest.param({"aud": [[AUDIENCE]]}, Reject("invalid_claim"), id="aud-nested-array"),
    pytest.param({"aud": []}, Reject("audience_mismatch"), id="aud-empty-list"),
    pytest.param({"aud": ""}, Reject("audience_mismatch"), id="aud-empty-string"),
    pytest.param({"aud": 1}, Reject("invalid_claim"), id="aud-integer"),
    pytest.param({"aud": {AUDIENCE: True}}, Reject("invalid_claim"), id="aud-object-keyed-by-audience"),
    pytest.param({"aud": AUDIENCE.upper()}, Reject("audience_mismatch"), id="aud-case-variant"),
    pytest.param({"aud": AUDIENCE + " "}, Reject("audience_mismatch"), id="aud-trailing-space"),
    pytest.param({"aud": f"{AUDIENCE},other"}, Reject("audience_mismatch"), id="aud-comma-joined-string"),
    pytest.param({"aud": ["other", AUDIENCE]}, Pass(), id="aud-array-with-match-passes"),
    # string claims
    pytest.param({"sub": 42}, Reject("invalid_claim"), id="sub-integer"),
    pytest.param({"sub": ["admin"]}, Reject("invalid_claim"), id="sub-array"),
    pytest.param({"sub": None}, Reject("invalid_claim"), id="sub-null"),
    pytest.param({"sub": {"id": "admin"}}, Reject("invalid_claim"), id="sub-object"),
    pytest.param({"jti": 7}, Reject("invalid_claim"), id="jti-integer"),
    pytest.param({"scope": ["admin"]}, Reject("invalid_claim"), id="scope-array"),
    pytest.param({"azp": False}, Reject("invalid_claim"), id="azp-bool"),
    pytest.param(
        {"sub": DROP}, Pass(identity=(("x-auth-roles", "user"),)), id="sub-absent-passes-without-subject-header"
    ),
    # values that would be dangerous as header values
    pytest.param(
        {"sub": "alice\r\nX-Auth-Admin: true"},
        Pass(identity=(("x-auth-roles", "user"), ("x-auth-subject", "alice  X-Auth-Admin: true"))),
        id="sub-crlf-header-injection-neutralised",
    ),
    pytest.param(
        {"sub": "alice\nX-Auth-Admin: true"},
        Pass(identity=(("x-auth-roles", "user"), ("x-auth-subject", "alice X-Auth-Admin: true"))),
        id="sub-lf-header-injection-neutralised",
    ),
    pytest.param(
        {"sub": "al\x00ice"},
        Pass(identity=(("x-auth-roles", "user"), ("x-auth-subject", "al ice"))),
        id="sub-nul-neutralised",
    ),
    pytest.param(
        {"realm_access": {"roles": ["user", "x\r\nX-Auth-Admin: 1"]}},
        Pass(identity=(("x-auth-roles", "user,x  X-Auth-Admin: 1"), ("x-auth-subject", "alice"))),
        id="roles-crlf-injection-neutralised",
    ),
    pytest.param(
        {"realm_access": {"roles": {"admin": True}}},
        Pass(identity=(("x-auth-roles", '{"admin":true}'), ("x-auth-subject", "alice"))),
        id="roles-object-rendered-as-json",
    ),
    pytest.param(
        {"realm_access": "admin"}, Pass(identity=(("x-auth-subject", "alice"),)), id="roles-parent-not-object"
    ),
    pytest.param({"blob": "x" * 5000}, Pass(), id="large-claims-under-limit-pass"),
    pytest.param({"blob": "x" * 7000}, Reject("token_too_large"), id="large-claims-over-limit"),
    pytest.param({"many": {f"k{i}": i for i in range(700)}}, Reject("token_too_large"), id="many-claims-over-limit"),
]


@pytest.mark.parametrize(("over", "expect"), CLAIM_CASES)
def test_odd_claim_types_and_values(
    over: dict[str, Any], expect: Expect, ring: Ring, sidecar: SidecarProcess, upstream: Upstream
) -> None:
    resolved = {}
    for name, v in over.items():
        if callable(v):
            try:
                v = v(ring)
            except TypeError:
                v = v()
        resolved[name] = v
    check(sidecar, upstream, expect, token=ring.token(**resolved))


# ======================================================================================================
# 6. expiry edges (real clock: offsets of minutes; leeway 60 s, grace 300 s)
# ======================================================================================================

EXPIRY_CASES = [
    pytest.param({"exp": 1 * MIN}, Pass(), id="valid-for-another-minute"),
    pytest.param({"exp": -20}, Pass(), id="expired-inside-leeway-passes-without-grace-header"),
    pytest.param(
        {"exp": -3 * MIN}, Pass(grace=(3 * MIN - 30, 3 * MIN + 30)), id="expired-inside-grace-passes-with-header"
    ),
    pytest.param({"exp": -5 * MIN}, Pass(grace=(5 * MIN - 30, 5 * MIN + 30)), id="expired-5min-inside-grace-passes"),
    pytest.param({"exp": -7 * MIN}, Reject("expired"), id="expired-beyond-leeway-and-grace"),
    pytest.param({"exp": -60 * MIN}, Reject("expired"), id="expired-an-hour-ago"),
    pytest.param({"exp": -3 * MIN, "nbf": 5 * MIN}, Reject("not_yet_valid"), id="grace-token-with-future-nbf"),
    pytest.param({"nbf": 20}, Pass(), id="nbf-inside-leeway-passes"),
    pytest.param({"nbf": 5 * MIN}, Reject("not_yet_valid"), id="nbf-beyond-leeway"),
    pytest.param({"iat": 20}, Pass(), id="iat-inside-leeway-passes"),
    pytest.param({"iat": 5 * MIN}, Reject("issued_in_future"), id="iat-beyond-leeway"),
    pytest.param({"iat": 5 * MIN, "exp": 10 * MIN}, Reject("issued_in_future"), id="iat-future-exp-further"),
]


@pytest.mark.parametrize(("offsets", "expect"), EXPIRY_CASES)
def test_expiry_edges(
    offsets: dict[str, int], expect: Expect, ring: Ring, sidecar: SidecarProcess, upstream: Upstream
) -> None:
    now = _now()
    token = ring.token(**{k: now + v for k, v in offsets.items()})
    check(sidecar, upstream, expect, token=token)
    # the second sight of the same token comes from the verified-token cache and must agree
    check(sidecar, upstream, expect, token=token)


@pytest.mark.parametrize("spoof", ["99999", "0", "-1"])
def test_client_cannot_claim_or_hide_grace(spoof: str, ring: Ring, sidecar: SidecarProcess, upstream: Upstream) -> None:
    check(sidecar, upstream, Pass(), token=ring.token(), headers=[("X-Auth-Token-Expired-Seconds", spoof)])
    check(
        sidecar,
        upstream,
        Pass(grace=(3 * MIN - 30, 3 * MIN + 30)),
        token=ring.token(exp=_now() - 3 * MIN),
        headers=[("X-Auth-Token-Expired-Seconds", spoof)],
    )


# ======================================================================================================
# 7. spoofed identity headers
# ======================================================================================================

SPOOF_HEADERS = [
    pytest.param([("X-Auth-Subject", "admin")], id="X-Auth-Subject"),
    pytest.param([("x-auth-subject", "admin")], id="lowercase"),
    pytest.param([("X-AUTH-SUBJECT", "admin")], id="uppercase"),
    pytest.param([("x_auth_subject", "admin")], id="underscores"),
    pytest.param([("X_AUTH_SUBJECT", "admin")], id="underscores-uppercase"),
    pytest.param([("X-Auth_Subject", "admin")], id="mixed-dash-underscore"),
    pytest.param([("X_Auth-Subject", "admin")], id="mixed-underscore-dash"),
    pytest.param([("X-Auth-Roles", "admin")], id="roles"),
    pytest.param([("x_auth_roles", "admin,superuser")], id="roles-underscores"),
    pytest.param([("X-Auth-Provider", "evil")], id="provider"),
    pytest.param([("X-Auth-Token-Expired-Seconds", "0")], id="grace-header"),
    pytest.param([("X-Auth-Admin", "true")], id="unconfigured-name-in-namespace"),
    pytest.param([("X-Auth-", "x")], id="bare-prefix"),
    pytest.param([("X-Auth-Subject", "admin"), ("X-Auth-Subject", "root")], id="duplicated"),
    pytest.param(
        [("X-Auth-Subject", "admin"), ("x_auth_subject", "root"), ("X-AUTH-SUBJECT", "x")], id="all-variants-at-once"
    ),
    pytest.param([("X-Auth-Subject", "")], id="empty-value"),
]


@pytest.mark.parametrize("spoof", SPOOF_HEADERS)
def test_spoofed_identity_header_with_valid_token_is_replaced(
    spoof: list[tuple[str, str]], ring: Ring, sidecar: SidecarProcess, upstream: Upstream
) -> None:
    check(sidecar, upstream, Pass(), token=ring.token(), headers=spoof, metrics=False)


@pytest.mark.parametrize("spoof", SPOOF_HEADERS)
def test_spoofed_identity_header_on_public_path_is_dropped(
    spoof: list[tuple[str, str]], ring: Ring, sidecar: SidecarProcess, upstream: Upstream
) -> None:
    check(sidecar, upstream, Pass(identity=NO_IDENTITY), path="/public/page", headers=spoof, metrics=False)


@pytest.mark.parametrize("spoof", SPOOF_HEADERS[:4])
def test_spoofed_identity_header_with_invalid_token_never_reaches_app(
    spoof: list[tuple[str, str]], ring: Ring, sidecar: SidecarProcess, upstream: Upstream
) -> None:
    check(sidecar, upstream, Reject("bad_signature"), token=flip_sig_byte(ring.token()), headers=spoof)


def test_valid_token_on_public_path_never_forwards_spoofed_identity(
    ring: Ring, sidecar: SidecarProcess, upstream: Upstream
) -> None:
    check(
        sidecar,
        upstream,
        Pass(identity=None),
        path="/public/x",
        metrics=False,
        headers=[("Authorization", f"Bearer {ring.token()}"), ("X-Auth-Subject", "admin"), ("x_auth_roles", "admin")],
    )
    assert set(identity_seen(upstream.record[0])) <= {("x-auth-subject", "alice"), ("x-auth-roles", "user")}


PUBLIC_FORGED = [
    pytest.param(lambda k: jws(k.header(k.rs, "none"), k.claims(sub="admin")), id="alg-none"),
    pytest.param(lambda k: flip_sig_byte(k.token(sub="admin")), id="bad-signature"),
    pytest.param(lambda k: k.token(k.evil_rs, hdr={"kid": k.rs.kid}, sub="admin"), id="attacker-key-trusted-kid"),
    pytest.param(lambda k: k.token(exp=_now() - 60 * MIN, sub="admin"), id="long-expired"),
]


@pytest.mark.parametrize("build", PUBLIC_FORGED)
def test_forged_token_on_public_path_is_not_handed_to_app(
    build: T, ring: Ring, sidecar: SidecarProcess, upstream: Upstream
) -> None:
    """Invariant 1 on public paths: the app may get the request, but never an unverified token with it.

    An app that serves public and protected routes and reads claims from the forwarded Authorization
    (trusting the sidecar to have checked it) would otherwise accept `sub=admin` from a forged token.
    """
    token = build(ring)
    upstream.clear()
    r = request(sidecar.url, path="/public/x", headers=[("Authorization", f"Bearer {token}")])
    assert r.status < 500
    forwarded = [v for rec in upstream.record for n, v in rec["headers"] if n.lower() == "authorization"]
    assert token not in " ".join(forwarded), (
        f"unverified token forwarded to the app on a public path (status {r.status})"
    )
    for rec in upstream.record:
        assert identity_seen(rec) == []


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "PROPFIND", "REPORT"])
def test_forged_token_is_rejected_for_every_method(
    method: str, ring: Ring, sidecar: SidecarProcess, upstream: Upstream
) -> None:
    body = b"payload" if method in ("POST", "PUT", "PATCH") else None
    check(
        sidecar,
        upstream,
        Reject("unsupported_alg"),
        method=method,
        body=body,
        token=jws(ring.header(ring.rs, "none"), ring.claims(sub="admin")),
    )


def test_forged_token_head_request_is_401_and_not_forwarded(
    ring: Ring, sidecar: SidecarProcess, upstream: Upstream
) -> None:
    upstream.clear()
    token = jws(ring.header(ring.rs, "none"), ring.claims(sub="admin"))
    r = request(sidecar.url, method="HEAD", path="/api/x", headers=[("Authorization", f"Bearer {token}")])
    assert r.status == 401 and upstream.record == []
    assert 'error="invalid_token"' in (r.header("WWW-Authenticate") or "")


# ======================================================================================================
# 8. header tricks
# ======================================================================================================

HEADER_CASES = [
    pytest.param(
        lambda k: [("Authorization", f"Bearer {k.token()}"), ("Authorization", f"Bearer {k.token()}")],
        "/api/x",
        Reject("multiple_tokens"),
        id="two-valid-authorization-headers",
    ),
    pytest.param(
        lambda k: [("Authorization", f"Bearer {k.token()}"), ("Authorization", "Bearer garbage")],
        "/api/x",
        Reject("multiple_tokens"),
        id="valid-and-garbage-authorization-headers",
    ),
    pytest.param(
        lambda k: [("Authorization", f"Bearer {k.token()}"), ("authorization", "Basic dTpw")],
        "/api/x",
        Reject("multiple_tokens"),
        id="bearer-plus-lowercase-basic",
    ),
    pytest.param(
        lambda k: [("Authorization", f"Bearer {k.token()}")],
        "/api/x?access_token=abc",
        Reject("multiple_tokens"),
        id="header-plus-query-token",
    ),
    pytest.param(
        lambda k: [("Authorization", f"Bearer {k.token()}")],
        "/api/x?a=1&access_token=",
        Reject("multiple_tokens"),
        id="header-plus-empty-query-token",
    ),
    pytest.param(
        lambda k: [("Authorization", f"Bearer {k.token()}")],
        "/api/x?access%5Ftoken=abc",
        Reject("multiple_tokens"),
        id="header-plus-percent-encoded-query-token-name",
    ),
    pytest.param(lambda k: [], "/api/x?access_token=TOKEN", Reject("missing_token"), id="valid-token-only-in-query"),
    pytest.param(lambda k: [("Authorization", f"bearer {k.token()}")], "/api/x", Pass(), id="scheme-lowercase-passes"),
    pytest.param(lambda k: [("Authorization", f"BEARER {k.token()}")], "/api/x", Pass(), id="scheme-uppercase-passes"),
    pytest.param(lambda k: [("Authorization", f"bEaReR {k.token()}")], "/api/x", Pass(), id="scheme-mixed-case-passes"),
    pytest.param(lambda k: [("Authorization", f"Bearer  {k.token()}")], "/api/x", Pass(), id="two-spaces-passes"),
    pytest.param(
        lambda k: [("Authorization", "Basic YWRtaW46YWRtaW4=")], "/api/x", Reject("missing_token"), id="basic-scheme"
    ),
    pytest.param(
        lambda k: [("Authorization", f"Token {k.token()}")], "/api/x", Reject("missing_token"), id="token-scheme"
    ),
    pytest.param(
        lambda k: [("Authorization", f"Bearer{k.token()}")],
        "/api/x",
        Reject("missing_token"),
        id="no-space-after-scheme",
    ),
    pytest.param(
        lambda k: [("Authorization", f"Bearer\t{k.token()}")], "/api/x", Reject("missing_token"), id="tab-after-scheme"
    ),
    pytest.param(
        lambda k: [("Authorization", k.token())], "/api/x", Reject("missing_token"), id="token-without-scheme"
    ),
    pytest.param(lambda k: [("Authorization", "Bearer")], "/api/x", Reject("malformed"), id="bearer-without-token"),
    pytest.param(lambda k: [("Authorization", "Bearer    ")], "/api/x", Reject("malformed"), id="bearer-then-spaces"),
    pytest.param(lambda k: [("Authorization", "")], "/api/x", Reject("missing_token"), id="empty-authorization"),
    pytest.param(lambda k: [], "/api/x", Reject("missing_token"), id="no-authorization"),
    pytest.param(
        lambda k: [("Proxy-Authorization", f"Bearer {k.token()}")],
        "/api/x",
        Reject("missing_token"),
        id="token-only-in-proxy-authorization",
    ),
    pytest.param(
        lambda k: [("X-Padding", "p" * 20000), ("Authorization", f"Bearer {k.token()}")],
        "/api/x",
        Reject("headers_too_large"),
        id="one-header-over-max-header-bytes",
    ),
    pytest.param(
        lambda k: [("Authorization", "Bearer " + "a" * 20000)],
        "/api/x",
        Reject("headers_too_large"),
        id="authorization-over-max-header-bytes",
    ),
    pytest.param(
        lambda k: [("X-Padding", "p" * 20000)],
        "/public/x",
        Reject("headers_too_large"),
        id="oversized-header-on-public-path",
    ),
    pytest.param(
        lambda k: [(f"X-Fill-{i}", "f" * 1000) for i in range(80)],
        "/public/x",
        Reject("headers_too_large"),
        id="many-headers-over-total",
    ),
]


@pytest.mark.parametrize(("build", "path", "expect"), HEADER_CASES)
def test_authorization_and_size_tricks(
    build: Callable[[Ring], list[tuple[str, str]]],
    path: str,
    expect: Expect,
    ring: Ring,
    sidecar: SidecarProcess,
    upstream: Upstream,
) -> None:
    headers = build(ring)
    path = path.replace("TOKEN", ring.token())
    r = check(sidecar, upstream, expect, path=path, headers=headers)
    if isinstance(expect, Pass):
        assert [v for n, v in upstream.record[0]["headers"] if n.lower() == "authorization"] == [headers[0][1]]
    else:
        assert r.status != 200


def test_header_beyond_parser_limit_is_refused_without_5xx(sidecar: SidecarProcess, upstream: Upstream) -> None:
    upstream.clear()
    r = request(sidecar.url, path="/public/x", headers=[("X-Huge", "h" * 200_000)])
    assert r.status in (400, 431) and upstream.record == []


HOP_BY_HOP = [
    pytest.param([("Keep-Alive", "timeout=5, max=1000")], "keep-alive", id="keep-alive"),
    pytest.param([("TE", "trailers")], "te", id="te"),
    pytest.param([("Trailer", "X-Auth-Subject")], "trailer", id="trailer"),
    pytest.param([("Upgrade", "h2c"), ("Connection", "Upgrade")], "upgrade", id="upgrade-h2c"),
    pytest.param([("Upgrade", "websocket")], "upgrade", id="upgrade-without-connection"),
    pytest.param([("Proxy-Authorization", "Basic YWRtaW46YWRtaW4=")], "proxy-authorization", id="proxy-authorization"),
    pytest.param([("Proxy-Authenticate", "Basic")], "proxy-authenticate", id="proxy-authenticate"),
    pytest.param([("Proxy-Connection", "keep-alive")], "proxy-connection", id="proxy-connection"),
    pytest.param([("Connection", "X-Secret"), ("X-Secret", "1")], "x-secret", id="connection-named-custom-header"),
    pytest.param([("Connection", "keep-alive, X-Secret"), ("X-Secret", "1")], "x-secret", id="connection-list"),
    pytest.param([("Connection", "close")], "connection", id="connection-itself"),
]


@pytest.mark.parametrize(("headers", "dropped"), HOP_BY_HOP)
@pytest.mark.parametrize("path", ["/api/x", "/public/x"])
def test_hop_by_hop_headers_never_reach_app(
    headers: list[tuple[str, str]], dropped: str, path: str, ring: Ring, sidecar: SidecarProcess, upstream: Upstream
) -> None:
    token = ring.token() if path.startswith("/api") else None
    expect = Pass() if token else Pass(identity=NO_IDENTITY)
    check(sidecar, upstream, expect, path=path, headers=headers, token=token, metrics=False)
    names = {n.lower() for n, _ in upstream.record[0]["headers"]}
    assert dropped not in names


def test_connection_naming_identity_header_keeps_sidecar_value(
    ring: Ring, sidecar: SidecarProcess, upstream: Upstream
) -> None:
    check(
        sidecar,
        upstream,
        Pass(),
        token=ring.token(),
        metrics=False,
        headers=[("Connection", "X-Auth-Subject, X-Auth-Roles"), ("X-Auth-Subject", "admin")],
    )


def test_connection_naming_x_forwarded_for_keeps_peer(ring: Ring, sidecar: SidecarProcess, upstream: Upstream) -> None:
    check(
        sidecar,
        upstream,
        Pass(),
        token=ring.token(),
        metrics=False,
        headers=[("Connection", "X-Forwarded-For"), ("X-Forwarded-For", "10.9.9.9")],
    )
    xff = [v for n, v in upstream.record[0]["headers"] if n.lower() == "x-forwarded-for"]
    assert xff == ["10.9.9.9, 127.0.0.1"]


def test_connection_naming_authorization_never_forwards_another_token(
    ring: Ring, sidecar: SidecarProcess, upstream: Upstream
) -> None:
    token = ring.token()
    check(sidecar, upstream, Pass(), token=token, metrics=False, headers=[("Connection", "Authorization")])
    auth = [v for n, v in upstream.record[0]["headers"] if n.lower() == "authorization"]
    # Either the verified token or nothing (RFC 9110 §7.6.1 lets a proxy drop Connection-named fields).
    assert auth in ([], [f"Bearer {token}"])


def test_connection_naming_content_length_keeps_body_intact(
    ring: Ring, sidecar: SidecarProcess, upstream: Upstream
) -> None:
    check(
        sidecar,
        upstream,
        Pass(),
        method="POST",
        token=ring.token(),
        body=b"0123456789" * 10,
        metrics=False,
        headers=[("Connection", "Content-Length")],
    )
    assert upstream.record[0]["body"] == b"0123456789" * 10


def test_connection_naming_authorization_without_token_is_still_401(
    sidecar: SidecarProcess, upstream: Upstream
) -> None:
    check(sidecar, upstream, Reject("missing_token"), headers=[("Connection", "Authorization")])


# ======================================================================================================
# 9. path tricks around the public prefix
# ======================================================================================================

DENY = None  # needs a token: 401 missing_token

PATH_CASES = [
    ("/public/x", "/public/x"),
    ("/public", "/public"),
    ("/public/", "/public/"),
    ("/public/../admin", DENY),
    ("/public/%2e%2e/admin", DENY),
    ("/public/%2E%2E/admin", DENY),
    ("/public/.%2e/admin", DENY),
    ("/public/%2e./admin", DENY),
    ("/public%2f..%2fadmin", DENY),
    ("/public%2F..%2Fadmin", DENY),
    ("/public/..%2fadmin", DENY),
    ("/public/%252e%252e/admin", DENY),
    ("/public/%25252e%25252e/admin", DENY),
    ("//public/../admin", DENY),
    ("/PUBLIC/x", DENY),
    ("/Public/x", DENY),
    ("/public;/../admin", DENY),
    ("/public;x=1/y", DENY),
    ("/public\\..\\admin", DENY),
    ("/public/%5c..%5cadmin", DENY),
    ("/publicity", DENY),
    ("/public-x", DENY),
    ("/public.json", DENY),
    ("/public/..", DENY),
    ("/public/x/../../admin", DENY),
    ("/public/%00/../../admin", DENY),
    ("/public/%09/x", DENY),
    ("/public/%c0%ae%c0%ae/admin", DENY),
    ("/public/%ff", DENY),
    ("/public/%", DENY),
    ("/public/%2", DENY),
    ("/public/x#/../../admin", DENY),
    ("/./public/x", "/public/x"),
    ("/%70ublic/x", "/public/x"),
    ("/%70%75%62%6c%69%63/x", "/public/x"),
    ("/public/./x", "/public/x"),
    ("//public//x", "/public/x"),
    ("/public/x/../y", "/public/y"),
    ("/admin/../public/x", "/public/x"),
    ("/public/%C3%A9", "/public/%C3%A9"),
    ("/public/x?next=/../admin", "/public/x?next=/../admin"),
    ("/public/x?a=%2e%2e%2f", "/public/x?a=%2e%2e%2f"),
]


def _genuinely_public(path: str) -> bool:
    p = path.partition("?")[0]
    low = p.lower()
    if "%2f" in low or "%2e" in low or "%5c" in low or "%25" in low or "\\" in p or ";" in p:
        return False
    segments = p.split("/")
    return (p == "/public" or p.startswith("/public/")) and ".." not in segments and "." not in segments


@pytest.mark.parametrize(("target", "forwarded"), [pytest.param(t, f, id=t) for t, f in PATH_CASES])
def test_path_tricks_never_expose_protected_path_without_token(
    target: str, forwarded: str | None, sidecar: SidecarProcess, upstream: Upstream
) -> None:
    if forwarded is DENY:
        check(sidecar, upstream, Reject("missing_token"), path=target)
    else:
        check(sidecar, upstream, Pass(path=forwarded, identity=NO_IDENTITY), path=target, metrics=False)
        assert _genuinely_public(upstream.record[0]["path"])


def _statuses(data: bytes) -> list[int]:
    return [int(s) for s in re.findall(rb"(?:\A|\n)HTTP/1\.[01] (\d{3}) ", data)]


RAW_TARGETS = [
    pytest.param(
        b"GET http://evil/public/x HTTP/1.1\r\nHost: evil\r\nConnection: close\r\n\r\n", id="absolute-form-public"
    ),
    pytest.param(
        b"GET http://127.0.0.1/public/../admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        id="absolute-form-dot-dot",
    ),
    pytest.param(
        b"GET https://evil/admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", id="absolute-form-protected"
    ),
    pytest.param(b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", id="options-asterisk"),
    pytest.param(b"GET * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", id="get-asterisk"),
    pytest.param(
        b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nConnection: close\r\n\r\n",
        id="connect-authority-form",
    ),
    pytest.param(b"GET public/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", id="relative-target"),
    pytest.param(
        b"GET /public/\x00/../../admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", id="raw-nul-in-target"
    ),
    pytest.param(
        b"GET /public/ /../../admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", id="raw-space-in-target"
    ),
    pytest.param(
        b"GET /public/\t/../../admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", id="raw-tab-in-target"
    ),
    pytest.param(
        "GET /public/\u00e9/../../admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
        id="raw-utf8-in-target",
    ),
    pytest.param(
        b"GET /public/\xff/../../admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        id="raw-invalid-utf8-in-target",
    ),
]


@pytest.mark.parametrize("data", RAW_TARGETS)
def test_odd_request_targets_never_reach_a_protected_path(
    data: bytes, sidecar: SidecarProcess, upstream: Upstream
) -> None:
    upstream.clear()
    out = raw(sidecar.port, data, timeout=1.5)
    statuses = _statuses(out)
    assert statuses, out[:300]
    assert all(s < 500 for s in statuses), out[:500]
    for rec in upstream.record:
        assert _genuinely_public(rec["path"]), rec["path"]
    assert statuses[0] in (400, 401, 404, 405), out[:300]


# ======================================================================================================
# 10. request smuggling (raw bytes)
# ======================================================================================================

SMUGGLED = b"GET /public/smuggled HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def _with_body(head: bytes, body: bytes) -> bytes:
    return b"POST /public/first HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n" + body


SMUGGLE_CASES = [
    pytest.param(
        _with_body(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n" + SMUGGLED), id="cl-and-te"
    ),
    pytest.param(
        _with_body(b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n" + SMUGGLED), id="te-and-cl"
    ),
    pytest.param(
        _with_body(b"Content-Length: 0\r\nContent-Length: 5\r\n", b"hello" + SMUGGLED), id="two-content-lengths"
    ),
    pytest.param(
        _with_body(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello" + SMUGGLED), id="two-equal-content-lengths"
    ),
    pytest.param(_with_body(b"Content-Length: 0, 5\r\n", b"hello" + SMUGGLED), id="content-length-list"),
    pytest.param(_with_body(b"Content-Length: +5\r\n", b"hello" + SMUGGLED), id="content-length-plus-sign"),
    pytest.param(_with_body(b"Content-Length: -5\r\n", b"hello" + SMUGGLED), id="content-length-negative"),
    pytest.param(_with_body(b"Content-Length: 0x5\r\n", b"hello" + SMUGGLED), id="content-length-hex"),
    pytest.param(_with_body(b"Content-Length: 5 5\r\n", b"hello" + SMUGGLED), id="content-length-two-numbers"),
    pytest.param(
        _with_body(b"Content-Length: 99999999999999999999999\r\n", b"hello" + SMUGGLED), id="content-length-huge"
    ),
    pytest.param(_with_body(b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n" + SMUGGLED), id="te-xchunked"),
    pytest.param(
        _with_body(b"Content-Length: 66\r\nTransfer-Encoding:  chunked\r\n", b"0\r\n\r\n" + SMUGGLED),
        id="cl-and-te-with-extra-whitespace",
    ),
    pytest.param(
        _with_body(b"Content-Length: 66\r\nTransfer-Encoding: CHUNKED\r\n", b"0\r\n\r\n" + SMUGGLED),
        id="cl-and-te-uppercase",
    ),
    pytest.param(
        _with_body(b"Content-Length: 66\r\nTransfer-Encoding: \x0bchunked\r\n", b"0\r\n\r\n" + SMUGGLED),
        id="cl-and-te-vertical-tab",
    ),
    pytest.param(
        _with_body(b"Transfer-Encoding: chunked, identity\r\n", b"0\r\n\r\n" + SMUGGLED), id="te-chunked-identity"
    ),
    pytest.param(
        _with_body(b"Transfer-Encoding: identity, chunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n" + SMUGGLED),
        id="te-identity-chunked-with-cl",
    ),
    pytest.param(
        _with_body(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n", b"0\r\n\r\n" + SMUGGLED),
        id="te-two-headers",
    ),
    pytest.param(
        _with_body(b"Transfer-Encoding: chunked\r\n", b"zz\r\nhello\r\n0\r\n\r\n" + SMUGGLED), id="chunk-size-not-hex"
    ),
    pytest.param(
        _with_body(b"Transfer-Encoding: chunked\r\n", b"-5\r\nhello\r\n0\r\n\r\n" + SMUGGLED), id="chunk-size-negative"
    ),
    pytest.param(
        _with_body(b"Transfer-Encoding: chunked\r\n", b"0x5\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
        id="chunk-size-0x-prefix",
    ),
    pytest.param(
        _with_body(b"Transfer-Encoding: chunked\r\n", b"ffffffffffffffffffff\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
        id="chunk-size-overflow",
    ),
    pytest.param(
        _with_body(b"Transfer-Encoding: chunked\r\n", b"3\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
        id="chunk-shorter-than-data",
    ),
    pytest.param(_with_body(b"Transfer-Encoding: chunked\r\n", b"5\nhello\n0\n\n" + SMUGGLED), id="chunk-lf-only"),
    pytest.param(
        _with_body(b"Transfer-Encoding: chunked\r\n", b"5 ;x\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
        id="chunk-ext-with-space",
    ),
    pytest.param(_with_body(b"Transfer-Encoding : chunked\r\n", b"0\r\n\r\n" + SMUGGLED), id="te-space-before-colon"),
    pytest.param(
        _with_body(b"Transfer-Encoding:\tchunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n" + SMUGGLED), id="te-tab-and-cl"
    ),
    pytest.param(_with_body(b"Content-Length : 5\r\n", b"hello" + SMUGGLED), id="cl-space-before-colon"),
    pytest.param(
        _with_body(b"X-Folded: a\r\n Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n" + SMUGGLED),
        id="obs-fold-hides-te",
    ),
    pytest.param(
        b"GET  /public/first HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", id="request-line-double-space"
    ),
    pytest.param(
        b"GET /public/first  HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", id="request-line-trailing-double-space"
    ),
    pytest.param(
        b"GET /public/first HTTP/1.1 extra\r\nHost: x\r\nConnection: close\r\n\r\n" + SMUGGLED,
        id="request-line-extra-token",
    ),
    pytest.param(b"GET /public/first HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", id="control-plain-get"),
    pytest.param(b"GET /public/first\r\n\r\n" + SMUGGLED, id="http-0.9"),
    pytest.param(b"GET /public/first HTTP/2.0\r\nHost: x\r\n\r\n" + SMUGGLED, id="http-2.0-over-tcp"),
    pytest.param(b"GET /public/first HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n" + SMUGGLED, id="header-without-colon"),
    pytest.param(
        b"GET /public/first HTTP/1.1\r\nHost: x\r\nX-A: 1\rX-Auth-Subject: admin\r\n\r\n" + SMUGGLED,
        id="bare-cr-in-header",
    ),
    pytest.param(
        b"GET /public/first HTTP/1.1\r\nHost: x\r\nX-A: 1\x00X-Auth-Subject: admin\r\n\r\n" + SMUGGLED,
        id="nul-in-header-value",
    ),
    pytest.param(
        b"GET /public/first HTTP/1.1\r\nHost: x\r\nX Auth Subject: admin\r\n\r\n" + SMUGGLED, id="space-in-header-name"
    ),
    pytest.param(
        b"GET /public/first HTTP/1.1\n\nGET /public/smuggled HTTP/1.1\nConnection: close\n\n", id="lf-only-line-endings"
    ),
]


@pytest.mark.parametrize("data", SMUGGLE_CASES)
def test_request_smuggling_never_gets_a_second_request_to_app(
    data: bytes, sidecar: SidecarProcess, upstream: Upstream
) -> None:
    upstream.clear()
    out = raw(sidecar.port, data, timeout=1.0)
    statuses = _statuses(out)
    assert all(s < 500 for s in statuses), out[:500]
    paths = [r["path"] for r in upstream.record]
    assert "/public/smuggled" not in paths, f"smuggled request reached the app: {paths} / statuses {statuses}"
    assert len(paths) <= 1, paths
    if paths:
        assert paths == ["/public/first"] and statuses[:1] == [200], (paths, statuses)
    else:
        assert statuses[:1] in ([400], [413], [431]), out[:300]


FOLD_CASES = [
    pytest.param(b"X-Trace: a\r\n X-Auth-Subject: admin\r\n", id="obs-fold-space"),
    pytest.param(b"X-Trace: a\r\n\tX-Auth-Subject: admin\r\n", id="obs-fold-tab"),
    pytest.param(b" X-Auth-Subject: admin\r\n", id="leading-space-header-name"),
    pytest.param(b"X-Auth-Subject : admin\r\n", id="space-before-colon"),
    pytest.param(b"X-Auth-Subject\t: admin\r\n", id="tab-before-colon"),
    pytest.param("X\u2010Auth-Subject: admin\r\n".encode(), id="unicode-hyphen-in-name"),
    pytest.param(b"X-Auth-Subject: admin\n", id="lf-only-line"),
    pytest.param(b"X-Trace: ok\r\n", id="control-well-formed-line"),
]


@pytest.mark.parametrize("line", FOLD_CASES)
@pytest.mark.parametrize("path", ["/api/x", "/public/x"])
def test_malformed_header_lines_never_smuggle_identity(
    line: bytes, path: str, ring: Ring, sidecar: SidecarProcess, upstream: Upstream
) -> None:
    auth = f"Authorization: Bearer {ring.token()}\r\n".encode() if path == "/api/x" else b""
    data = f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode() + auth + line + b"Connection: close\r\n\r\n"
    upstream.clear()
    out = raw(sidecar.port, data, timeout=1.5)
    statuses = _statuses(out)
    assert statuses and all(s < 500 for s in statuses), out[:500]
    for rec in upstream.record:
        for n, v in rec["headers"]:
            if is_identity(n) or "x-auth-subject" in n.lower():
                assert (n.lower(), v) in (("x-auth-subject", "alice"), ("x-auth-roles", "user")), (n, v)
    assert statuses[0] in (200, 400), out[:300]


def test_chunked_trailer_cannot_inject_identity(ring: Ring, sidecar: SidecarProcess, upstream: Upstream) -> None:
    token = ring.token()
    data = (
        b"POST /api/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + token.encode()
        + b"\r\nTransfer-Encoding: chunked\r\nTrailer: X-Auth-Subject\r\nConnection: close\r\n\r\n"
        + b"5\r\nhello\r\n0\r\nX-Auth-Subject: admin\r\nX-Auth-Roles: admin\r\n\r\n"
    )
    upstream.clear()
    out = raw(sidecar.port, data, timeout=1.5)
    statuses = _statuses(out)
    assert statuses == [200], out[:300]
    assert len(upstream.record) == 1 and upstream.record[0]["body"] == b"hello"
    assert identity_seen(upstream.record[0]) == [("x-auth-roles", "user"), ("x-auth-subject", "alice")]


# ======================================================================================================
# 11. CORS abuse
# ======================================================================================================

BAD_ORIGINS = [
    "http://evil.example",
    "null",
    "http://localhost:3000.evil.com",
    "http://evil.com#http://localhost:3000",
    "http://evil.com?http://localhost:3000",
    "http://evil.com/http://localhost:3000",
    "http://localhost:30000",
    "http://localhost:300",
    "https://localhost:3000",
    "http://localhost",
    "http://localhost:3000/",
    "http://xlocalhost:3000",
    "http://localhost.evil.com:3000",
    "http://localhost:3000@evil.com",
    "http://evil.com\\@localhost:3000",
    "*",
    "http://localhost:3000 http://evil.com",
    "http://localhost:3000,http://evil.com",
    "file://",
    "",
]


@pytest.mark.parametrize("origin", BAD_ORIGINS)
@pytest.mark.parametrize("path", ["/api/x", "/public/x"])
def test_preflight_from_disallowed_origin_is_403_without_acao(
    origin: str, path: str, sidecar: SidecarProcess, upstream: Upstream
) -> None:
    r = check(
        sidecar,
        upstream,
        Reject("cors_rejected"),
        method="OPTIONS",
        path=path,
        headers=[("Origin", origin), ("Access-Control-Request-Method", "GET")],
        metrics=path == "/api/x",
    )
    assert r.header("Access-Control-Allow-Origin") is None


PREFLIGHT_BAD_REQUEST = [
    pytest.param("TRACE", None, id="method-trace"),
    pytest.param("CONNECT", None, id="method-connect"),
    pytest.param("get", None, id="method-lowercase"),
    pytest.param("GET, DELETE", None, id="method-list"),
    pytest.param("", None, id="method-empty"),
    pytest.param("GET", "X-Auth-Subject", id="header-x-auth-subject"),
    pytest.param("GET", "authorization, x-evil", id="header-one-disallowed"),
    pytest.param("GET", "Cookie", id="header-cookie"),
    pytest.param("GET", "authorization,,x-auth-roles", id="header-list-with-empty-item"),
]


@pytest.mark.parametrize(("method", "req_headers"), PREFLIGHT_BAD_REQUEST)
def test_preflight_with_disallowed_method_or_header_is_403(
    method: str, req_headers: str | None, sidecar: SidecarProcess, upstream: Upstream
) -> None:
    headers = [("Origin", ORIGIN), ("Access-Control-Request-Method", method)]
    if req_headers is not None:
        headers.append(("Access-Control-Request-Headers", req_headers))
    r = check(sidecar, upstream, Reject("cors_rejected"), method="OPTIONS", headers=headers)
    assert r.header("Access-Control-Allow-Origin") is None


@pytest.mark.parametrize("auth", [None, "Bearer forged.token.here"])
def test_allowed_preflight_is_answered_by_sidecar_and_never_forwarded(
    auth: str | None, sidecar: SidecarProcess, upstream: Upstream
) -> None:
    headers = [
        ("Origin", ORIGIN),
        ("Access-Control-Request-Method", "POST"),
        ("Access-Control-Request-Headers", "authorization, content-type"),
    ]
    if auth:
        headers.append(("Authorization", auth))
    upstream.clear()
    r = request(sidecar.url, method="OPTIONS", path="/api/x", headers=headers)
    assert r.status == 204 and upstream.record == []
    assert r.header("Access-Control-Allow-Origin") == ORIGIN


def _vary_origin(r: Reply) -> bool:
    return any(k.lower() == "vary" and "origin" in v.lower() for k, v in r.headers)


def test_options_without_request_method_needs_token_and_carries_acao(
    sidecar: SidecarProcess, upstream: Upstream
) -> None:
    r = check(sidecar, upstream, Reject("missing_token"), method="OPTIONS", headers=[("Origin", ORIGIN)])
    assert r.header("Access-Control-Allow-Origin") == ORIGIN and _vary_origin(r)


def test_options_with_request_method_but_no_origin_needs_token(sidecar: SidecarProcess, upstream: Upstream) -> None:
    check(
        sidecar, upstream, Reject("missing_token"), method="OPTIONS", headers=[("Access-Control-Request-Method", "GET")]
    )


@pytest.mark.parametrize("reason", ["missing_token", "bad_signature", "unsupported_alg"])
def test_401_to_allowed_origin_carries_acao(
    reason: str, ring: Ring, sidecar: SidecarProcess, upstream: Upstream
) -> None:
    token = {
        "missing_token": None,
        "bad_signature": flip_sig_byte(ring.token()),
        "unsupported_alg": jws(ring.header(ring.rs, "none"), ring.claims()),
    }[reason]
    r = check(sidecar, upstream, Reject(reason), headers=[("Origin", ORIGIN)], token=token)
    assert r.header("Access-Control-Allow-Origin") == ORIGIN and _vary_origin(r)


@pytest.mark.parametrize("origin", BAD_ORIGINS[:8])
def test_401_to_disallowed_origin_has_no_acao(origin: str, sidecar: SidecarProcess, upstream: Upstream) -> None:
    r = check(sidecar, upstream, Reject("missing_token"), headers=[("Origin", origin)], metrics=False)
    assert r.header("Access-Control-Allow-Origin") is None and _vary_origin(r)


def test_authorised_request_from_allowed_origin_carries_acao(
    ring: Ring, sidecar: SidecarProcess, upstream: Upstream
) -> None:
    r = check(sidecar, upstream, Pass(), headers=[("Origin", ORIGIN)], token=ring.token(), metrics=False)
    assert r.header("Access-Control-Allow-Origin") == ORIGIN


CACHE_ROUNDTRIP = [
    pytest.param({"sub": ""}, (("x-auth-roles", "user"), ("x-auth-subject", "")), id="empty-subject"),
    pytest.param(
        {"sub": "\x01"}, (("x-auth-roles", "user"), ("x-auth-subject", "")), id="subject-is-control-char-blanked"
    ),
    pytest.param({"sub": "a\x00b"}, (("x-auth-roles", "user"), ("x-auth-subject", "a b")), id="subject-with-nul"),
    pytest.param(
        {"sub": "\u00e9lodie"}, (("x-auth-roles", "user"), ("x-auth-subject", "\u00e9lodie")), id="unicode-subject"
    ),
    pytest.param(
        {"realm_access": {"roles": []}}, (("x-auth-roles", ""), ("x-auth-subject", "alice")), id="empty-roles"
    ),
    pytest.param({"realm_access": DROP}, (("x-auth-subject", "alice"),), id="roles-absent"),
    pytest.param({"sub": DROP, "realm_access": DROP}, (), id="no-identity-claims"),
]


@pytest.mark.parametrize(("over", "identity"), CACHE_ROUNDTRIP)
def test_identity_from_claims_is_identical_on_cache_hit(
    over: dict[str, Any], identity: tuple[tuple[str, str], ...], ring: Ring, sidecar: SidecarProcess, upstream: Upstream
) -> None:
    token = ring.token(**over)
    before = scrape(sidecar.admin).get('sidecar_token_cache_lookups_total{result="hit"}', 0.0)
    check(sidecar, upstream, Pass(identity=identity), token=token, metrics=False)
    check(sidecar, upstream, Pass(identity=identity), token=token, metrics=False)
    assert scrape(sidecar.admin).get('sidecar_token_cache_lookups_total{result="hit"}', 0.0) == before + 1
