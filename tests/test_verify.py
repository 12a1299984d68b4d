"""Token verification with an injected clock: leeway, grace, nbf/iat, claim types, the verified-token cache."""

from __future__ import annotations

import contextlib
import time

import jwt
import pytest

from sidecar import errors
from sidecar import verify as verify_module
from sidecar.devtools.issuer import DevIssuer
from sidecar.rules import claim_value
from sidecar.verify import render
from tests.conftest import InProc, MakeSidecar, Upstream
from tests.support import ThreadedServer

LEEWAY, GRACE = 60, 300


async def reason(sc: InProc, token: str) -> str | None:
    r = await sc.get(token=token)
    return None if r.status == 200 else (await r.json())["reason"]


async def test_expired_token_inside_grace_reaches_the_app_with_grace_header(
    issuer: DevIssuer, upstream: Upstream, make_sidecar: MakeSidecar
) -> None:
    sc = await make_sidecar(issuer)
    token = issuer.mint(now=sc.clock.now() - 3600, ttl=3600 - (LEEWAY + 100))  # 100 s past the leeway
    upstream.clear()
    r = await sc.get(token=token)
    assert r.status == 200
    seen = dict(upstream.record[-1]["headers"])
    assert seen["X-Auth-Token-Expired-Seconds"] == str(LEEWAY + 100)
    assert sc.metric("sidecar_auth_grace_accepted_total") == 1


async def test_expired_token_within_leeway_passes_without_grace_header(
    issuer: DevIssuer, upstream: Upstream, make_sidecar: MakeSidecar
) -> None:
    sc = await make_sidecar(issuer)
    token = issuer.mint(now=sc.clock.now() - 100, ttl=100 - (LEEWAY - 5))
    upstream.clear()
    assert await reason(sc, token) is None
    assert "X-Auth-Token-Expired-Seconds" not in dict(upstream.record[-1]["headers"])
    assert sc.metric("sidecar_auth_grace_accepted_total") == 0


async def test_token_expired_beyond_leeway_and_grace_is_rejected_as_expired(
    issuer: DevIssuer, make_sidecar: MakeSidecar
) -> None:
    sc = await make_sidecar(issuer)
    token = issuer.mint(now=sc.clock.now() - 1000, ttl=1000 - (LEEWAY + GRACE + 1))
    r = await sc.get(token=token)
    assert r.status == 401
    assert r.headers["WWW-Authenticate"].startswith(
        'Bearer realm="sidecar", error="invalid_token", error_description="expired'
    )
    assert (await r.json())["reason"] == "expired"
    assert sc.metric("sidecar_auth_failures_total", reason="expired") == 1


async def test_grace_is_off_by_default(issuer: DevIssuer, make_sidecar: MakeSidecar) -> None:
    sc = await make_sidecar(issuer, expired_grace=0)
    assert await reason(sc, issuer.mint(now=sc.clock.now() - 1000, ttl=1000 - (LEEWAY + 1))) == "expired"


async def test_a_cached_token_is_rechecked_against_the_clock_on_every_hit(
    issuer: DevIssuer, make_sidecar: MakeSidecar
) -> None:
    sc = await make_sidecar(issuer)
    token = issuer.mint(now=sc.clock.now(), ttl=600)
    assert await reason(sc, token) is None
    assert await reason(sc, token) is None
    assert sc.metric("sidecar_token_cache_lookups_total", result="hit") == 1
    sc.clock.advance(600 + LEEWAY + 10)
    assert await reason(sc, token) is None  # inside grace, served from the cache
    sc.clock.advance(GRACE)
    assert await reason(sc, token) == "expired"
    assert sc.metric("sidecar_token_cache_lookups_total", result="hit") == 3


async def test_not_before_beyond_leeway_is_rejected_and_within_leeway_passes(
    issuer: DevIssuer, make_sidecar: MakeSidecar
) -> None:
    sc = await make_sidecar(issuer)
    now = sc.clock.now()
    assert await reason(sc, issuer.mint(now=now, nbf=int(now) + LEEWAY + 30)) == "not_yet_valid"
    assert await reason(sc, issuer.mint(now=now, nbf=int(now) + LEEWAY - 30)) is None


