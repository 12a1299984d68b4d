"""Report-only mode: what enforce mode would refuse for its token is forwarded, with the reason beside it.

Real `sidecar run` processes in front of the recording echo app: one reports globally (with one rule that
still enforces), one enforces globally (with one rule that reports). The app's view is read from the echo
app's record; counts from /metrics; the log line from the process's stderr.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sidecar.config import ConfigError, load
from sidecar.config.sources import env_layer
from sidecar.devtools.issuer import DevIssuer
from tests.conftest import AUDIENCE, MakeSidecar, Upstream, config_process
from tests.support import SidecarProcess, free_port, request
from tests.support import nginx as nginx_running

REPORTED = "sidecar_auth_reported_total"
FAILED = "sidecar_auth_failures_total"

REPORT_RULES = [
    {"name": "admin", "prefix": "/admin", "scopes": ["admin"]},
    {"name": "tenant", "prefix": "/tenant", "claims": {"tenant": "acme"}},
    {"name": "payments", "prefix": "/payments", "mode": "enforce"},
    {"name": "closed", "prefix": "/closed", "deny": True},
]


@pytest.fixture(scope="module")
def reporting(
    issuer: DevIssuer, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SidecarProcess]:
    """Global `mode: report`, one rule (`payments`) enforcing, a decision listener, route metrics on."""
    port = free_port()
    proc = config_process(
        issuer,
        upstream,
        tmp_path_factory.mktemp("report"),
        mode="report",
        rules=REPORT_RULES,
        route_metrics=True,
        decision={"listen": f"127.0.0.1:{port}", "trusted_sources": ["127.0.0.2/32"]},
    )
    proc.decision_port = port  # type: ignore[attr-defined]
    # /readyz does not wait for keys while nothing enforces... but `payments` enforces; wait anyway, so no
    # test sees keys_unavailable where it expects its own reason
    deadline = time.monotonic() + 10
    while proc.metric("sidecar_jwks_keys_loaded", provider="default") < 1:
        assert time.monotonic() < deadline, proc.logs()[-2000:]
        time.sleep(0.05)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def enforcing(
    issuer: DevIssuer, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SidecarProcess]:
    """Global `mode: enforce` (the default), one rule (`beta`) reporting."""
    proc = config_process(
        issuer,
        upstream,
        tmp_path_factory.mktemp("enforce"),
        rules=[
            {"name": "beta", "prefix": "/beta", "scopes": ["beta"], "mode": "report"},
            {"name": "stable", "prefix": "/stable", "scopes": ["stable"]},
        ],
    )
    yield proc
    proc.stop()


def at_app(upstream: Upstream, path: str) -> dict[str, list[str]]:
    """The headers the app received on the last request to `path` (names lowercased, values in order)."""
    seen = [r for r in upstream.record if r["path"] == path]
    assert seen, f"{path} never reached the app"
    out: dict[str, list[str]] = {}
    for k, v in seen[-1]["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


def log_line(proc: SidecarProcess, path: str) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [x for x in proc.log_lines() if x.get("event") == "rejected" and x.get("path") == path]
        if lines:
            return lines[-1]
        time.sleep(0.05)
    raise AssertionError(f"no rejection line for {path}:\n{proc.logs()[-2000:]}")


def reported_request(
    proc: SidecarProcess, upstream: Upstream, path: str, reason: str, headers: dict[str, str]
) -> dict[str, list[str]]:
    """Send one request that enforce mode would refuse with `reason`; check what report mode did instead."""
    before_reported, before_failed = proc.metric(REPORTED, reason=reason), proc.metric(FAILED, reason=reason)
    spoofed = {"X-Auth-Subject": "spoofed-admin", "X-Auth-Report": "none", **headers}
    r = request(proc.url, path=path, headers=spoofed)
    assert r.status == 200, r.body
    assert r.json()["path"] == path  # the echo app answered: forwarded
    seen = at_app(upstream, path)
    assert seen["x-auth-report"] == [reason]  # the sidecar's verdict, never the client's copy
    assert "x-auth-subject" not in seen  # no identity from a token that failed (and the client's copy dropped)
    assert proc.metric(REPORTED, reason=reason) == before_reported + 1
    assert proc.metric(FAILED, reason=reason) == before_failed  # enforced failures keep meaning "refused"
    line = log_line(proc, path)
    assert line["reason"] == reason and line["reported"] is True
    token = headers.get("Authorization", "").removeprefix("Bearer ")
    assert not token or token not in json.dumps(line)
    return seen


# --- global report mode, per reason family -------------------------------------------------------------


def test_a_request_without_a_token_is_forwarded_with_the_reason(reporting: SidecarProcess, upstream: Upstream) -> None:
    reported_request(reporting, upstream, "/api/none", "missing_token", {})
    assert log_line(reporting, "/api/none")["status"] == 401  # what enforce mode would have answered


def tampered(token: str) -> str:
    head, payload, sig = token.split(".")
    return ".".join((head, payload, ("B" if sig[0] == "A" else "A") + sig[1:]))


@pytest.mark.parametrize(
    ("reason", "make"),
    [
        ("expired", lambda i: i.mint(ttl=-3600)),
        ("bad_signature", lambda i: tampered(i.mint())),
        ("audience_mismatch", lambda i: i.mint(aud="someone-else")),
        ("malformed", lambda i: "not-a-jwt"),
    ],
)
def test_a_failing_token_is_forwarded_as_sent_with_the_reason_and_no_identity(
    reporting: SidecarProcess, upstream: Upstream, issuer: DevIssuer, reason: str, make: Any
) -> None:
    token = make(issuer)
    path = f"/api/{reason}"
    seen = reported_request(reporting, upstream, path, reason, {"Authorization": f"Bearer {token}"})
    # report mode changes nothing the app relied on before the sidecar: it still gets the token as sent
    assert seen["authorization"] == [f"Bearer {token}"]


def test_a_valid_token_without_the_scope_is_reported_and_gets_no_identity(
    reporting: SidecarProcess, upstream: Upstream, issuer: DevIssuer
) -> None:
    seen = reported_request(
        reporting,
        upstream,
        "/admin/users",
        "insufficient_scope",
        {"Authorization": f"Bearer {issuer.mint(sub='nina')}"},
    )
    assert "x-auth-subject" not in seen
    assert log_line(reporting, "/admin/users")["status"] == 403
    outcome = {"route": "admin", "outcome": "reported:insufficient_scope"}
    assert reporting.metric("sidecar_route_requests_total", **outcome) >= 1


def test_a_claim_mismatch_and_a_deny_rule_are_reported(
    reporting: SidecarProcess, upstream: Upstream, issuer: DevIssuer
) -> None:
    auth = {"Authorization": f"Bearer {issuer.mint(tenant='other')}"}
    reported_request(reporting, upstream, "/tenant/x", "claim_mismatch", auth)
    reported_request(reporting, upstream, "/closed/x", "route_denied", auth)


def test_an_allowed_request_is_untouched_by_report_mode(
    reporting: SidecarProcess, upstream: Upstream, issuer: DevIssuer
) -> None:
    before = reporting.metric("sidecar_auth_success_total")
    r = request(
        reporting.url, path="/admin/ok", headers={"Authorization": f"Bearer {issuer.mint(sub='ann', scope='admin')}"}
    )
    assert r.status == 200
    seen = at_app(upstream, "/admin/ok")
    assert seen["x-auth-subject"] == ["ann"] and "x-auth-report" not in seen
    assert reporting.metric("sidecar_auth_success_total") == before + 1


def test_a_rule_in_enforce_mode_still_refuses_next_to_reporting_ones(
    reporting: SidecarProcess, upstream: Upstream, issuer: DevIssuer
) -> None:
    before = reporting.metric(FAILED, reason="expired")
    reported_before = reporting.metric(REPORTED, reason="expired")
    r = request(reporting.url, path="/payments/1", headers={"Authorization": f"Bearer {issuer.mint(ttl=-3600)}"})
    assert r.status == 401 and r.json()["reason"] == "expired"
    assert 'error="invalid_token"' in (r.header("WWW-Authenticate") or "")
    assert not [x for x in upstream.record if x["path"] == "/payments/1"]
    assert reporting.metric(FAILED, reason="expired") == before + 1
    assert reporting.metric(REPORTED, reason="expired") == reported_before
    assert "reported" not in log_line(reporting, "/payments/1")


def test_an_ambiguous_path_is_enforced_when_an_enforcing_rule_may_apply(
    reporting: SidecarProcess, upstream: Upstream
) -> None:
    # no single reading: held to every rule, the deny rule included, and `payments` enforces
    r = request(reporting.url, path="/api/%2e%2e%2fpayments/1")
    assert r.status == 403 and r.json()["reason"] == "route_denied"
    assert not [x for x in upstream.record if x["path"].startswith("/api/%2e")]


def test_malformed_requests_are_refused_in_report_mode(reporting: SidecarProcess, upstream: Upstream) -> None:
    before = reporting.metric("sidecar_requests_rejected_total", reason="headers_too_large")
    r = request(reporting.url, path="/api/huge", headers={"X-Big": "x" * 20_000})
    assert r.status == 431
    assert not [x for x in upstream.record if x["path"] == "/api/huge"]
    assert reporting.metric("sidecar_requests_rejected_total", reason="headers_too_large") == before + 1


def test_a_disallowed_cors_preflight_is_refused_in_report_mode(reporting: SidecarProcess) -> None:
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    r = request(reporting.url, method="OPTIONS", path="/api/x", headers=preflight)
    assert r.status == 403 and r.json()["reason"] == "cors_rejected"


# --- global enforce mode, one rule reporting ------------------------------------------------------------


def test_a_rule_in_report_mode_forwards_while_the_rest_enforces(
    enforcing: SidecarProcess, upstream: Upstream, issuer: DevIssuer
) -> None:
    auth = {"Authorization": f"Bearer {issuer.mint(scope='other')}"}
    reported_request(enforcing, upstream, "/beta/x", "insufficient_scope", auth)
    before = enforcing.metric(FAILED, reason="insufficient_scope")
    r = request(enforcing.url, path="/stable/x", headers=auth)
    assert r.status == 403 and r.json()["reason"] == "insufficient_scope"
    assert enforcing.metric(FAILED, reason="insufficient_scope") == before + 1
    assert request(enforcing.url, path="/other").status == 401  # unmatched follows the global mode


def test_reported_series_exist_at_zero_for_every_reason(enforcing: SidecarProcess) -> None:
    from sidecar.errors import AUTH_REASONS
    from tests.support import scrape, series

    scraped = scrape(enforcing.admin)
    for reason in AUTH_REASONS:
        assert series(REPORTED, reason=reason) in scraped


# --- keys unavailable: reported, and no outage by readiness --------------------------------------------


async def test_no_usable_keys_is_reported_and_the_pod_stays_ready(
    make_sidecar: MakeSidecar, fresh_issuer: DevIssuer, upstream: Upstream
) -> None:
    fresh_issuer.outage = "500"
    sc = await make_sidecar(fresh_issuer, wait=False, mode="report")
    assert sc.state.ready()  # nothing is enforced, so keys are not needed to serve
    assert (await sc.admin.get("/readyz")).status == 200
    r = await sc.get("/api/keys", fresh_issuer.mint())
    assert r.status == 200
    assert at_app(upstream, "/api/keys")["x-auth-report"] == ["keys_unavailable"]
    assert sc.metric(REPORTED, reason="keys_unavailable") == 1
    assert sc.metric(FAILED, reason="keys_unavailable") == 0


async def test_one_enforcing_rule_makes_readiness_wait_for_keys(
    make_sidecar: MakeSidecar, fresh_issuer: DevIssuer
) -> None:
    fresh_issuer.outage = "500"
    sc = await make_sidecar(fresh_issuer, wait=False, mode="report", rules=[{"prefix": "/pay", "mode": "enforce"}])
    await asyncio.sleep(0.1)
    assert not sc.state.ready()
    r = await sc.get("/pay/x", fresh_issuer.mint())
    assert r.status == 503 and r.headers["Retry-After"]


async def keys_loaded(sc: Any) -> None:
    for _ in range(250):
        if all(pk.usable() for pk in sc.state.keys):
            return
        await asyncio.sleep(0.02)
    raise AssertionError([pk.last_error for pk in sc.state.keys])


async def test_a_form_body_override_to_a_reported_method_is_counted(
    make_sidecar: MakeSidecar, issuer: DevIssuer, upstream: Upstream
) -> None:
    # the head (POST, any valid token) passes; the body asks for DELETE, which needs a scope the token lacks.
    # Reported only because both routes report: an override never turns enforcement off (next test).
    sc = await make_sidecar(
        issuer, mode="report", rules=[{"prefix": "/doc", "methods": ["DELETE"], "scopes": ["delete"]}]
    )
    await keys_loaded(sc)  # ready() does not wait for keys when nothing enforces
    r = await sc.client.post(
        "/doc/1",
        data=b"_method=DELETE",
        headers={"Authorization": f"Bearer {issuer.mint()}", "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status == 200
    assert sc.metric(REPORTED, reason="insufficient_scope") == 1


# --- config --------------------------------------------------------------------------------------------


def _cfg(**over: Any) -> Any:
    raw = {
        "providers": [
            {"issuer": "https://idp.example", "audiences": [AUDIENCE], "jwks_url": "https://idp.example/jwks"}
        ],
        **over,
    }
    return load(raw)


def test_mode_comes_from_the_file_the_flag_and_the_environment() -> None:
    assert _cfg().mode == "enforce"
    assert _cfg(mode="REPORT").mode == "report"
    assert env_layer({"SIDECAR_MODE": "report"}).tree == {"mode": "report"}
    with pytest.raises(ConfigError, match="mode"):
        _cfg(mode="audit")


def test_a_rule_mode_must_be_enforce_or_report_and_never_on_a_public_rule() -> None:
    assert _cfg(rules=[{"prefix": "/a", "mode": "report"}]).rules[0].mode == "report"
    with pytest.raises(ConfigError, match=r"rules\[0\]\.mode"):
        _cfg(rules=[{"prefix": "/a", "mode": "dry-run"}])
    with pytest.raises(ConfigError, match=r"rules\[0\]\.mode"):
        _cfg(rules=[{"prefix": "/a", "public": True, "mode": "report"}])
    assert _cfg(rules=[{"name": "a", "prefix": "/a", "mode": "report"}]).effective()["rules"][0]["mode"] == "report"


# --- decision mode behind a real nginx ------------------------------------------------------------------

NGINX = """
  server {{
    listen 127.0.0.1:{port};
    location = /_auth {{
      internal;
      proxy_pass http://127.0.0.1:{decision}/auth;
      proxy_bind 127.0.0.2;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Original-Method $request_method;
    }}
    location / {{
      auth_request /_auth;
      auth_request_set $auth_subject $upstream_http_x_auth_subject;
      auth_request_set $auth_report $upstream_http_x_auth_report;
      proxy_set_header X-Auth-Subject $auth_subject;
      proxy_set_header X-Auth-Report $auth_report;
      proxy_pass http://127.0.0.1:{upstream};
    }}
  }}
