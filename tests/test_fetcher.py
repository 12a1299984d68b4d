"""The key lifecycle against a real JWKS server on loopback, with time moved by a fake clock."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from sidecar.devtools.issuer import DevIssuer, new_key
from sidecar.fetcher import ProviderKeys
from sidecar.keys.channel import LocalChannel
from tests.conftest import InProc, MakeSidecar
from tests.support import free_port

REFRESH, MAX_STALE, COOLDOWN, RETENTION = 300, 86400, 30, 86400


def fetcher(sc: InProc) -> ProviderKeys:
    """The provider's fetcher: with one worker it runs in the same process, behind the same channel."""
    channel = sc.state.channel
    assert isinstance(channel, LocalChannel)
    return channel.hub.fetchers[0]


def fetches(sc: InProc, result: str) -> float:
    return sc.metric("sidecar_jwks_fetches_total", provider="default", result=result)


async def status_of(sc: InProc, token: str) -> tuple[int, str | None]:
    r = await sc.get(token=token)
    body = await r.json() if r.content_type == "application/json" else {}
    return r.status, body.get("reason") if r.status != 200 else None


async def test_new_kid_works_on_its_first_request_at_the_cost_of_one_fetch(
    fresh_issuer: DevIssuer, make_sidecar: MakeSidecar
) -> None:
    sc = await make_sidecar(fresh_issuer)
    assert fresh_issuer.jwks_fetches == 1
    fresh_issuer.rotate()
    token = fresh_issuer.mint(now=sc.clock.now())
    assert await status_of(sc, token) == (200, None)
    assert fresh_issuer.jwks_fetches == 2
    assert sc.metric("sidecar_jwks_unknown_kid_refetches_total", provider="default", outcome="fetched") == 1


async def test_concurrent_requests_with_a_new_kid_share_one_fetch(
    fresh_issuer: DevIssuer, make_sidecar: MakeSidecar
) -> None:
    sc = await make_sidecar(fresh_issuer)
    fresh_issuer.rotate()
    tokens = [fresh_issuer.mint(sub=f"u{i}", now=sc.clock.now()) for i in range(20)]
    results = await asyncio.gather(*(status_of(sc, t) for t in tokens))
    assert results == [(200, None)] * 20
    assert fresh_issuer.jwks_fetches == 2


async def test_a_flood_of_random_kids_costs_at_most_one_fetch_per_cooldown(
    fresh_issuer: DevIssuer, make_sidecar: MakeSidecar
) -> None:
    sc = await make_sidecar(fresh_issuer)
    attacker = new_key("RS256")

    async def flood() -> list[tuple[int, str | None]]:
        forged = []
        for _ in range(40):
            attacker.kid = uuid.uuid4().hex
            forged.append(fresh_issuer.mint(key=attacker, now=sc.clock.now()))
        return await asyncio.gather(*(status_of(sc, t) for t in forged))

    assert set(await flood()) == {(401, "unknown_kid")}
    assert fresh_issuer.jwks_fetches == 2
    sc.clock.advance(COOLDOWN - 1)
    assert set(await flood()) == {(401, "unknown_kid")}
    assert fresh_issuer.jwks_fetches == 2
    sc.clock.advance(2)
    await flood()
    assert fresh_issuer.jwks_fetches == 3
    # bursts join the fetch in flight; only the burst inside the cooldown is suppressed outright
    assert sc.metric("sidecar_jwks_unknown_kid_refetches_total", provider="default", outcome="fetched") == 2
    assert sc.metric("sidecar_jwks_unknown_kid_refetches_total", provider="default", outcome="suppressed") == 40