async def test_a_cached_token_becomes_valid_once_nbf_is_reached(issuer: DevIssuer, make_sidecar: MakeSidecar) -> None:
    sc = await make_sidecar(issuer)
    now = sc.clock.now()
    token = issuer.mint(now=now, ttl=3600, nbf=int(now) + 600)
    assert await reason(sc, token) == "not_yet_valid"
    sc.clock.advance(600 - LEEWAY + 1)
    assert await reason(sc, token) is None


async def test_iat_in_the_future_beyond_leeway_is_issued_in_future_and_counted(
    issuer: DevIssuer, make_sidecar: MakeSidecar
) -> None:
    sc = await make_sidecar(issuer)
    now = sc.clock.now()
    assert await reason(sc, issuer.mint(now=now, iat=int(now) + LEEWAY + 30)) == "issued_in_future"
    assert sc.metric("sidecar_auth_future_iat_total") == 1


async def test_a_host_clock_45s_behind_the_idp_still_accepts_fresh_tokens(
    issuer: DevIssuer, make_sidecar: MakeSidecar
) -> None:
    sc = await make_sidecar(issuer)
    idp_now = sc.clock.now()
    sc.clock.skew_wall(-45)  # the incident: NTP drift on the node
    assert await reason(sc, issuer.mint(now=idp_now, ttl=300, nbf=int(idp_now))) is None


async def test_a_leeway_of_zero_rejects_that_same_skewed_token(issuer: DevIssuer, make_sidecar: MakeSidecar) -> None:
    sc = await make_sidecar(issuer, leeway=0)
    idp_now = sc.clock.now()
    sc.clock.skew_wall(-45)
    assert await reason(sc, issuer.mint(now=idp_now, ttl=300, nbf=int(idp_now))) == "not_yet_valid"


def test_pyjwt_alone_accepts_a_numeric_string_exp_which_is_why_verify_checks_types() -> None:
    key = "k" * 32
    token = jwt.encode({"exp": str(int(time.time()) + 60)}, key, algorithm="HS256")
    assert jwt.decode(token, key, algorithms=["HS256"])["exp"].isdigit()


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({"exp": "9999999999"}, "invalid_claim"),
        ({"exp": True}, "invalid_claim"),
        ({"exp": [1]}, "invalid_claim"),
        ({"nbf": "0"}, "invalid_claim"),
        ({"iat": {"t": 1}}, "invalid_claim"),
        ({"exp": None}, "missing_claim"),
        ({"aud": None}, "missing_claim"),
        ({"iss": None}, "missing_claim"),
        ({"aud": [1, 2]}, "invalid_claim"),
        ({"aud": ["other", "x"]}, "audience_mismatch"),
        ({"aud": ["other", "demo-api"]}, None),
        ({"iss": ["x"]}, "invalid_claim"),
        ({"sub": 42}, "invalid_claim"),
        ({"scope": ["a"]}, "invalid_claim"),
        ({"exp": 4102444800.5}, "lifetime_too_long"),  # a number (no invalid_claim), but 2100 is too far
    ],
    ids=lambda v: str(v),
)
async def test_registered_claims_of_the_wrong_json_type_are_rejected(
    issuer: DevIssuer, make_sidecar: MakeSidecar, claims: dict[str, object], expected: str | None
) -> None:
    sc = await make_sidecar(issuer)
    assert await reason(sc, issuer.mint(now=sc.clock.now(), **claims)) == expected


async def test_exp_may_be_optional_when_required_claims_say_so(issuer: DevIssuer, make_sidecar: MakeSidecar) -> None:
    sc = await make_sidecar(
        issuer,
        providers=[
            {
                "issuer": issuer.issuer,
                "audiences": ["demo-api"],
                "jwks_url": f"{issuer.issuer}/jwks.json",
                "required_claims": [],
            }
        ],
    )
    assert await reason(sc, issuer.mint(now=sc.clock.now(), exp=None)) is None


