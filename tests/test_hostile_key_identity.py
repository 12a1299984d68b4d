"""Issue 9, class 3: a cached verdict must not outlive the key that earned it. A real `sidecar run` in front
of a real key-set server whose keys the test replaces and revokes; tokens with and without `kid`; and
`max_token_lifetime`, so a token that never expires is not a credential either.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml

from sidecar.devtools.issuer import SigningKey, new_key
from sidecar.jwks import thumbprint
from tests.conftest import Upstream
from tests.support import KeySetServer, SidecarProcess, request

ISS = "https://idp.example"
AUD = "demo-api"


@pytest.fixture
def keys() -> Iterator[KeySetServer]:
    server = KeySetServer()
    yield server
    server.stop()


def start(tmp_path: Path, upstream: Upstream, keys: KeySetServer, retention: str, **provider: Any) -> SidecarProcess:
    config = tmp_path / "sidecar.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "upstream": upstream.url,
                "providers": [{"issuer": ISS, "audiences": [AUD], "jwks_url": keys.url, **provider}],
                "jwks": {"key_retention": retention},
                "workers": 1,
            }
        )
    )
    return SidecarProcess(["--config", str(config)]).start()


def kidless(key: SigningKey) -> dict[str, Any]:
    return {k: v for k, v in key.public_jwk().items() if k not in ("kid", "alg")}


def mint(key: SigningKey, kid: str | None = None, **claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": ISS, "aud": AUD, "sub": "alice", "iat": now, "exp": now + 300, **claims}
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, key.private, algorithm=key.alg, headers={"kid": kid} if kid else None)


def verdict(sc: SidecarProcess, token: str) -> tuple[int, str | None]:
    reply = request(sc.url, path="/api/x", headers={"Authorization": f"Bearer {token}"})
    return reply.status, None if reply.status == 200 else reply.json()["reason"]


def admin(sc: SidecarProcess, path: str) -> Any:
    reply = request(sc.admin, "POST", path, headers={"X-Sidecar-Admin": "1"}, body=b"")
    assert reply.status == 200, reply.body
    return reply.json()


def test_a_cached_kidless_token_is_refused_once_its_only_key_is_replaced(
    tmp_path: Path, upstream: Upstream, keys: KeySetServer
) -> None:
    old, new = new_key("RS256"), new_key("RS256")
    keys.doc = {"keys": [kidless(old)]}
    sc = start(tmp_path, upstream, keys, retention="0s")
    try:
        token = mint(old)
        assert verdict(sc, token) == (200, None)
        assert verdict(sc, token) == (200, None)
        assert sc.metric("sidecar_token_cache_lookups_total", result="hit") == 1
        keys.doc = {"keys": [kidless(new)]}  # still one key without kid, as when the token was cached
        assert admin(sc, "/admin/keys/default/refresh")["refreshed"]
        assert verdict(sc, token) == (401, "unknown_kid")
        assert verdict(sc, mint(new)) == (200, None)
    finally:
        sc.stop()


def test_revocation_by_thumbprint_reaches_kidless_tokens_in_the_cache_and_holds(
    tmp_path: Path, upstream: Upstream, keys: KeySetServer
) -> None:
    old, new = new_key("ES256"), new_key("ES256")
    keys.doc = {"keys": [kidless(old)]}
    sc = start(tmp_path, upstream, keys, retention="24h")
    try:
        token = mint(old)
        assert verdict(sc, token) == (200, None)
        keys.doc = {"keys": [kidless(new)]}
        assert admin(sc, "/admin/keys/default/refresh")["refreshed"]
        assert verdict(sc, token) == (200, None)  # retained for 24 h: still trusted, by design
        tp = thumbprint(old.private.public_key())
        result = admin(sc, f"/admin/keys/default/{tp}/revoke")
        assert result["was_trusted"] and result["cached_tokens_dropped"] == 1
        assert verdict(sc, token) == (401, "unknown_kid")
        keys.doc = {"keys": [kidless(old), kidless(new)]}  # the IdP publishes it again: still refused
        assert admin(sc, "/admin/keys/default/refresh")["refreshed"]
        assert verdict(sc, mint(old)) == (401, "unknown_kid")
        assert verdict(sc, mint(new)) == (200, None)
    finally:
        sc.stop()


def test_revoking_a_kid_also_ends_tokens_cached_without_kid_for_that_key(
    tmp_path: Path, upstream: Upstream, keys: KeySetServer
) -> None:
    key = new_key("RS256", kid="k1")
    keys.doc = {"keys": [key.public_jwk(), new_key("RS256", kid="k2").public_jwk()]}
    sc = start(tmp_path, upstream, keys, retention="24h")
    try:
        with_kid, without = mint(key, kid="k1"), mint(key)
        assert verdict(sc, with_kid) == (200, None) and verdict(sc, without) == (200, None)
        assert admin(sc, "/admin/keys/default/k1/revoke")["cached_tokens_dropped"] == 2
        assert verdict(sc, with_kid) == (401, "unknown_kid")
        assert verdict(sc, without) == (401, "unknown_kid")
    finally:
        sc.stop()


def test_every_kidless_key_of_a_set_verifies_its_own_tokens_within_the_bound(
    tmp_path: Path, upstream: Upstream, keys: KeySetServer
) -> None:
    ring = [new_key("RS256") for _ in range(3)] + [new_key("ES256")]
    keys.doc = {"keys": [kidless(k) for k in ring]}
    sc = start(tmp_path, upstream, keys, retention="0s", max_kidless_candidates=2)
    try:
        assert [verdict(sc, mint(k)) for k in ring] == [(200, None), (200, None), (401, "unknown_kid"), (200, None)]
        reply = request(sc.url, path="/api/x", headers={"Authorization": f"Bearer {mint(ring[2])}"})
        assert "tried 2 candidate keys; none verified (1 more not tried" in reply.json()["description"]
        assert sc.metric("sidecar_auth_kidless_attempts_total", provider="default", result="verified") == 3
    finally:
        sc.stop()


def test_a_token_that_never_expires_is_not_a_credential(tmp_path: Path, upstream: Upstream, keys: KeySetServer) -> None:
    key = new_key("ES256", kid="k")
    keys.doc = {"keys": [key.public_jwk()]}
    sc = start(tmp_path, upstream, keys, retention="0s")
    try:
        now = int(time.time())
        assert verdict(sc, mint(key, kid="k", exp=1e300)) == (401, "lifetime_too_long")
        assert verdict(sc, mint(key, kid="k", exp=2**63)) == (401, "lifetime_too_long")
        assert verdict(sc, mint(key, kid="k", exp=now + 25 * 3600)) == (401, "lifetime_too_long")
        assert verdict(sc, mint(key, kid="k", iat=None, exp=now + 25 * 3600)) == (401, "lifetime_too_long")
        assert verdict(sc, mint(key, kid="k", exp=now + 23 * 3600)) == (200, None)
        assert sc.metric("sidecar_auth_failures_total", reason="lifetime_too_long") == 4
    finally:
        sc.stop()