async def test_valid_tokens_keep_working_through_an_outage_until_max_stale_then_503_then_recover(
    fresh_issuer: DevIssuer, make_sidecar: MakeSidecar
) -> None:
    sc = await make_sidecar(fresh_issuer)
    pk = fetcher(sc)
    fresh_issuer.outage = "500"
    sc.clock.advance(REFRESH + 1)
    assert await pk.refresh() is False
    assert fetches(sc, "http_error") == 1
    assert await status_of(sc, fresh_issuer.mint(now=sc.clock.now())) == (200, None)
    assert (await sc.admin.get("/readyz")).status == 200

    sc.clock.advance(MAX_STALE - 2)  # just inside refresh + max_stale
    assert await status_of(sc, fresh_issuer.mint(now=sc.clock.now())) == (200, None)
    metrics = await (await sc.admin.get("/metrics")).text()
    assert 'sidecar_jwks_stale_seconds{provider="default"} 86399.0' in metrics

    sc.clock.advance(2)  # past max_stale: no usable keys
    r = await sc.get(token=fresh_issuer.mint(now=sc.clock.now()))
    assert r.status == 503
    assert r.headers["Retry-After"] == "5"
    assert (await r.json())["reason"] == "keys_unavailable"
    assert (await sc.admin.get("/readyz")).status == 503

    fresh_issuer.outage = "off"
    assert await pk.refresh() is True
    assert await status_of(sc, fresh_issuer.mint(now=sc.clock.now())) == (200, None)
    assert (await sc.admin.get("/readyz")).status == 200


async def test_cached_tokens_also_stop_at_max_stale(fresh_issuer: DevIssuer, make_sidecar: MakeSidecar) -> None:
    sc = await make_sidecar(fresh_issuer, expired_grace="48h", providers=[long_lived(fresh_issuer)])
    token = fresh_issuer.mint(now=sc.clock.now(), ttl=3 * 86400)
    assert await status_of(sc, token) == (200, None)
    fresh_issuer.outage = "500"
    sc.clock.advance(REFRESH + MAX_STALE + 1)
    assert await status_of(sc, token) == (503, "keys_unavailable")


async def test_each_kind_of_fetch_failure_keeps_the_last_good_keys_and_is_counted(
    fresh_issuer: DevIssuer, make_sidecar: MakeSidecar
) -> None:
    sc = await make_sidecar(fresh_issuer, jwks={"fetch_timeout": "0.3s", "max_bytes": 4096})
    pk = fetcher(sc)
    for mode, result in (
        ("500", "http_error"),
        ("garbage", "invalid"),
        ("empty", "invalid"),
        ("hang", "timeout"),
    ):
        fresh_issuer.outage = mode
        assert await pk.refresh() is False, mode
        assert fetches(sc, result) >= 1, mode
    fresh_issuer.outage = "off"
    fresh_issuer.extra_keys = [{"kty": "RSA", "kid": f"pad{i}", "n": "x" * 200, "e": "AQAB"} for i in range(30)]
    assert await pk.refresh() is False  # body over jwks.max_bytes
    assert fetches(sc, "invalid") == 3
    fresh_issuer.extra_keys = []
    pk.jwks_url = f"http://127.0.0.1:{free_port()}/jwks.json"  # nothing listens there
    assert await pk.refresh() is False
    assert fetches(sc, "refused") == 1
    assert await status_of(sc, fresh_issuer.mint(now=sc.clock.now())) == (200, None)


async def test_a_removed_key_works_for_the_retention_window_and_not_after(
    fresh_issuer: DevIssuer, make_sidecar: MakeSidecar
) -> None:
    sc = await make_sidecar(fresh_issuer)
    old = fresh_issuer.signing
    fresh_issuer.rotate(keep_old=False)
    assert await fetcher(sc).refresh()
    sc.clock.advance(RETENTION - 10)
    assert await status_of(sc, fresh_issuer.mint(key=old, now=sc.clock.now())) == (200, None)
    sc.clock.advance(11)
    assert await status_of(sc, fresh_issuer.mint(key=old, now=sc.clock.now())) == (401, "unknown_kid")
    assert await status_of(sc, fresh_issuer.mint(now=sc.clock.now())) == (200, None)


