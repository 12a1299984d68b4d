"""Identity headers the app may already trust never come from the client.

A team moving from oauth2-proxy, Authelia, Pomerium, Kong, IAP, ALB, Cloudflare Access, Easy Auth or a
Kubernetes front proxy keeps an app that trusts their identity headers. Against a real `sidecar run`: every
such header, in every case and `_` spelling, on public and protected paths, never reaches the echo app; the
list is configurable, prefixes included.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sidecar.devtools.issuer import DevIssuer
from tests.conftest import Upstream, config_process
from tests.support import SidecarProcess, request

PROXIES = {
    "oauth2-proxy": [
        "X-Forwarded-User",
        "X-Forwarded-Email",
        "X-Forwarded-Groups",
        "X-Forwarded-Preferred-Username",
        "X-Forwarded-Access-Token",
        "X-Auth-Request-User",
        "X-Auth-Request-Email",
        "X-Auth-Request-Groups",
        "X-Auth-Request-Preferred-Username",
        "X-Auth-Request-Access-Token",
    ],
    "authelia": ["Remote-User", "Remote-Groups", "Remote-Email", "Remote-Name"],
    "kube-front-proxy": ["X-Remote-User", "X-Remote-Group", "X-Remote-Extra-Tenant"],
    "kong": ["X-Consumer-Id", "X-Consumer-Username", "X-Authenticated-Userid", "X-Authenticated-Scope"],
    "pomerium": ["X-Pomerium-Jwt-Assertion", "X-Pomerium-Claim-Email"],
    "google-iap": ["X-Goog-Authenticated-User-Email", "X-Goog-Iap-Jwt-Assertion"],
    "aws-alb": ["X-Amzn-Oidc-Data", "X-Amzn-Oidc-Identity", "X-Amzn-Oidc-Accesstoken"],
    "cloudflare-access": ["Cf-Access-Jwt-Assertion", "Cf-Access-Authenticated-User-Email"],
    "azure-easy-auth": ["X-MS-CLIENT-PRINCIPAL", "X-MS-CLIENT-PRINCIPAL-NAME", "X-MS-TOKEN-AAD-ID-TOKEN"],
    "vouch": ["X-Vouch-User"],
    "authentik": ["X-Authentik-Username", "X-Authentik-Groups"],
    "envoy-istio": ["X-Forwarded-Client-Cert", "X-Jwt-Payload"],
    "mtls-proxies": ["X-SSL-Client-DN", "X-SSL-Client-Verify", "X-Client-Cert"],
    "generic": ["X-User", "X-User-Id", "X-Email", "X-Authenticated-User", "X-Userinfo", "X-Id-Token"],
}


def spellings(name: str) -> list[str]:
    return [name, name.lower(), name.upper(), name.replace("-", "_"), name.lower().replace("-", "_")]


CASES = [(proxy, s) for proxy, names in PROXIES.items() for n in names for s in spellings(n)]


@pytest.fixture(scope="module")
def sidecar(
    issuer: DevIssuer, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SidecarProcess]:
    proc = config_process(issuer, upstream, tmp_path_factory.mktemp("identity"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def custom(issuer: DevIssuer, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    proc = config_process(
        issuer,
        upstream,
        tmp_path_factory.mktemp("identity-custom"),
        foreign_identity_headers=["X-Tenant", "X-Corp-Identity-*"],
    )
    yield proc
    proc.stop()


def received(upstream: Upstream) -> dict[str, str]:
    assert len(upstream.record) == 1
    return {k.lower(): v for k, v in upstream.record[0]["headers"]}


@pytest.mark.parametrize(("proxy", "name"), CASES, ids=[f"{p}:{n}" for p, n in CASES])
def test_client_copies_of_auth_proxy_identity_headers_never_reach_the_app(
    proxy: str, name: str, sidecar: SidecarProcess, upstream: Upstream, issuer: DevIssuer
) -> None:
    token = issuer.mint(sub="alice")
    for path, extra in (("/public/x", []), ("/api/x", [("Authorization", f"Bearer {token}")])):
        upstream.clear()
        r = request(sidecar.url, path=path, headers=[*extra, (name, "admin"), ("X-Request-Id", "r1")])
        assert r.status == 200, r.body[:200]
        seen = received(upstream)
        assert "admin" not in seen.values(), (proxy, name, seen)
        assert seen["x-request-id"] == "r1"


def test_the_list_is_configurable_and_replaces_the_default(
    custom: SidecarProcess, upstream: Upstream, issuer: DevIssuer
) -> None:
    upstream.clear()
    headers = [("x_tenant", "acme"), ("X-CORP-IDENTITY-ROLE", "root"), ("X-Forwarded-User", "bob")]
    assert request(custom.url, path="/public/x", headers=headers).status == 200
    seen = received(upstream)
    assert "x_tenant" not in seen and "x-corp-identity-role" not in seen
    assert seen["x-forwarded-user"] == "bob"  # replaced list: the operator's front proxy sets this one


def test_the_sidecars_own_namespace_is_still_dropped_and_then_set_from_claims(
    sidecar: SidecarProcess, upstream: Upstream, issuer: DevIssuer
) -> None:
    upstream.clear()
    token = issuer.mint(sub="alice")
    headers = [("Authorization", f"Bearer {token}"), ("X_Auth_Subject", "root"), ("x-auth-subject", "root")]
    assert request(sidecar.url, path="/api/x", headers=headers).status == 200
    pairs = [(k.lower(), v) for k, v in upstream.record[0]["headers"] if "auth" in k.lower().replace("_", "-")]
    assert pairs == [("authorization", f"Bearer {token}"), ("x-auth-subject", "alice")]