async def test_tokens_are_routed_to_their_provider_by_iss(
    issuer: DevIssuer, fresh_issuer: DevIssuer, make_sidecar: MakeSidecar
) -> None:
    fresh_issuer.audience = "other-api"
    sc = await make_sidecar(
        issuer,
        providers=[
            {
                "name": "a",
                "issuer": issuer.issuer,
                "audiences": ["demo-api"],
                "jwks_url": f"{issuer.issuer}/jwks.json",
            },
            {
                "name": "b",
                "issuer": fresh_issuer.issuer,
                "audiences": ["other-api"],
                "jwks_url": f"{fresh_issuer.issuer}/jwks.json",
            },
        ],
    )
    now = sc.clock.now()
    assert await reason(sc, issuer.mint(now=now)) is None
    assert await reason(sc, fresh_issuer.mint(now=now)) is None
    # b's key signing a token that claims a's issuer: a's key set has no such kid
    assert await reason(sc, fresh_issuer.mint(now=now, iss=issuer.issuer, aud="demo-api")) == "unknown_kid"
    assert await reason(sc, issuer.mint(now=now, iss="https://stranger")) == "issuer_mismatch"


async def test_claim_headers_come_from_verified_claims_nested_and_without_cr_lf(
    issuer: DevIssuer, upstream: Upstream, make_sidecar: MakeSidecar
) -> None:
    sc = await make_sidecar(
        issuer,
        claim_headers={
            "X-Auth-Subject": "sub",
            "X-Auth-Roles": "realm_access.roles",
            "X-Auth-Email": "email",
            "X-Auth-Org": "org",
        },
    )
    token = issuer.mint(
        now=sc.clock.now(), sub="eve\r\nX-Admin: true", realm_access={"roles": ["a", "b"]}, org={"id": 7}
    )
    upstream.clear()
    assert await reason(sc, token) is None
    seen = dict(upstream.record[-1]["headers"])
    assert seen["X-Auth-Subject"] == "eve  X-Admin: true"
    assert "X-Admin" not in seen
    assert seen["X-Auth-Roles"] == "a,b"
    assert seen["X-Auth-Org"] == '{"id":7}'
    assert "X-Auth-Email" not in seen


def test_claim_lookup_prefers_an_exact_name_with_dots_over_a_nested_path() -> None:
    claims = {"https://example.com/roles": ["x"], "a": {"b": {"c": 1}}}
    assert claim_value(claims, "https://example.com/roles") == ["x"]
    assert claim_value(claims, "a.b.c") == 1
    assert claim_value(claims, "a.x") is None
    assert render(True) == "true"
    assert render("tab\there") == "tab here"


async def test_an_unusable_provider_does_not_block_another(issuer: DevIssuer, make_sidecar: MakeSidecar) -> None:
    down = DevIssuer(audience="demo-api")
    server = ThreadedServer(down.app())
    down.issuer = server.url
    down.outage = "500"
    try:
        sc = await make_sidecar(
            issuer,
            wait=False,
            providers=[
                {
                    "name": "a",
                    "issuer": issuer.issuer,
                    "audiences": ["demo-api"],
                    "jwks_url": f"{issuer.issuer}/jwks.json",
                },
                {
                    "name": "b",
                    "issuer": down.issuer,
                    "audiences": ["demo-api"],
                    "jwks_url": f"{down.issuer}/jwks.json",
                },
            ],
        )
        import asyncio

        for _ in range(100):
            if sc.state.keys[0].usable():
                break
            await asyncio.sleep(0.02)
        assert await reason(sc, issuer.mint(now=sc.clock.now())) is None
        assert await reason(sc, down.mint(now=sc.clock.now())) == "keys_unavailable"
        assert (await sc.admin.get("/readyz")).status == 503
    finally:
        server.stop()


async def test_a_genuine_expired_token_retried_in_a_loop_is_refused_from_the_cache(
    issuer: DevIssuer, make_sidecar: MakeSidecar
) -> None:
    sc = await make_sidecar(issuer)
    token = issuer.mint(now=sc.clock.now() - 7200, ttl=60)
    for _ in range(3):
        assert await reason(sc, token) == "expired"
    # one RSA verify, then two refusals from the cache (each hit re-checks the clock)
    assert sc.metric("sidecar_token_cache_lookups_total", result="miss") == 1
    assert sc.metric("sidecar_token_cache_lookups_total", result="hit") == 2
    assert sc.metric("sidecar_auth_failures_total", reason="expired") == 3


