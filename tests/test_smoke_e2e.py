"""End to end through a real `sidecar run` process: the behaviours a user checks first."""

from __future__ import annotations

from sidecar.devtools.issuer import DevIssuer
from tests.conftest import Upstream
from tests.support import SidecarProcess, request


def test_valid_token_reaches_the_app_with_authorization_intact(
    issuer: DevIssuer, upstream: Upstream, sidecar: SidecarProcess
) -> None:
    token = issuer.mint(sub="alice")
    upstream.clear()
    before = sidecar.metric("sidecar_auth_success_total")
    r = request(sidecar.url, path="/api/x?q=1", headers={"Authorization": f"Bearer {token}"})
    assert r.status == 200
    seen = dict(upstream.record[-1]["headers"])
    assert seen["Authorization"] == f"Bearer {token}"
    assert seen["X-Auth-Subject"] == "alice"
    assert upstream.record[-1]["path"] == "/api/x?q=1"
    assert sidecar.metric("sidecar_auth_success_total") == before + 1


def test_each_rejection_logs_one_json_line_with_reason_kid_iss_and_fingerprint_never_the_token(
    issuer: DevIssuer, sidecar: SidecarProcess
) -> None:
    from sidecar.devtools.issuer import new_key

    stranger = new_key("RS256", kid="stranger")
    tokens = {
        "expired": issuer.mint(ttl=-3600),
        "unknown_kid": issuer.mint(key=stranger),
        "bad_signature": issuer.mint()[:-6] + "AAAAAA",
        "audience_mismatch": issuer.mint(aud="other"),
    }
    for reason, token in tokens.items():
        r = request(sidecar.url, path="/api/log?q=secret", headers={"Authorization": f"Bearer {token}"})
        assert r.json()["reason"] == reason
    import time

    deadline = time.monotonic() + 5  # the lines are written by another process: wait until all four are there
    while True:
        lines = [x for x in sidecar.log_lines() if x.get("event") == "rejected" and x.get("path") == "/api/log"]
        if len(lines) >= len(tokens) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    logs = sidecar.logs()
    by_reason = {x["reason"]: x for x in lines}
    for reason in tokens:
        line = by_reason[reason]
        assert line["iss"] == issuer.issuer and line["status"] == 401 and len(line["fp"]) == 12
        assert line["kid"] == ("stranger" if reason == "unknown_kid" else issuer.signing.kid)
        assert "q=secret" not in str(line)  # the path is logged without its query string
    for token in tokens.values():
        _header, payload, signature = token.split(".")
        assert payload not in logs and signature not in logs and token not in logs
