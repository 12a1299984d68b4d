"""The decision endpoint behind a real nginx (`auth_request`), and as Traefik and Envoy would call it."""

from __future__ import annotations

import http.client
from collections.abc import Iterator

import pytest
import yaml

from sidecar.devtools.issuer import DevIssuer
from tests.conftest import AUDIENCE, Upstream
from tests.support import Reply, SidecarProcess, free_port, request
from tests.support import nginx as nginx_running

TRUSTED = "127.0.0.2"  # nginx binds its subrequests here; 127.0.0.1 (the tests' own calls) is not trusted

NGINX = """
  server {{
    listen 127.0.0.1:{port};
    location = /_auth {{
      internal;
      proxy_pass http://127.0.0.1:{decision}/auth;
      proxy_bind {trusted};
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Original-Method $request_method;
    }}
    location / {{
      auth_request /_auth;
      auth_request_set $auth_subject $upstream_http_x_auth_subject;
      auth_request_set $auth_www $upstream_http_www_authenticate;
      proxy_set_header X-Auth-Subject $auth_subject;
      add_header WWW-Authenticate $auth_www always;
      proxy_pass http://127.0.0.1:{upstream};
    }}
  }}
"""


@pytest.fixture(scope="module")
def decider(
    issuer: DevIssuer, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SidecarProcess]:
    config = tmp_path_factory.mktemp("decision") / "sidecar.yaml"
    port = free_port()
    config.write_text(
        yaml.safe_dump(
            {
                "upstream": upstream.url,
                "providers": [
                    {"issuer": issuer.issuer, "audiences": [AUDIENCE], "jwks_url": f"{issuer.issuer}/jwks.json"}
                ],
                "public_paths": ["/public"],
                "claim_headers": {"X-Auth-Subject": "sub"},
                "cors": {"origins": ["http://localhost:3000"]},
                "rules": [{"name": "admin", "prefix": "/admin", "scopes": ["admin"]}],
                "decision": {"listen": f"127.0.0.1:{port}", "trusted_sources": [f"{TRUSTED}/32"]},
                "workers": 1,
            }
        )
    )
    proc = SidecarProcess(["--config", str(config)]).start()
    proc.decision_port = port  # type: ignore[attr-defined]
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def nginx(decider: SidecarProcess, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("nginx")
    port = free_port()
    http = NGINX.format(
        port=port,
        decision=decider.decision_port,  # type: ignore[attr-defined]
        trusted=TRUSTED,
        upstream=upstream.url.rsplit(":", 1)[1],
    )
    url = f"http://127.0.0.1:{port}"
    with nginx_running(tmp, http, url):
        yield url


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_nginx_auth_request_lets_a_valid_token_through_with_the_identity_header(
    nginx: str, issuer: DevIssuer, upstream: Upstream
) -> None:
    upstream.clear()
    token = issuer.mint(sub="nina")
    r = request(nginx, path="/orders?x=1", headers={**bearer(token), "X-Auth-Subject": "spoofed-admin"})
    assert r.status == 200
    seen = dict(upstream.record[-1]["headers"])
    assert seen["X-Auth-Subject"] == "nina"  # nginx copied the decision's header over the client's
    assert seen["Authorization"] == f"Bearer {token}"
    assert upstream.record[-1]["path"] == "/orders?x=1"


def test_nginx_refuses_what_the_sidecar_refuses_with_its_www_authenticate(
    nginx: str, issuer: DevIssuer, upstream: Upstream
) -> None:
    upstream.clear()
    r = request(nginx, path="/orders")
    assert r.status == 401 and r.header("WWW-Authenticate") == 'Bearer realm="sidecar"'
    r = request(nginx, path="/orders", headers=bearer(issuer.mint(ttl=-3600)))
    assert r.status == 401 and 'error="invalid_token"' in (r.header("WWW-Authenticate") or "")
    r = request(nginx, path="/admin/users", headers=bearer(issuer.mint()))
    assert r.status == 403 and 'scope="admin"' in (r.header("WWW-Authenticate") or "")
    assert upstream.record == []


def test_nginx_serves_public_paths_and_refuses_targets_with_dot_segments(nginx: str, issuer: DevIssuer) -> None:
    assert request(nginx, path="/public/info").status == 200
    # the app would route the raw target: never public, and a 403 (ambiguous_target) nginx passes on
    assert request(nginx, path="/public/../admin/x").status == 403
    assert request(nginx, path="/public/%2e%2e/admin/x").status == 403
    assert request(nginx, path="/admin/x", headers=bearer(issuer.mint(scope="admin"))).status == 200


def test_a_client_cannot_claim_a_public_path_through_nginx(nginx: str, upstream: Upstream) -> None:
    upstream.clear()
    r = request(nginx, path="/orders", headers={"X-Original-URI": "/public/x", "X-Original-Method": "OPTIONS"})
    assert r.status == 401 and upstream.record == []


def decide(decider: SidecarProcess, path: str, headers: dict[str, str], source: str) -> Reply:
    conn = http.client.HTTPConnection(
        "127.0.0.1",
        decider.decision_port,  # type: ignore[attr-defined]
        timeout=10,
        source_address=(source, 0),
    )
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return Reply(resp.status, resp.getheaders(), resp.read())
    finally:
        conn.close()


@pytest.mark.parametrize(
    "spoof",
    [
        {"X-Original-URI": "/public/x", "X-Original-Method": "GET"},
        {"X-Forwarded-Uri": "/public/x", "X-Forwarded-Method": "GET"},
    ],
    ids=["nginx-public", "traefik-public"],  # preflights: tests/test_hostile_decision.py
)
def test_forwarded_method_and_uri_from_an_untrusted_source_are_ignored(
    decider: SidecarProcess, spoof: dict[str, str]
) -> None:
    assert decide(decider, "/auth", spoof, "127.0.0.1").status == 401
    assert decide(decider, "/auth", spoof, TRUSTED).status == 200  # the same headers from the gateway count


def test_traefik_forward_auth_from_a_trusted_source(decider: SidecarProcess, issuer: DevIssuer) -> None:
    headers = {"X-Forwarded-Method": "POST", "X-Forwarded-Uri": "/admin/x?y=1", **bearer(issuer.mint(sub="t"))}
    r = decide(decider, "/", headers, TRUSTED)
    assert r.status == 403 and r.json()["reason"] == "insufficient_scope"
    headers.update(bearer(issuer.mint(sub="t", scope="admin")))
    r = decide(decider, "/", headers, TRUSTED)
    assert r.status == 200 and r.header("X-Auth-Subject") == "t"


def test_envoy_ext_authz_puts_the_original_path_after_the_prefix(decider: SidecarProcess, issuer: DevIssuer) -> None:
    assert decide(decider, "/ext_authz/public/x", {}, "127.0.0.1").status == 200
    r = decide(decider, "/ext_authz/admin/x", bearer(issuer.mint()), "127.0.0.1")
    assert r.status == 403
    r = decide(decider, "/ext_authz/orders", bearer(issuer.mint(sub="envoy-user")), "127.0.0.1")
    assert r.status == 200 and r.header("X-Auth-Subject") == "envoy-user"