async def test_recent_token_digests_are_remembered_within_a_bound_and_never_mix_tokens_up(
    issuer: DevIssuer, make_sidecar: MakeSidecar
) -> None:
    # A SHA-256 of the token costs more than the rest of a cache hit, so recent tokens keep their digest;
    # the list holds tokens, so it must stay bounded, and two tokens must never share an answer.
    sc = await make_sidecar(issuer)
    good, bad = issuer.mint(ttl=600), issuer.mint(ttl=600, aud="someone-else")
    for _ in range(3):
        assert await reason(sc, good) is None
        assert await reason(sc, bad) == "audience_mismatch"
    verifier = sc.state.verifier
    for i in range(verify_module._RECENT + 10):
        with contextlib.suppress(errors.Rejection):
            await verifier.verify(f"a.b{i}.c")  # malformed: refused without a key, still hashed first
    assert len(verifier._digests) <= verify_module._RECENT
    assert await reason(sc, good) is None and await reason(sc, bad) == "audience_mismatch"


async def test_only_a_verified_token_is_known_and_answered_from_the_cache_without_a_coroutine(
    issuer: DevIssuer, make_sidecar: MakeSidecar
) -> None:
    # `cached` is the request path's cache hit (no coroutine); `knows` lets extract.py skip re-checking the
    # characters of a token that passed every check once. Neither may ever hold a refused token.
    sc = await make_sidecar(issuer)
    verifier = sc.state.verifier
    good, bad = issuer.mint(ttl=600), issuer.mint(ttl=600, aud="someone-else")
    assert not verifier.knows(good) and verifier.cached(good) is None
    assert await reason(sc, good) is None
    assert await reason(sc, bad) == "audience_mismatch"
    assert verifier.knows(good) and not verifier.knows(bad)
    known = verifier.cached(good)
    assert known is not None and known[1] is None  # the entry, outside grace
    assert verifier.cached(bad) is None  # refused tokens are the refusal cache's, never the token cache's
    # asked before the token's characters are checked: undecodable header bytes (surrogates) are not hashable
    assert not verifier.knows("eyJ\udcff.x.y") and not verifier.knows("eyJ\u00e9.x.y")
    sc.clock.advance(600 + sc.state.cfg.leeway + sc.state.cfg.expired_grace + 1)
    with pytest.raises(errors.Expired):  # a hit still answers to the clock
        verifier.cached(good)


# --- key identity in the cache, tokens without kid, max_token_lifetime (issues 9 and 15) ------------------

from collections.abc import Iterator  # noqa: E402
from typing import Any  # noqa: E402

from sidecar.devtools.issuer import SigningKey, new_key  # noqa: E402
from sidecar.jwks import thumbprint  # noqa: E402
from tests.support import KeySetServer  # noqa: E402

ISS = "https://idp.example"


@pytest.fixture
def key_server() -> Iterator[KeySetServer]:
    server = KeySetServer()
    yield server
    server.stop()


def kidless(key: SigningKey) -> dict[str, Any]:
    return {k: v for k, v in key.public_jwk().items() if k not in ("kid", "alg")}


def mint(key: SigningKey, now: float, kid: str | None = None, **claims: Any) -> str:
    payload = {"iss": ISS, "aud": "demo-api", "sub": "u", "iat": int(now), "exp": int(now) + 300} | claims
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, key.private, algorithm=key.alg, headers={"kid": kid} if kid else None)


async def served(
    make_sidecar: MakeSidecar, issuer: DevIssuer, server: KeySetServer, retention: str = "0s", **provider: Any
) -> InProc:
    return await make_sidecar(
        issuer,
        providers=[{"issuer": ISS, "audiences": ["demo-api"], "jwks_url": server.url, **provider}],
        jwks={"key_retention": retention},
    )