async def test_a_cached_token_of_a_retired_key_stops_when_retention_ends(
    fresh_issuer: DevIssuer, make_sidecar: MakeSidecar
) -> None:
    sc = await make_sidecar(fresh_issuer, expired_grace="3d", providers=[long_lived(fresh_issuer)])
    old = fresh_issuer.signing
    token = fresh_issuer.mint(key=old, now=sc.clock.now(), ttl=2 * 86400)
    assert await status_of(sc, token) == (200, None)
    fresh_issuer.rotate(keep_old=False)
    await fetcher(sc).refresh()
    sc.clock.advance(RETENTION + 1)
    await fetcher(sc).refresh()
    assert await status_of(sc, token) == (401, "unknown_kid")


async def test_readiness_follows_key_availability_at_start(fresh_issuer: DevIssuer, make_sidecar: MakeSidecar) -> None:
    fresh_issuer.outage = "500"
    sc = await make_sidecar(fresh_issuer, wait=False)
    await asyncio.sleep(0.1)
    assert (await sc.admin.get("/readyz")).status == 503
    r = await sc.get(token=fresh_issuer.mint(now=sc.clock.now()))
    assert r.status == 503 and (await r.json())["reason"] == "keys_unavailable"
    fresh_issuer.outage = "off"
    for _ in range(100):  # the start-up fetch retries with backoff (real time: this is the retry loop)
        if sc.state.ready():
            break
        await asyncio.sleep(0.05)
    assert (await sc.admin.get("/readyz")).status == 200
    assert await status_of(sc, fresh_issuer.mint(now=sc.clock.now())) == (200, None)


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # the weak keys are the point
async def test_weak_symmetric_and_encryption_keys_are_never_used(
    fresh_issuer: DevIssuer, make_sidecar: MakeSidecar
) -> None:
    weak = new_key("RS256", kid="weak", bits=1024)
    enc = new_key("RS256", kid="enc")
    fresh_issuer.extra_keys = [
        weak.public_jwk(),
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0", "alg": "HS256"},
        {**enc.public_jwk(), "use": "enc"},
    ]
    sc = await make_sidecar(fresh_issuer)
    for reason in ("weak", "symmetric", "enc"):
        assert sc.metric("sidecar_jwks_keys_ignored_total", provider="default", reason=reason) == 1
    assert await status_of(sc, fresh_issuer.mint(key=weak, now=sc.clock.now())) == (401, "unknown_kid")
    assert await status_of(sc, fresh_issuer.mint(key=enc, now=sc.clock.now())) == (401, "unknown_kid")
    import jwt

    forged = jwt.encode(
        {"iss": fresh_issuer.issuer, "aud": "demo-api", "exp": sc.clock.now() + 60},
        "secret",
        algorithm="HS256",
        headers={"kid": "hmac"},
    )
    assert await status_of(sc, forged) == (401, "unsupported_alg")


async def test_cache_control_max_age_is_honoured_within_bounds(
    fresh_issuer: DevIssuer, make_sidecar: MakeSidecar
) -> None:
    sc = await make_sidecar(fresh_issuer)
    pk = fetcher(sc)
    for header, expected in (
        ("max-age=10", 60.0),
        ("public, max-age=900", 900.0),
        ("max-age=999999", 3600.0),
    ):
        fresh_issuer.cache_control = header
        assert await pk.refresh()
        assert pk.fresh_for == expected
    assert 0.9 * 3600 <= pk.next_refresh_in() <= 3600


