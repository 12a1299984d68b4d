"""Token verification with an injected clock: leeway, grace, nbf/iat, claim types, the verified-token cache."""

from __future__ import annotations

import time

import jwt
import pytest

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
        ({"exp": 4102444800.5}, None),
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