async def test_a_cached_kidless_token_dies_with_the_key_that_verified_it(
    issuer: DevIssuer, make_sidecar: MakeSidecar, key_server: KeySetServer
) -> None:
    old, new = new_key("RS256"), new_key("RS256")
    key_server.doc = {"keys": [kidless(old)]}
    sc = await served(make_sidecar, issuer, key_server)
    token = mint(old, sc.clock.now())
    assert await reason(sc, token) is None
    assert await reason(sc, token) is None  # now from the cache
    key_server.doc = {"keys": [kidless(new)]}  # replaced: still exactly one key, as before
    assert (await sc.state.keys[0].refresh())["ok"]
    assert await reason(sc, token) == "unknown_kid"  # no trusted key verifies it any more
    assert await reason(sc, mint(new, sc.clock.now())) is None


async def test_a_cached_kidless_token_lives_exactly_as_long_as_its_key_is_retained(
    issuer: DevIssuer, make_sidecar: MakeSidecar, key_server: KeySetServer
) -> None:
    old, new = new_key("ES256"), new_key("ES256")
    key_server.doc = {"keys": [kidless(old)]}
    sc = await served(make_sidecar, issuer, key_server, retention="10m")
    token = mint(old, sc.clock.now(), exp=int(sc.clock.now()) + 3600)
    assert await reason(sc, token) is None
    key_server.doc = {"keys": [kidless(new)]}
    assert (await sc.state.keys[0].refresh())["ok"]
    sc.clock.advance(599)
    assert await reason(sc, token) is None  # retained
    sc.clock.advance(2)
    sc.state.keys[0].keys.expire(sc.clock.monotonic())
    assert await reason(sc, token) == "unknown_kid"
    assert len(sc.state.verifier.cache) <= 1


async def test_revoking_a_kidless_key_by_thumbprint_drops_its_cached_tokens(
    issuer: DevIssuer, make_sidecar: MakeSidecar, key_server: KeySetServer
) -> None:
    bad, good = new_key("RS256"), new_key("RS256")
    key_server.doc = {"keys": [kidless(bad), kidless(good)]}
    sc = await served(make_sidecar, issuer, key_server)
    token = mint(bad, sc.clock.now())
    assert await reason(sc, token) is None
    tp = thumbprint(bad.private.public_key())
    r = await sc.admin.post(f"/admin/keys/default/{tp}/revoke", headers={"X-Sidecar-Admin": "1"})
    assert (await r.json())["cached_tokens_dropped"] == 1
    assert await reason(sc, token) == "unknown_kid"
    listing = await (await sc.admin.get("/admin/keys")).json()
    assert tp not in [k["thumbprint"] for k in listing[0]["keys"]]
    assert await reason(sc, mint(good, sc.clock.now())) is None


async def test_a_cached_token_is_checked_against_its_key_not_against_its_kid(
    issuer: DevIssuer, make_sidecar: MakeSidecar, key_server: KeySetServer
) -> None:
    first, second = new_key("RS256", kid="k1"), new_key("RS256", kid="k1")
    key_server.doc = {"keys": [first.public_jwk()]}
    sc = await served(make_sidecar, issuer, key_server)
    token = mint(first, sc.clock.now(), kid="k1")
    assert await reason(sc, token) is None
    key_server.doc = {"keys": [second.public_jwk()]}  # the IdP reuses the kid for a new key
    assert (await sc.state.keys[0].refresh())["ok"]
    assert await reason(sc, token) == "bad_signature"


async def test_a_kidless_token_is_tried_against_the_keys_that_fit_its_alg(
    issuer: DevIssuer, make_sidecar: MakeSidecar, key_server: KeySetServer
) -> None:
    rsa_keys = [new_key("RS256", kid=f"r{i}") for i in range(3)]
    ec_key = new_key("ES256", kid="e")
    key_server.doc = {"keys": [k.public_jwk() for k in (ec_key, *rsa_keys)]}
    sc = await served(make_sidecar, issuer, key_server)
    assert await reason(sc, mint(rsa_keys[2], sc.clock.now())) is None
    assert sc.metric("sidecar_auth_kidless_attempts_total", provider="default", result="failed") == 2
    assert sc.metric("sidecar_auth_kidless_attempts_total", provider="default", result="verified") == 1
    assert await reason(sc, mint(ec_key, sc.clock.now())) is None  # one ES256 candidate only
    assert sc.metric("sidecar_auth_kidless_attempts_total", provider="default", result="failed") == 2