async def test_discovery_finds_the_jwks_uri_and_checks_the_issuer(
    fresh_issuer: DevIssuer, make_sidecar: MakeSidecar
) -> None:
    sc = await make_sidecar(
        fresh_issuer,
        providers=[{"issuer": fresh_issuer.issuer, "audiences": ["demo-api"], "discovery": True}],
    )
    assert fetcher(sc).jwks_url == f"{fresh_issuer.issuer}/jwks.json"
    assert await status_of(sc, fresh_issuer.mint(now=sc.clock.now())) == (200, None)

    liar = DevIssuer(audience="demo-api")
    liar.issuer = fresh_issuer.issuer + "/other"  # discovery at a URL whose document names another issuer
    from tests.support import ThreadedServer

    server = ThreadedServer(liar.app())
    try:
        bad = await make_sidecar(
            liar, wait=False, providers=[{"issuer": server.url, "audiences": ["demo-api"], "discovery": True}]
        )
        assert await fetcher(bad).refresh() is False
        assert "issuer does not match" in (fetcher(bad).last_error or "")
    finally:
        server.stop()


async def test_clock_skew_against_the_idp_is_exported_from_the_date_header(
    fresh_issuer: DevIssuer, make_sidecar: MakeSidecar
) -> None:
    sc = await make_sidecar(fresh_issuer)
    sc.clock.skew_wall(45)  # this host's clock runs 45 s ahead of the IdP's
    await fetcher(sc).refresh()
    skew = sc.metric("sidecar_clock_skew_seconds", provider="default")
    assert 44 <= skew <= 46


async def test_an_admin_can_revoke_a_key_at_once_even_for_cached_tokens(
    fresh_issuer: DevIssuer, make_sidecar: MakeSidecar
) -> None:
    fresh_issuer.rotate()  # two keys published; the older one gets compromised
    sc = await make_sidecar(fresh_issuer)
    old = fresh_issuer.keys[0]
    token = fresh_issuer.mint(key=old, now=sc.clock.now())
    assert await status_of(sc, token) == (200, None)
    kid = old.kid
    r = await sc.admin.post(f"/admin/keys/default/{kid}/revoke", headers={"X-Sidecar-Admin": "1"})
    assert r.status == 200
    assert (await r.json())["cached_tokens_dropped"] == 1
    assert await status_of(sc, token) == (401, "unknown_kid")
    await fetcher(sc).refresh()  # the IdP still publishes it: it stays refused
    sc.clock.advance(COOLDOWN + 1)
    assert await status_of(sc, token) == (401, "unknown_kid")
    listing = await (await sc.admin.get("/admin/keys")).json()
    assert kid not in [k["kid"] for k in listing[0]["keys"]]
    assert await status_of(sc, fresh_issuer.mint(now=sc.clock.now())) == (200, None)


async def test_revoked_kids_in_config_are_never_trusted(fresh_issuer: DevIssuer, make_sidecar: MakeSidecar) -> None:
    bad = new_key("RS256", kid="compromised")
    fresh_issuer.keys.append(bad)
    sc = await make_sidecar(
        fresh_issuer,
        providers=[
            {
                "issuer": fresh_issuer.issuer,
                "audiences": ["demo-api"],
                "jwks_url": f"{fresh_issuer.issuer}/jwks.json",
                "revoked_kids": ["compromised"],
            }
        ],
    )
    assert await status_of(sc, fresh_issuer.mint(key=bad, now=sc.clock.now())) == (401, "unknown_kid")
    assert await status_of(sc, fresh_issuer.mint(now=sc.clock.now())) == (200, None)


async def test_admin_actions_answer_only_on_loopback_by_default(
    fresh_issuer: DevIssuer, make_sidecar: MakeSidecar
) -> None:
    sc = await make_sidecar(fresh_issuer)
    assert (await sc.admin.post("/admin/keys/default/refresh", json={})).status == 200
    off = await make_sidecar(fresh_issuer, admin_actions="off")
    r = await off.admin.get("/admin/keys")
    assert r.status == 403 and (await r.json())["reason"] == "admin_actions_disabled"


