"""A real `sidecar run` (uvloop, config file, its own TLS stack) against an API-server-like key source:
https with a private CA, answering only a caller with the bearer token from `jwks_auth`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from sidecar.devtools.issuer import DevIssuer
from tests.conftest import Upstream
from tests.idp_support import private_ca
from tests.support import SidecarProcess, ThreadedServer, request

ISSUER = "https://kubernetes.default.svc.cluster.local"
SA_TOKEN = "eyJhbGciOiJSUzI1NiJ9.ZTJlLXNpZGVjYXItdG9rZW4.c2ln"


class ApiServer:
    def __init__(self, dev: DevIssuer) -> None:
        self.dev = dev
        self.seen: list[str | None] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/openid/v1/jwks", self._jwks)
        return app

    async def _jwks(self, request: web.Request) -> web.Response:
        self.seen.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != f"Bearer {SA_TOKEN}":
            return web.json_response({"kind": "Status", "code": 401}, status=401)
        return web.json_response(self.dev.jwks())


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApiServer, ThreadedServer, Path]]:
    tmp = tmp_path_factory.mktemp("apiserver")
    ca = private_ca("cluster CA")
    dev = DevIssuer(issuer=ISSUER, audience="orders-api")
    api = ApiServer(dev)
    server = ThreadedServer(api.app(), ca.server_context(tmp))
    ca.write_ca(tmp / "ca.crt")
    (tmp / "token").write_text(SA_TOKEN + "\n")
    yield api, server, tmp
    server.stop()


def _config(tmp: Path, server: ThreadedServer, upstream: Upstream, with_ca: bool = True) -> Path:
    provider = {
        "name": "kubernetes",
        "issuer": ISSUER,
        "audiences": ["orders-api"],
        "jwks_url": f"{server.url}/openid/v1/jwks",
        "jwks_auth": {"bearer_token_file": str(tmp / "token")},
    }
    if with_ca:
        provider["ca_file"] = str(tmp / "ca.crt")
    path = tmp / f"config-{with_ca}.yaml"
    path.write_text(yaml.safe_dump({"upstream": upstream.url, "workers": 1, "providers": [provider]}))
    return path


def test_a_real_sidecar_reads_the_api_server_key_set_with_ca_file_and_bearer_token(
    api_server: tuple[ApiServer, ThreadedServer, Path], upstream: Upstream
) -> None:
    api, server, tmp = api_server
    proc = SidecarProcess(["--config", str(_config(tmp, server, upstream))]).start()
    try:
        token = api.dev.mint(sub="system:serviceaccount:shop:checkout", aud=["orders-api"])
        r = request(proc.url, path="/orders", headers={"Authorization": f"Bearer {token}"})
        assert r.status == 200
        assert api.seen and set(api.seen) == {f"Bearer {SA_TOKEN}"}
        assert proc.metric("sidecar_jwks_fetches_total", provider="kubernetes", result="success") >= 1
    finally:
        proc.stop()
    assert SA_TOKEN not in proc.logs()


def test_a_real_sidecar_without_the_cluster_ca_never_trusts_the_api_server(
    api_server: tuple[ApiServer, ThreadedServer, Path], upstream: Upstream
) -> None:
    api, server, tmp = api_server
    before = len(api.seen)
    proc = SidecarProcess(["--config", str(_config(tmp, server, upstream, with_ca=False))]).start(wait="/healthz")
    try:
        for _ in range(100):
            if proc.metric("sidecar_jwks_fetches_total", provider="kubernetes", result="refused") >= 1:
                break
            time.sleep(0.05)
        assert proc.metric("sidecar_jwks_fetches_total", provider="kubernetes", result="refused") >= 1
        assert request(proc.admin, path="/readyz").status == 503
        assert len(api.seen) == before  # the TLS handshake failed: no request, so no token, reached the server
    finally:
        proc.stop()
    assert SA_TOKEN not in proc.logs()