async def test_kidless_tries_are_bounded_and_the_reason_says_what_happened(
    issuer: DevIssuer, make_sidecar: MakeSidecar, key_server: KeySetServer
) -> None:
    keys = [new_key("ES256") for _ in range(4)]
    key_server.doc = {"keys": [kidless(k) for k in keys]}
    sc = await served(make_sidecar, issuer, key_server, max_kidless_candidates=2)
    r = await sc.get(token=mint(keys[3], sc.clock.now()))
    body = await r.json()
    assert body["reason"] == "unknown_kid"
    assert body["description"] == (
        "no kid; tried 2 candidate keys; none verified (2 more not tried: max_kidless_candidates is 2)"
    )
    stranger = new_key("ES256")
    r = await sc.get(token=mint(stranger, sc.clock.now()))
    assert (await r.json())["description"].startswith("no kid; tried 2 candidate keys; none verified")
    r = await sc.get(token=mint(new_key("RS256"), sc.clock.now()))
    assert (await r.json())["reason"] == "unsupported_alg"


async def test_kidless_tokens_can_be_refused_outright(
    issuer: DevIssuer, make_sidecar: MakeSidecar, key_server: KeySetServer
) -> None:
    key = new_key("ES256", kid="only")
    key_server.doc = {"keys": [key.public_jwk()]}
    sc = await served(make_sidecar, issuer, key_server, max_kidless_candidates=0)
    assert await reason(sc, mint(key, sc.clock.now())) == "unknown_kid"
    assert await reason(sc, mint(key, sc.clock.now(), kid="only")) is None


@pytest.mark.parametrize(
    ("lifetime", "claims", "expected"),
    [
        ("24h", {"exp": 86400}, None),
        ("24h", {"exp": 86400 + 60}, None),  # leeway applies
        ("24h", {"exp": 86400 + 61}, "lifetime_too_long"),
        ("24h", {"exp": 1e300}, "lifetime_too_long"),
        ("24h", {"iat": None, "exp": 86000}, None),  # without iat: measured from now
        ("24h", {"iat": None, "exp": 90000}, "lifetime_too_long"),
        ("1h", {"exp": 3700}, "lifetime_too_long"),
        ("0", {"exp": 1e300}, None),
    ],
    ids=str,
)
async def test_max_token_lifetime_bounds_exp_from_iat_or_from_now(
    issuer: DevIssuer,
    make_sidecar: MakeSidecar,
    key_server: KeySetServer,
    lifetime: str,
    claims: dict[str, Any],
    expected: str | None,
) -> None:
    key = new_key("ES256", kid="k")
    key_server.doc = {"keys": [key.public_jwk()]}
    sc = await served(make_sidecar, issuer, key_server, max_token_lifetime=lifetime)
    now = int(sc.clock.now())
    exp = claims["exp"]
    relative = {**claims, "exp": exp if exp > 1e12 else now + exp}  # seconds after iat (= now when minted)
    assert await reason(sc, mint(key, now, kid="k", **relative)) == expected


async def test_a_token_past_the_lifetime_bound_says_so_briefly_and_is_refused_from_the_cache(
    issuer: DevIssuer, make_sidecar: MakeSidecar, key_server: KeySetServer
) -> None:
    key = new_key("ES256", kid="k")
    key_server.doc = {"keys": [key.public_jwk()]}
    sc = await served(make_sidecar, issuer, key_server)
    token = mint(key, sc.clock.now(), kid="k", exp=1e300)
    for _ in range(2):
        r = await sc.get(token=token)
        assert (await r.json())["description"] == "exp is 1e+300s after iat; max_token_lifetime is 86400s"
    assert sc.metric("sidecar_token_cache_lookups_total", result="hit") == 1
    assert sc.metric("sidecar_auth_failures_total", reason="lifetime_too_long") == 2


async def test_a_token_without_exp_is_left_to_required_claims(
    issuer: DevIssuer, make_sidecar: MakeSidecar, key_server: KeySetServer
) -> None:
    key = new_key("ES256", kid="k")
    key_server.doc = {"keys": [key.public_jwk()]}
    sc = await served(make_sidecar, issuer, key_server, required_claims=[])
    assert await reason(sc, mint(key, sc.clock.now(), kid="k", exp=None)) is None
