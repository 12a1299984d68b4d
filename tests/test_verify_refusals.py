"""Refusals remembered: a bad token repeated costs a lookup, not a signature check, until a key set changes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from jwt.algorithms import Algorithm, get_default_algorithms

from sidecar.devtools.issuer import DevIssuer, new_key
from tests.conftest import InProc, MakeSidecar


async def reason(sc: InProc, token: str) -> str | None:
    r = await sc.get(token=token)
    return None if r.status == 200 else str((await r.json())["reason"])


@pytest.fixture
def signature_checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many signature checks the verifier ran (the real ones, counted in PyJWT's algorithms: the
    compiled build calls its own methods directly, so a patch on them would not count there)."""
    calls: list[int] = []
    for kind in {type(a) for a in get_default_algorithms().values() if "verify" in type(a).__dict__}:
        real = kind.verify

        def counted(self: Algorithm, *args: Any, real: Callable[..., bool] = real) -> bool:
            calls.append(1)
            return real(self, *args)

        monkeypatch.setattr(kind, "verify", counted)
    return calls


async def test_a_flood_of_one_bad_token_costs_one_signature_check(
    fresh_issuer: DevIssuer, make_sidecar: MakeSidecar, signature_checks: list[int]
) -> None:
    sc = await make_sidecar(fresh_issuer)
    forged = fresh_issuer.mint(now=sc.clock.now(), key=new_key("RS256"), headers={"kid": fresh_issuer.signing.kid})
    answers = [await sc.get(token=forged) for _ in range(50)]
    assert {a.status for a in answers} == {401}
    assert {(await a.json())["reason"] for a in answers} == {"bad_signature"}
    assert all("invalid_token" in a.headers["WWW-Authenticate"] for a in answers)
    assert len(signature_checks) == 1
    assert sc.metric("sidecar_token_cache_lookups_total", result="refused") == 49
    assert sc.metric("sidecar_auth_failures_total", reason="bad_signature") == 50
    # valid traffic beside it is unaffected
    assert await reason(sc, fresh_issuer.mint(now=sc.clock.now())) is None


async def test_claims_refusals_are_remembered_too(fresh_issuer: DevIssuer, make_sidecar: MakeSidecar) -> None:
    sc = await make_sidecar(fresh_issuer)
    wrong_aud = fresh_issuer.mint(now=sc.clock.now(), aud="someone-else")
    assert [await reason(sc, wrong_aud) for _ in range(3)] == ["audience_mismatch"] * 3
    assert sc.metric("sidecar_token_cache_lookups_total", result="refused") == 2


async def test_an_unknown_kid_is_not_remembered_so_a_rotation_is_seen(
    fresh_issuer: DevIssuer, make_sidecar: MakeSidecar
) -> None:
    sc = await make_sidecar(fresh_issuer)
    future = new_key("RS256")
    token = fresh_issuer.mint(now=sc.clock.now(), key=future)
    assert await reason(sc, token) == "unknown_kid"
    fresh_issuer.keys = [*fresh_issuer.keys, future]  # the IdP publishes it; the refetch on a miss finds it
    sc.clock.advance(120)  # past the refetch cooldown
    assert await reason(sc, fresh_issuer.mint(now=sc.clock.now(), key=future)) is None
    assert await reason(sc, token) is None


async def test_a_remembered_bad_signature_is_forgotten_when_the_key_set_changes(
    fresh_issuer: DevIssuer, make_sidecar: MakeSidecar
) -> None:
    sc = await make_sidecar(fresh_issuer)
    old = fresh_issuer.signing
    replacement = new_key("RS256", kid=old.kid)
    token = fresh_issuer.mint(now=sc.clock.now(), key=replacement)
    assert [await reason(sc, token) for _ in range(2)] == ["bad_signature"] * 2
    fresh_issuer.keys = [replacement]  # the IdP now publishes another key under the same kid
    assert await sc.state.keys[0].refresh()
    assert await reason(sc, token) is None


async def test_an_expired_token_is_not_remembered_as_refused(
    fresh_issuer: DevIssuer, make_sidecar: MakeSidecar
) -> None:
    sc = await make_sidecar(fresh_issuer, leeway=0, expired_grace=0)
    token = fresh_issuer.mint(now=sc.clock.now() - 3600, ttl=60)
    assert await reason(sc, token) == "expired"
    assert len(sc.state.verifier.refused) == 0
