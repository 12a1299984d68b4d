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
