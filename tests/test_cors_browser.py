"""CORS proven by a real browser: headless Chromium on one loopback origin calls the sidecar on another."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from sidecar.devtools.issuer import DevIssuer
from tests.conftest import Upstream
from tests.support import SidecarProcess, ThreadedServer

pytestmark = pytest.mark.browser

PAGE = """<!doctype html><html><body><pre id="out">pending</pre><script>
(async () => {
  const side = %(sidecar)s, out = [];
  async function call(label, token) {
    try {
      const r = await fetch(side + "/api/browser", {headers: {"Authorization": "Bearer " + token}});
      const j = await r.json();
      const auth = (j.headers || []).find(h => h[0] === "Authorization");
      out.push(label + ":" + r.status + ":" + (auth ? auth[1].slice(0, 13) : j.reason));
    } catch (e) { out.push(label + ":blocked"); }
  }
  await call("valid", %(valid)s);
  await call("expired", %(expired)s);
  document.getElementById("out").textContent = out.join("|");
})();
</script></body></html>"""


def page_server(params: dict[str, Any]) -> ThreadedServer:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE % {k: json.dumps(v) for k, v in params.items()}, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    return ThreadedServer(app)


def chromium_dom(url: str, profile: Path) -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "Debian's chromium is needed for the CORS test (apt-get install chromium); .ci/run installs it"
    args = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        url,
    ]
    return subprocess.run(args, capture_output=True, text=True, timeout=90).stdout


@pytest.fixture
def pages(issuer: DevIssuer) -> Iterator[tuple[dict[str, Any], ThreadedServer, ThreadedServer]]:
    params: dict[str, Any] = {
        "valid": issuer.mint(sub="browser"),
        "expired": issuer.mint(ttl=-3600),
        "sidecar": "",
    }
    allowed, denied = page_server(params), page_server(params)
    yield params, allowed, denied
    allowed.stop()
    denied.stop()


def test_a_page_on_an_allowed_origin_calls_the_sidecar_with_authorization(
    issuer: DevIssuer,
    upstream: Upstream,
    pages: tuple[dict[str, Any], ThreadedServer, ThreadedServer],
    tmp_path: Path,
) -> None:
    params, allowed, denied = pages
    sc = SidecarProcess(
        [
            "--upstream",
            upstream.url,
            "--jwks-url",
            f"{issuer.issuer}/jwks.json",
            "--issuer",
            issuer.issuer,
            "--audience",
            "demo-api",
            "--cors-origin",
            allowed.url,
        ]
    ).start()
    try:
        params["sidecar"] = sc.url
        dom = chromium_dom(allowed.url + "/", tmp_path / "a")
        # the preflight passed without a token, the token reached the app, and the browser could read the
        # sidecar's own 401 (it carries the CORS headers an allowed origin needs)
        assert "valid:200:Bearer eyJhbG" in dom, dom
        assert "expired:401:expired" in dom, dom
        assert sc.metric("sidecar_cors_preflights_total", result="allowed") >= 1

        dom = chromium_dom(denied.url + "/", tmp_path / "b")
        assert "valid:blocked" in dom and "expired:blocked" in dom, dom
        assert sc.metric("sidecar_cors_preflights_total", result="rejected") >= 1
    finally:
        sc.stop()
