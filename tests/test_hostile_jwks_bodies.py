"""Issue 9, class 10, "JWKS bodies read partially", through a real `sidecar run` process.

A key set or discovery document that arrives in several reads (chunked with pauses, or simply larger than
one socket read) must be read whole, so the sidecar becomes ready; one larger than `jwks.max_bytes` must be
refused, so an IdP (or whoever answers in its place) cannot make the sidecar buffer without bound.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from sidecar.devtools.issuer import DevIssuer
from tests.conftest import AUDIENCE, Upstream
from tests.support import SidecarProcess, ThreadedServer, request

LIMIT = 400_000


class SlowIdP:
    """Discovery and JWKS, each sent chunked in 16 KiB pieces with pauses, padded to `size` bytes."""

    def __init__(self, dev: DevIssuer) -> None:
        self.dev = dev
        self.size = 270 * 1024 + 123

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks.json", self._jwks)
        return app

    async def _send(self, request: web.Request, doc: object) -> web.StreamResponse:
        raw = json.dumps(doc).encode()
        body = raw + b" " * max(0, self.size - len(raw))
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(body), 16384):
            await resp.write(body[i : i + 16384])
            if i % (4 * 16384) == 0:
                await asyncio.sleep(0.05)
        await resp.write_eof()
        return resp

    async def _discovery(self, request: web.Request) -> web.StreamResponse:
        return await self._send(request, {"issuer": self.dev.issuer, "jwks_uri": f"{self.dev.issuer}/jwks.json"})

    async def _jwks(self, request: web.Request) -> web.StreamResponse:
        return await self._send(request, self.dev.jwks())


@pytest.fixture
def slow_idp() -> Iterator[SlowIdP]:
    dev = DevIssuer(audience=AUDIENCE)
    idp = SlowIdP(dev)
    server = ThreadedServer(idp.app())
    dev.issuer = server.url
    yield idp
    server.stop()


def _config(idp: SlowIdP, upstream: Upstream, tmp_path: Path) -> list[str]:
    cfg = {
        "upstream": upstream.url,
        "workers": 1,
        "jwks": {"max_bytes": LIMIT},
        "providers": [{"issuer": idp.dev.issuer, "audiences": [AUDIENCE], "discovery": True}],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return ["--config", str(path)]


def test_jwks_bodies_read_partially_chunked_paused_and_large_still_make_the_sidecar_ready(
    slow_idp: SlowIdP, upstream: Upstream, tmp_path: Path
) -> None:
    proc = SidecarProcess(_config(slow_idp, upstream, tmp_path))
    proc.start()
    try:
        token = slow_idp.dev.mint()
        assert request(proc.url, path="/api", headers={"Authorization": f"Bearer {token}"}).status == 200
        assert proc.metric("sidecar_jwks_fetches_total", provider="default", result="invalid") == 0
    finally:
        proc.stop()


def test_jwks_bodies_over_max_bytes_are_refused_and_the_sidecar_stays_unready(
    slow_idp: SlowIdP, upstream: Upstream, tmp_path: Path
) -> None:
    slow_idp.size = LIMIT + 1
    proc = SidecarProcess(_config(slow_idp, upstream, tmp_path))
    proc.start(wait="/healthz")
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.metric("sidecar_jwks_fetches_total", provider="default", result="invalid") >= 1:
                break
            time.sleep(0.05)
        assert proc.metric("sidecar_jwks_fetches_total", provider="default", result="invalid") >= 1
        assert request(proc.admin, path="/readyz").status == 503
        token = slow_idp.dev.mint()
        r = request(proc.url, path="/api", headers={"Authorization": f"Bearer {token}"})
        assert r.status == 503
    finally:
        proc.stop()