"""


@pytest.fixture(scope="module")
def nginx(reporting: SidecarProcess, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("nginx-report")
    port = free_port()
    http = NGINX.format(
        port=port,
        decision=reporting.decision_port,  # type: ignore[attr-defined]
        upstream=upstream.url.rsplit(":", 1)[1],
    )
    url = f"http://127.0.0.1:{port}"
    with nginx_running(tmp, http, url):
        yield url


def test_nginx_forwards_a_reported_request_with_the_report_header(
    nginx: str, reporting: SidecarProcess, upstream: Upstream, issuer: DevIssuer
) -> None:
    before = reporting.metric(REPORTED, reason="expired")
    token = issuer.mint(ttl=-3600)
    r = request(nginx, path="/orders/late", headers={"Authorization": f"Bearer {token}", "X-Auth-Report": "none"})
    assert r.status == 200
    seen = at_app(upstream, "/orders/late")
    assert seen["x-auth-report"] == ["expired"]  # nginx copied the decision's header over the client's
    assert seen.get("x-auth-subject", [""]) == [""]
    assert reporting.metric(REPORTED, reason="expired") == before + 1


def test_nginx_still_refuses_what_an_enforcing_rule_refuses(nginx: str, upstream: Upstream) -> None:
    r = request(nginx, path="/payments/late")
    assert r.status == 401
    assert not [x for x in upstream.record if x["path"] == "/payments/late"]


def test_an_allowed_decision_has_no_report_header(nginx: str, upstream: Upstream, issuer: DevIssuer) -> None:
    auth = {"Authorization": f"Bearer {issuer.mint(sub='zoe')}", "X-Auth-Report": "spoofed"}
    r = request(nginx, path="/orders/fine", headers=auth)
    assert r.status == 200
    seen = at_app(upstream, "/orders/fine")
    assert seen["x-auth-subject"] == ["zoe"] and seen.get("x-auth-report", [""]) == [""]


async def test_an_override_to_a_reporting_rule_from_an_enforcing_route_is_refused(
    make_sidecar: MakeSidecar, issuer: DevIssuer
) -> None:
    sc = await make_sidecar(
        issuer, rules=[{"prefix": "/doc", "methods": ["DELETE"], "scopes": ["delete"], "mode": "report"}]
    )
    r = await sc.get("/doc/1", issuer.mint(), **{"X-HTTP-Method-Override": "DELETE"})
    assert r.status == 403 and (await r.json())["reason"] == "insufficient_scope"
    r = await sc.client.delete("/doc/1", headers={"Authorization": f"Bearer {issuer.mint()}"})
    assert r.status == 200 and r.headers.get("X-Auth-Report") is None  # the app got it; the client never does
    assert sc.metric(REPORTED, reason="insufficient_scope") == 1


def test_a_claim_header_cannot_take_the_report_header_name() -> None:
    with pytest.raises(ConfigError, match="sets itself"):
        _cfg(claim_headers={"X-Auth-Report": "sub"})
    with pytest.raises(ConfigError, match="sets itself"):
        _cfg(rules=[{"prefix": "/a", "claim_headers": {"x_auth_report": "sub"}}])
