"""`sidecar explain`: the real decision on one token, narrated check by check.

Offline explanations run against a real dev issuer (real keys, real JWKS server) with a FakeClock; the
command line and the `--admin` mode run real processes with tokens minted relative to now.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sidecar.clock import FakeClock
from sidecar.config import load
from sidecar.devtools.issuer import DevIssuer, new_key
from sidecar.explain import _offline
from tests.conftest import AUDIENCE, Upstream, sidecar_args
from tests.support import ROOT, SidecarProcess, request, sign_raw

RULES = [
    {"name": "admin", "prefix": "/admin", "scopes": ["admin"]},
    {"name": "closed", "prefix": "/closed", "deny": True},
]


def config(issuer: DevIssuer, **over: Any) -> Any:
    raw: dict[str, Any] = {
        "providers": [{"issuer": issuer.issuer, "audiences": [AUDIENCE], "jwks_url": f"{issuer.issuer}/jwks.json"}],
        "leeway": 60,
        "expired_grace": 300,
        "rules": RULES,
        **over,
    }
    return load(raw)


async def explain(issuer: DevIssuer, token: str, clock: FakeClock, path: str = "/api", **over: Any) -> dict[str, Any]:
    return await _offline(config(issuer, **over), token, "GET", path, clock)


def texts(e: dict[str, Any], check: str) -> list[str]:
    return [c["text"] for c in e["checks"] if c["check"] == check]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(float(int(time.time())))  # whole seconds, as minted claims are


async def test_a_good_token_is_allowed_with_every_check_shown(issuer: DevIssuer, clock: FakeClock) -> None:
    token = issuer.mint(now=clock.now())
    e = await explain(issuer, token, clock)
    assert (e["verdict"], e["reason"], e["status"]) == ("allowed", None, 200)
    assert e["header"]["kid"] == issuer.signing.kid and e["claims"]["sub"] == "demo-user"
    assert e["signature"] == "verified"
    assert e["key"]["kid"] == issuer.signing.kid and e["key"]["state"] == "current" and e["key"]["thumbprint"]
    assert e["provider"]["key_source"] == f"{issuer.issuer}/jwks.json" and e["provider"]["keys_usable"]
    assert e["issuer"]["match"] and e["audience"]["match"]
    assert e["route"]["name"] == "(unmatched)"
    assert token.rsplit(".", 1)[1] not in json.dumps(e)  # never the signature


async def test_expired_inside_grace_says_accepted_in_grace(issuer: DevIssuer, clock: FakeClock) -> None:
    token = issuer.mint(now=clock.now(), ttl=300)
    clock.advance(300 + 312)
    e = await explain(issuer, token, clock)
    assert e["verdict"] == "allowed" and e["grace_seconds"] == pytest.approx(312, abs=1)
    (line,) = texts(e, "time")[:1]
    assert "expired 312 s ago; leeway 60 s; grace 300 s → accepted in grace" in line
    assert e["identity_headers"]


async def test_expired_beyond_grace_is_refused_as_expired(issuer: DevIssuer, clock: FakeClock) -> None:
    token = issuer.mint(now=clock.now(), ttl=300)
    clock.advance(300 + 361)
    e = await explain(issuer, token, clock)
    assert (e["verdict"], e["reason"], e["status"]) == ("refused", "expired", 401)
    assert "→ refused (expired)" in texts(e, "time")[0]
    assert e["signature"] == "verified"


async def test_not_yet_valid(issuer: DevIssuer, clock: FakeClock) -> None:
    token = issuer.mint(now=clock.now(), nbf=int(clock.now()) + 600)
    e = await explain(issuer, token, clock)
    assert e["reason"] == "not_yet_valid"
    assert any("refused (not_yet_valid)" in t for t in texts(e, "time"))
    clock.advance(560)  # inside leeway now
    assert (await explain(issuer, token, clock))["verdict"] == "allowed"


async def test_unknown_kid(issuer: DevIssuer, clock: FakeClock) -> None:
    stranger = new_key("RS256")
    token = issuer.mint(now=clock.now(), key=stranger)
    e = await explain(issuer, token, clock)
    assert e["reason"] == "unknown_kid" and e["key"]["state"] == "unknown"
    assert e["signature"] == "not checked"


async def test_revoked_kid_is_named_as_revoked(fresh_issuer: DevIssuer, clock: FakeClock) -> None:
    issuer = fresh_issuer
    old = issuer.signing
    issuer.rotate(keep_old=True)
    token = issuer.mint(now=clock.now(), key=old)
    prov = {"issuer": issuer.issuer, "audiences": [AUDIENCE], "jwks_url": f"{issuer.issuer}/jwks.json"}
    e = await explain(issuer, token, clock, providers=[{**prov, "revoked_kids": [old.kid]}])
    assert e["reason"] == "unknown_kid" and e["key"]["state"] == "revoked"


async def test_bad_signature(issuer: DevIssuer, clock: FakeClock) -> None:
    impostor = new_key("RS256", kid=issuer.signing.kid)
    token = issuer.mint(now=clock.now(), key=impostor)
    e = await explain(issuer, token, clock)
    assert (e["reason"], e["signature"]) == ("bad_signature", "does not verify")


async def test_wrong_audience(issuer: DevIssuer, clock: FakeClock) -> None:
    e = await explain(issuer, issuer.mint(now=clock.now(), aud="other-api"), clock)
    assert e["reason"] == "audience_mismatch" and not e["audience"]["match"]
    assert e["audience"]["accepted"] == [AUDIENCE]


async def test_wrong_issuer(issuer: DevIssuer, clock: FakeClock) -> None:
    e = await explain(issuer, issuer.mint(now=clock.now(), iss="https://evil.example"), clock)
    assert e["reason"] == "issuer_mismatch" and e["issuer"] == {
        "token": "https://evil.example",
        "expected": issuer.issuer,
        "match": False,
    }


async def test_with_several_providers_iss_chooses_one(issuer: DevIssuer, clock: FakeClock) -> None:
    jwks = f"{issuer.issuer}/jwks.json"
    providers = [
        {"name": "other", "issuer": "https://other.example", "audiences": [AUDIENCE], "jwks_url": jwks},
        {"name": "main", "issuer": issuer.issuer, "audiences": [AUDIENCE], "jwks_url": jwks},
    ]
    e = await explain(issuer, issuer.mint(now=clock.now()), clock, providers=providers)
    assert e["verdict"] == "allowed" and (e["provider"]["name"], e["provider"]["chosen"]) == ("main", "by iss")
    stray = await explain(issuer, issuer.mint(now=clock.now(), iss="https://evil.example"), clock, providers=providers)
    assert stray["reason"] == "issuer_mismatch" and stray["provider"] is None
    assert any(c["check"] == "provider" and c["ok"] is False for c in stray["checks"])


async def test_insufficient_scope_names_the_rule_and_its_scopes(issuer: DevIssuer, clock: FakeClock) -> None:
    token = issuer.mint(now=clock.now(), scope="read")
    e = await explain(issuer, token, clock, path="/admin/users")
    assert (e["reason"], e["status"]) == ("insufficient_scope", 403)
    (rule,) = e["route"]["rules"]
    assert rule["name"] == "admin" and rule["scopes"] == ["admin"] and rule["satisfied"] is False
    assert (await explain(issuer, issuer.mint(now=clock.now(), scope="admin"), clock, path="/admin/x"))[
        "verdict"
    ] == "allowed"


async def test_a_denied_route_still_shows_the_token_checks(issuer: DevIssuer, clock: FakeClock) -> None:
    e = await explain(issuer, issuer.mint(now=clock.now()), clock, path="/closed")
    assert e["reason"] == "route_denied" and e["route"]["deny"] and e["signature"] == "verified"


async def test_kidless_token(issuer: DevIssuer, clock: FakeClock) -> None:
    now = int(clock.now())
    claims = {"iss": issuer.issuer, "aud": AUDIENCE, "sub": "x", "iat": now, "exp": now + 60}
    token = sign_raw(b'{"alg":"RS256","typ":"JWT"}', json.dumps(claims).encode(), issuer.signing.private, "RS256")
    e = await explain(issuer, token, clock)
    assert e["verdict"] == "allowed" and e["key"]["state"] == "kid-less" and e["key"]["candidates"] >= 1
    stranger = new_key("RS256")
    bad = sign_raw(b'{"alg":"RS256"}', json.dumps(claims).encode(), stranger.private, "RS256")
    assert (await explain(issuer, bad, clock))["reason"] == "unknown_kid"


@pytest.mark.parametrize(
    ("claims", "headers", "reason"),
    [
        ({"exp": 10**400}, None, "invalid_claim"),
        ({"nbf": "soon"}, None, "invalid_claim"),
        ({"aud": [1, {"x": 2}]}, None, "invalid_claim"),
        ({"iss": ["a", "b"]}, None, "invalid_claim"),
        ({}, {"kid": 5}, "malformed"),
        ({}, {"kid": None}, "malformed"),
        ({}, {"crit": ["exp"]}, "malformed"),
    ],
)
async def test_odd_claims_and_headers_are_explained_not_crashed_on(
    issuer: DevIssuer, clock: FakeClock, claims: dict[str, Any], headers: dict[str, Any] | None, reason: str
) -> None:
    now = int(clock.now())
    payload = {"iss": issuer.issuer, "aud": AUDIENCE, "sub": "x", "iat": now, "exp": now + 60, **claims}
    header = {"alg": "RS256", "kid": issuer.signing.kid, **(headers or {})}
    token = sign_raw(json.dumps(header).encode(), json.dumps(payload).encode(), issuer.signing.private, "RS256")
    e = await explain(issuer, token, clock)
    assert (e["verdict"], e["reason"]) == ("refused", reason)
    json.dumps(e)


async def test_a_cookie_only_provider_is_explained_as_a_cookie_request(issuer: DevIssuer, clock: FakeClock) -> None:
    prov = {"issuer": issuer.issuer, "audiences": [AUDIENCE], "jwks_url": f"{issuer.issuer}/jwks.json"}
    e = await explain(issuer, issuer.mint(now=clock.now()), clock, providers=[{**prov, "token_sources": ["cookie:at"]}])
    assert e["verdict"] == "allowed" and e["request"]["token_source"] == "cookie:at"


async def test_garbage_is_malformed(issuer: DevIssuer, clock: FakeClock) -> None:
    e = await explain(issuer, "not-a-token", clock)
    assert (e["verdict"], e["reason"], e["header"]) == ("refused", "malformed", None)


# --- the command line -------------------------------------------------------------------------------------


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "explain", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def offline_flags(issuer: DevIssuer) -> list[str]:
    return ["--jwks-url", f"{issuer.issuer}/jwks.json", "--issuer", issuer.issuer, "--audience", AUDIENCE]


def test_cli_exit_codes_text_and_stdin(issuer: DevIssuer) -> None:
    good = cli(*offline_flags(issuer), issuer.mint())
    assert good.returncode == 0, good.stderr
    assert "verdict: ALLOWED" in good.stdout and "signature" in good.stdout
    expired = cli(*offline_flags(issuer), "--expired-grace", "0", "-", stdin=issuer.mint(ttl=-400) + "\n")
    assert expired.returncode == 1 and "reason expired" in expired.stdout
    assert cli(*offline_flags(issuer), "--leeway", "lots", issuer.mint()).returncode == 2  # config error
    assert cli(*offline_flags(issuer), "-", stdin="").returncode == 2  # no token


def test_cli_json_shape(issuer: DevIssuer) -> None:
    out = cli(*offline_flags(issuer), "--json", "--method", "post", "--path", "/x/../y", issuer.mint(aud="nope"))
    assert out.returncode == 1, out.stderr
    e = json.loads(out.stdout)
    assert {
        "version",
        "answered_by",
        "now",
        "now_epoch",
        "leeway",
        "grace",
        "request",
        "header",
        "claims",
        "provider",
        "key",
        "signature",
        "times",
        "issuer",
        "audience",
        "route",
        "checks",
        "verdict",
        "reason",
        "status",
        "description",
        "grace_seconds",
    } <= set(e)
    assert e["version"] == 1 and e["answered_by"] == "offline"
    assert e["request"] == {"method": "POST", "path": "/x/../y", "canonical_path": "/y", "token_source": "header"}
    assert (e["verdict"], e["reason"]) == ("refused", "audience_mismatch")
    assert all(set(c) == {"check", "ok", "text"} for c in e["checks"])


# --- asking the running sidecar ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def running(issuer: DevIssuer, upstream: Upstream) -> Iterator[SidecarProcess]:
    proc = SidecarProcess(sidecar_args(issuer, upstream, "--log-level", "debug")).start()
    yield proc
    proc.stop()


def test_admin_mode_uses_the_live_sidecar_and_never_logs_the_token(issuer: DevIssuer, running: SidecarProcess) -> None:
    good, bad = issuer.mint(), issuer.mint(ttl=-1000)
    ok = cli("--admin", running.admin, "--json", good)
    assert ok.returncode == 0, ok.stderr + ok.stdout
    e = json.loads(ok.stdout)
    assert e["answered_by"] == "admin" and e["provider"]["keys_age_seconds"] is not None
    assert "idp_clock_skew_seconds" in e["provider"]
    refused = cli("--admin", running.admin, bad)
    assert refused.returncode == 1 and "reason expired" in refused.stdout
    # the same token, sent as a request, gets the same answer
    reply = request(running.url, path="/api", headers={"Authorization": f"Bearer {bad}"})
    assert reply.status == 401 and reply.json()["reason"] == "expired"
    logs = running.logs()
    for token in (good, bad):
        assert token not in logs and token.split(".")[1] not in logs
    assert running.metric("sidecar_auth_success_total") == 0  # an explanation is not a request


def test_admin_explain_is_guarded_like_every_admin_action(issuer: DevIssuer, running: SidecarProcess) -> None:
    body = json.dumps({"token": issuer.mint()})
    url = running.admin
    simple = request(url, "POST", "/admin/explain", body=body.encode(), headers={"Content-Type": "text/plain"})
    assert simple.status == 403 and simple.json()["reason"] == "simple_request"
    json_ct = {"Content-Type": "application/json"}
    cross = request(
        url, "POST", "/admin/explain", body=body.encode(), headers={**json_ct, "Sec-Fetch-Site": "cross-site"}
    )
    assert cross.status == 403 and cross.json()["reason"] == "cross_site"
    origin = request(
        url, "POST", "/admin/explain", body=body.encode(), headers={**json_ct, "Origin": "https://evil.example"}
    )
    assert origin.status == 403 and origin.json()["reason"] == "cross_origin"
    ok = request(url, "POST", "/admin/explain", body=body.encode(), headers=json_ct)
    assert ok.status == 200 and ok.json()["verdict"] == "allowed"
    bad = request(url, "POST", "/admin/explain", body=b"[1]", headers=json_ct)
    assert bad.status == 400 and bad.json()["reason"] == "bad_request"
    huge = request(url, "POST", "/admin/explain", body=json.dumps({"token": "a" * 200_000}).encode(), headers=json_ct)
    assert huge.status == 400 and "larger than" in huge.json()["description"]


def test_with_several_workers_any_worker_answers_from_the_pods_keys(issuer: DevIssuer, upstream: Upstream) -> None:
    proc = SidecarProcess(sidecar_args(issuer, upstream, "--workers", "2")).start()
    try:
        answers = [cli("--admin", proc.admin, "--json", issuer.mint()) for _ in range(4)]
        assert [a.returncode for a in answers] == [0] * 4, [a.stderr for a in answers]
        keys = {json.loads(a.stdout)["key"]["thumbprint"] for a in answers}
        assert len(keys) == 1
    finally:
        proc.stop()


def test_admin_mode_against_nothing_is_a_usage_error(issuer: DevIssuer) -> None:
    out = cli("--admin", "http://127.0.0.1:9", issuer.mint())
    assert out.returncode == 2 and "explain:" in out.stderr


# --- the admin route in process: the sidecar's own clock and key state ------------------------------------


async def test_admin_explain_answers_with_the_live_clock_and_retained_keys(
    make_sidecar: Any, fresh_issuer: DevIssuer
) -> None:
    from tests.conftest import InProc

    sc: InProc = await make_sidecar(fresh_issuer, leeway=60, expired_grace=300)
    old = fresh_issuer.signing
    token = fresh_issuer.mint(now=sc.clock.now(), ttl=300, key=old)
    fresh_issuer.rotate(keep_old=False)
    await sc.state.keys[0].refresh()  # the pod's fetcher learns the new set; the old key is retained
    sc.clock.advance(300 + 200)
    reply = await sc.admin.post("/admin/explain", json={"token": token, "path": "/api"})
    assert reply.status == 200
    e = await reply.json()
    assert e["answered_by"] == "admin" and e["verdict"] == "allowed" and e["grace_seconds"] == pytest.approx(200, abs=1)
    assert e["key"]["state"] == "retired" and e["key"]["retained_for"] > 0
    assert e["now_epoch"] == pytest.approx(sc.clock.now())
    assert sc.metric("sidecar_auth_success_total") == 0 and sc.metric("sidecar_auth_grace_accepted_total") == 0
    assert (await sc.get("/api", token=fresh_issuer.mint(now=sc.clock.now()))).status == 200
    assert sc.metric("sidecar_auth_success_total") == 1  # the series above was the real one


async def test_a_report_mode_route_is_explained_as_reported_with_what_enforcing_would_do(
    issuer: DevIssuer, clock: FakeClock
) -> None:
    token = issuer.mint(now=clock.now() - 3600, ttl=60)  # expired an hour ago
    e = await explain(issuer, token, clock, mode="report")
    assert (e["verdict"], e["reason"], e["status"]) == ("reported", "expired", 401)
    assert e["identity_headers"] == {}
    (line,) = texts(e, "verdict")
    assert "report mode" in line and "X-Auth-Report: expired" in line
    assert (await explain(issuer, token, clock))["verdict"] == "refused"