async def test_a_rotation_hidden_behind_a_bogus_kid_is_learned_when_the_cooldown_ends(
    fresh_issuer: DevIssuer, make_sidecar: MakeSidecar
) -> None:
    sc = await make_sidecar(fresh_issuer)
    pk = fetcher(sc)
    attacker = new_key("RS256", kid="bogus")
    assert await status_of(sc, fresh_issuer.mint(key=attacker, now=sc.clock.now())) == (401, "unknown_kid")
    assert fresh_issuer.jwks_fetches == 2  # the bogus kid used up this cooldown's refetch
    fresh_issuer.rotate()
    sc.clock.advance(5)
    new_token = fresh_issuer.mint(now=sc.clock.now())
    assert await status_of(sc, new_token) == (401, "unknown_kid")  # suppressed: the bound holds
    assert pk.deferred_refetch_in() == COOLDOWN - 5
    sc.clock.advance(COOLDOWN - 5)
    await pk.tick()  # what the background refresher does when it wakes
    assert fresh_issuer.jwks_fetches == 3
    assert await status_of(sc, new_token) == (200, None)
    # the deferred fetch counts as the cooldown's one: more bogus kids still cost nothing extra
    assert await status_of(sc, fresh_issuer.mint(key=attacker, now=sc.clock.now())) == (401, "unknown_kid")
    assert fresh_issuer.jwks_fetches == 3


async def test_the_background_refresh_runs_when_due_and_not_before(
    fresh_issuer: DevIssuer, make_sidecar: MakeSidecar
) -> None:
    sc = await make_sidecar(fresh_issuer)
    pk = fetcher(sc)
    assert REFRESH * 0.9 <= pk.next_refresh_in() <= REFRESH  # jittered, never later than the refresh interval
    sc.clock.advance(REFRESH * 0.5)
    await pk.tick()
    assert fresh_issuer.jwks_fetches == 1
    sc.clock.advance(REFRESH * 0.5)
    await pk.tick()
    assert fresh_issuer.jwks_fetches == 2


async def test_after_a_failed_refresh_the_next_try_comes_sooner(
    fresh_issuer: DevIssuer, make_sidecar: MakeSidecar
) -> None:
    sc = await make_sidecar(fresh_issuer)
    pk = fetcher(sc)
    fresh_issuer.outage = "500"
    sc.clock.advance(REFRESH)
    await pk.tick()
    assert pk.next_refresh_in() <= COOLDOWN  # retry after max(5 s, refetch_cooldown), not a whole interval
    fresh_issuer.outage = "off"
    sc.clock.advance(COOLDOWN)
    await pk.tick()
    assert pk.last_error is None and fresh_issuer.jwks_fetches == 3


async def test_cached_tokens_of_a_key_are_forgotten_when_its_retention_ends(
    fresh_issuer: DevIssuer, make_sidecar: MakeSidecar
) -> None:
    sc = await make_sidecar(fresh_issuer, expired_grace="3d", providers=[long_lived(fresh_issuer)])
    old = fresh_issuer.signing
    for i in range(5):
        assert await status_of(sc, fresh_issuer.mint(key=old, sub=f"u{i}", now=sc.clock.now(), ttl=2 * 86400)) == (
            200,
            None,
        )
    assert len(sc.state.verifier.cache) == 5
    fresh_issuer.rotate(keep_old=False)
    await fetcher(sc).refresh()
    assert len(sc.state.verifier.cache) == 5  # retained: still trusted, still cached
    sc.clock.advance(RETENTION + 1)
    sc.state.keys[0].update_gauges()  # what the gauge loop does every second: expiry runs there
    assert len(sc.state.verifier.cache) == 0


def long_lived(issuer: DevIssuer) -> dict[str, object]:
    """The default provider, for tests whose tokens outlive the 24 h max_token_lifetime on purpose."""
    return {
        "issuer": issuer.issuer,
        "audiences": ["demo-api"],
        "jwks_url": f"{issuer.issuer}/jwks.json",
        "max_token_lifetime": "4d",
    }
