"""Route rules and token sources, end to end through the in-process sidecar with real keys and a real app."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.devtools.issuer import DevIssuer
from tests.conftest import InProc, MakeSidecar, Upstream

RULES = [
    {"name": "health", "exact": "/healthz", "public": True},
    {"name": "admin", "prefix": "/admin", "scopes": ["admin"]},
    {"name": "reports", "prefix": "/reports", "scopes_any": ["reports:read", "reports:admin"]},
    {
        "name": "tenant",
        "prefix": "/tenant",
        "claims": {"tenant": "acme", "role": {"one_of": ["owner", "admin"]}, "email_verified": True},
    },
    {"name": "partner", "prefix": "/partner", "clients": ["partner-app"]},
    {"name": "internal", "prefix": "/internal", "deny": True},
    {
        "name": "stripped",
        "prefix": "/stripped",
        "strip_authorization": True,
        "claim_headers": {"X-Auth-Tenant": "tenant"},
    },
    {"name": "writes", "prefix": "/orders", "methods": ["POST", "DELETE"], "scopes": ["orders:write"]},
]


@pytest.fixture
async def sc(issuer: DevIssuer, make_sidecar: MakeSidecar) -> InProc:
    return await make_sidecar(issuer, rules=RULES, route_metrics=True)


async def call(sc: InProc, path: str, method: str = "GET", token: str | None = None, **headers: str) -> tuple[int, Any]:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    r = await sc.client.request(method, path, headers=headers)
    body = await r.json() if r.content_type == "application/json" else {}
    return r.status, body.get("reason") if r.status != 200 else r.headers


async def test_a_missing_scope_is_403_insufficient_scope_with_the_scope_named(sc: InProc, issuer: DevIssuer) -> None:
    r = await sc.client.get("/admin/users", headers={"Authorization": f"Bearer {issuer.mint(now=sc.clock.now())}"})
    assert r.status == 403
    assert (await r.json())["reason"] == "insufficient_scope"
    assert r.headers["WWW-Authenticate"] == (
        'Bearer realm="sidecar", error="insufficient_scope", error_description="route \'admin\' needs scope admin",'
        ' scope="admin"'
    )
    assert sc.metric("sidecar_auth_failures_total", reason="insufficient_scope") == 1
    assert sc.metric("sidecar_route_requests_total", route="admin", outcome="insufficient_scope") == 1


@pytest.mark.parametrize("claims", [{"scope": "read admin"}, {"scp": ["admin", "x"]}, {"scp": "admin"}])
async def test_scopes_come_from_scope_or_scp(sc: InProc, issuer: DevIssuer, claims: dict[str, Any]) -> None:
    assert (await call(sc, "/admin", token=issuer.mint(now=sc.clock.now(), **claims)))[0] == 200


async def test_any_of_scopes(sc: InProc, issuer: DevIssuer) -> None:
    now = sc.clock.now()
    assert (await call(sc, "/reports", token=issuer.mint(now=now, scope="reports:admin")))[0] == 200
    assert await call(sc, "/reports", token=issuer.mint(now=now, scope="reports:write")) == (403, "insufficient_scope")


@pytest.mark.parametrize(
    ("claims", "status"),
    [
        ({"tenant": "acme", "role": "owner", "email_verified": True}, 200),
        ({"tenant": "acme", "role": ["viewer", "admin"], "email_verified": True}, 200),
        ({"tenant": "other", "role": "owner", "email_verified": True}, 403),
        ({"tenant": "acme", "role": "viewer", "email_verified": True}, 403),
        ({"tenant": "acme", "role": "owner", "email_verified": 1}, 403),  # JSON 1 is not true
        ({"tenant": "acme", "role": "owner"}, 403),
    ],
)
async def test_claim_values_exact_one_of_and_typed(
    sc: InProc, issuer: DevIssuer, claims: dict[str, Any], status: int
) -> None:
    got = await call(sc, "/tenant/x", token=issuer.mint(now=sc.clock.now(), **claims))
    assert got[0] == status
    if status == 403:
        assert got[1] == "claim_mismatch"


async def test_a_route_for_one_client_checks_azp_or_client_id(sc: InProc, issuer: DevIssuer) -> None:
    now = sc.clock.now()
    assert (await call(sc, "/partner", token=issuer.mint(now=now, azp="partner-app")))[0] == 200
    assert (await call(sc, "/partner", token=issuer.mint(now=now, client_id="partner-app")))[0] == 200
    assert await call(sc, "/partner", token=issuer.mint(now=now, azp="web")) == (403, "claim_mismatch")


async def test_a_deny_rule_refuses_everyone(sc: InProc, issuer: DevIssuer) -> None:
    r = await sc.client.get("/internal/x", headers={"Authorization": f"Bearer {issuer.mint(now=sc.clock.now())}"})
    assert r.status == 403 and (await r.json())["reason"] == "route_denied"
    assert "WWW-Authenticate" not in r.headers


async def test_methods_select_the_rule_and_the_first_match_wins(sc: InProc, issuer: DevIssuer) -> None:
    token = issuer.mint(now=sc.clock.now())
    assert (await call(sc, "/orders/1", token=token))[0] == 200  # GET: unmatched, any valid token
    assert await call(sc, "/orders/1", "DELETE", token=token) == (403, "insufficient_scope")
    assert (await call(sc, "/orders/1", "DELETE", token=issuer.mint(now=sc.clock.now(), scope="orders:write")))[
        0
    ] == 200


@pytest.mark.parametrize(
    "path",
    ["/x/../admin/users", "/%61dmin/users", "/admin//users", "/./admin/users", "/admin/./users", "/public/../admin"],
)
async def test_rules_match_the_normalised_path_the_app_receives(
    sc: InProc, issuer: DevIssuer, upstream: Upstream, path: str
) -> None:
    assert await call(sc, path, token=issuer.mint(now=sc.clock.now())) == (403, "insufficient_scope")
    upstream.clear()
    assert (await call(sc, path, token=issuer.mint(now=sc.clock.now(), scope="admin")))[0] == 200
    assert upstream.record[-1]["path"] in ("/admin/users", "/admin")


async def test_rules_are_case_sensitive(sc: InProc, issuer: DevIssuer) -> None:
    # /ADMIN is not /admin: it falls to `unmatched` (a valid token), never to a public rule
    assert (await call(sc, "/ADMIN", token=issuer.mint(now=sc.clock.now())))[0] == 200
    assert await call(sc, "/HEALTHZ") == (401, "missing_token")
    assert (await call(sc, "/healthz"))[0] == 200


async def test_an_ambiguous_path_must_satisfy_every_rule_it_might_be(sc: InProc, issuer: DevIssuer) -> None:
    # "/admin%2fusers" might be /admin/users to the app; with a deny rule for all methods it is refused
    assert await call(sc, "/admin%2fusers", token=issuer.mint(now=sc.clock.now(), scope="admin")) == (
        403,
        "route_denied",
    )


async def test_an_ambiguous_path_is_held_to_all_requirements(issuer: DevIssuer, make_sidecar: MakeSidecar) -> None:
    sc = await make_sidecar(
        issuer,
        rules=[
            {"name": "admin", "prefix": "/admin", "scopes": ["admin"]},
            {"name": "reports", "prefix": "/reports", "scopes": ["reports"]},
        ],
    )
    now = sc.clock.now()
    assert await call(sc, "/admin%2fx", token=issuer.mint(now=now, scope="admin")) == (403, "insufficient_scope")
    assert (await call(sc, "/admin%2fx", token=issuer.mint(now=now, scope="admin reports")))[0] == 200


async def test_per_rule_claim_headers_and_authorization_stripping(
    sc: InProc, issuer: DevIssuer, upstream: Upstream
) -> None:
    upstream.clear()
    assert (await call(sc, "/stripped", token=issuer.mint(now=sc.clock.now(), tenant="acme")))[0] == 200
    seen = dict(upstream.record[-1]["headers"])
    assert seen.get("X-Auth-Tenant") == "acme"
    assert "Authorization" not in seen and "X-Auth-Subject" not in seen  # the rule's headers replace the global ones


@pytest.mark.parametrize(("unmatched", "status"), [("public", 200), ("deny", 403), ("token", 401)])
async def test_the_default_for_unmatched_requests_is_configurable(
    issuer: DevIssuer, make_sidecar: MakeSidecar, unmatched: str, status: int
) -> None:
    sc = await make_sidecar(issuer, rules=[{"name": "api", "prefix": "/api"}], unmatched=unmatched)
    assert (await call(sc, "/elsewhere"))[0] == status
    assert (await call(sc, "/api"))[0] == 401


# --- token sources ---------------------------------------------------------------------------------------


@pytest.fixture
async def sources(issuer: DevIssuer, make_sidecar: MakeSidecar) -> InProc:
    return await make_sidecar(
        issuer,
        providers=[
            {
                "issuer": issuer.issuer,
                "audiences": ["demo-api"],
                "jwks_url": f"{issuer.issuer}/jwks.json",
                "token_sources": ["header", "cookie:session", "header:X-Api-Token", "query:token"],
            }
        ],
    )


async def test_a_token_in_a_cookie_another_header_or_an_enabled_query_parameter_is_used(
    sources: InProc, issuer: DevIssuer
) -> None:
    token = issuer.mint(now=sources.clock.now())
    assert (await call(sources, "/c", Cookie=f"theme=dark; session={token}"))[0] == 200
    assert (await call(sources, "/c", Cookie=f'session="{token}"'))[0] == 200
    assert (await call(sources, "/h", **{"X-Api-Token": token}))[0] == 200
    assert (await call(sources, f"/q?token={token}"))[0] == 200


async def test_a_token_in_two_places_is_400_multiple_tokens(sources: InProc, issuer: DevIssuer) -> None:
    token = issuer.mint(now=sources.clock.now())
    assert await call(sources, "/c", token=token, Cookie=f"session={token}") == (400, "multiple_tokens")
    assert await call(sources, "/c", Cookie=f"session={token}; session={token}") == (400, "multiple_tokens")
    assert await call(sources, f"/c?token={token}", **{"X-Api-Token": token}) == (400, "multiple_tokens")


async def test_a_query_token_is_refused_unless_enabled(sc: InProc, issuer: DevIssuer) -> None:
    token = issuer.mint(now=sc.clock.now())
    assert await call(sc, f"/x?token={token}") == (401, "missing_token")
    assert await call(sc, f"/x?access_token={token}") == (401, "missing_token")


async def test_a_source_its_provider_does_not_accept_is_refused(
    issuer: DevIssuer, fresh_issuer: DevIssuer, make_sidecar: MakeSidecar
) -> None:
    fresh_issuer.audience = "demo-api"
    sc = await make_sidecar(
        issuer,
        providers=[
            {
                "name": "web",
                "issuer": issuer.issuer,
                "audiences": ["demo-api"],
                "jwks_url": f"{issuer.issuer}/jwks.json",
                "token_sources": ["cookie:session"],
            },
            {
                "name": "api",
                "issuer": fresh_issuer.issuer,
                "audiences": ["demo-api"],
                "jwks_url": f"{fresh_issuer.issuer}/jwks.json",
            },
        ],
    )
    now = sc.clock.now()
    assert (await call(sc, "/x", Cookie=f"session={issuer.mint(now=now)}"))[0] == 200
    assert await call(sc, "/x", token=issuer.mint(now=now)) == (401, "wrong_token_source")
    assert await call(sc, "/x", Cookie=f"session={fresh_issuer.mint(now=now)}") == (401, "wrong_token_source")


async def test_an_optional_token_on_a_public_path_that_fails_is_removed_from_its_cookie(
    issuer: DevIssuer, upstream: Upstream, make_sidecar: MakeSidecar
) -> None:
    sc = await make_sidecar(
        issuer,
        public_paths=["/public"],
        providers=[
            {
                "issuer": issuer.issuer,
                "audiences": ["demo-api"],
                "jwks_url": f"{issuer.issuer}/jwks.json",
                "token_sources": ["cookie:session"],
            }
        ],
    )
    forged = issuer.mint(now=sc.clock.now() - 7200, ttl=60)  # long expired
    upstream.clear()
    assert (await call(sc, "/public/x", Cookie=f"theme=dark; session={forged}; lang=en"))[0] == 200
    assert dict(upstream.record[-1]["headers"])["Cookie"] == "theme=dark; lang=en"
    valid = issuer.mint(now=sc.clock.now(), sub="carol")
    assert (await call(sc, "/public/x", Cookie=f"session={valid}"))[0] == 200
    seen = dict(upstream.record[-1]["headers"])
    assert seen["Cookie"] == f"session={valid}" and seen["X-Auth-Subject"] == "carol"


async def test_basic_credentials_on_a_public_path_reach_the_app_only_when_their_scheme_is_passed_through(
    issuer: DevIssuer, upstream: Upstream, make_sidecar: MakeSidecar
) -> None:
    # an app may read any scheme's credentials as a token (`auth.split(" ")[1]`): unverified ones are removed
    sc = await make_sidecar(issuer)
    upstream.clear()
    assert (await call(sc, "/public/x", Authorization="Basic dXNlcjpwYXNz"))[0] == 200
    assert "Authorization" not in dict(upstream.record[-1]["headers"])
    sc = await make_sidecar(issuer, authorization_passthrough=["Basic"])
    assert (await call(sc, "/public/x", Authorization="Basic dXNlcjpwYXNz"))[0] == 200
    assert dict(upstream.record[-1]["headers"])["Authorization"] == "Basic dXNlcjpwYXNz"
