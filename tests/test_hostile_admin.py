"""The admin listener attacked from a browser: cross-site pages (CSRF) and DNS-rebinding pages.

Each class is a family of what a page can make a browser send (a foreign `Host`, a foreign or `null`
`Origin`, `Sec-Fetch-Site`, a simple request a form or `fetch` sends without a preflight), against every
admin action, on a real `sidecar run`. Probes and metrics keep answering kubelet and Prometheus, which
send the pod IP as `Host`.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from sidecar.devtools.issuer import DevIssuer
from tests.conftest import Upstream, sidecar_args
from tests.support import Reply, SidecarProcess, ThreadedServer, free_port

ACTIONS = [("POST", "/admin/keys/default/refresh"), ("POST", "/admin/keys/default/nope/revoke")]
READS = [("GET", "/admin/keys")]
PROBES = ["/healthz", "/readyz", "/metrics"]
JSON = ("Content-Type", "application/json")


@pytest.fixture(scope="module")
def admin(issuer: DevIssuer, upstream: Upstream) -> Iterator[SidecarProcess]:
    proc = SidecarProcess(sidecar_args(issuer, upstream, "--log-level", "warning")).start()
    yield proc
    proc.stop()


def call(
    port: int, method: str, path: str, headers: list[tuple[str, str]], host: str | None = None, addr: str = "127.0.0.1"
) -> Reply:
    """One request with exactly these headers; `Host` is ours to choose (None: the address called)."""
    conn = http.client.HTTPConnection(addr, port, timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host if host is not None else f"{addr}:{port}")
        for k, v in headers:
            conn.putheader(k, v)
        if method == "POST":
            conn.putheader("Content-Length", "0")
        conn.endheaders()
        resp = conn.getresponse()
        return Reply(resp.status, resp.getheaders(), resp.read())
    finally:
        conn.close()


def accepted(r: Reply) -> bool:
    return r.status in (200, 202)  # 202: queued for every worker when there are several


def refused(r: Reply, reason: str) -> bool:
    return r.status == 403 and r.json()["reason"] == reason


def foreign_hosts(port: int) -> list[Any]:
    """Names a DNS-rebinding page (or a confused proxy) puts in `Host`."""
    names = [
        "evil.example",
        f"evil.example:{port}",
        "127.0.0.1.nip.io",
        f"localhost.evil.example:{port}",
        f"evil-localhost:{port}",
        "10.0.0.1:9901",
        "0.0.0.0",
        f"[::]:{port}",
        "[::1",
        f"localhost:{port}:1",
        f"localhost:{port}@evil.example",
        "localhost:http",
        "",
        "127.1",
    ]
    return [pytest.param(n, id=f"host={n!r}") for n in names]


def loopback_hosts(port: int) -> list[str]:
    return [
        f"localhost:{port}",
        "localhost",
        "LOCALHOST:8080",  # kubectl port-forward may map any local port
        "localhost.",
        f"127.0.0.1:{port}",
        "127.0.0.1",
        f"127.0.0.53:{port}",
        f"[::1]:{port}",
        "[::1]",
    ]


class TestRebindingHostsAreRefused:
    @pytest.mark.parametrize(("method", "path"), ACTIONS + READS)
    def test_every_foreign_host_on_every_admin_endpoint(self, admin: SidecarProcess, method: str, path: str) -> None:
        for param in foreign_hosts(admin.admin_port):
            host = param.values[0]
            r = call(admin.admin_port, method, path, [JSON], host=host)
            assert refused(r, "foreign_host"), (host, r.status, r.body)

    def test_two_host_headers_are_refused(self, admin: SidecarProcess) -> None:
        r = call(admin.admin_port, "POST", ACTIONS[0][1], [JSON, ("Host", "evil.example")], host="localhost")
        assert r.status in (400, 403)  # aiohttp's parser or the guard: never the action

    @pytest.mark.parametrize(("method", "path"), ACTIONS + READS)
    def test_loopback_names_with_any_port_are_accepted(self, admin: SidecarProcess, method: str, path: str) -> None:
        for host in loopback_hosts(admin.admin_port):
            r = call(admin.admin_port, method, path, [JSON], host=host)
            assert accepted(r), (host, r.status, r.body)


def cross_origins(port: int) -> list[str]:
    return [
        "null",
        "http://evil.example",
        f"http://evil.example:{port}",
        "http://localhost:3000",  # a local dev server's page: same site, another origin
        f"http://127.0.0.1:{port + 1 if port < 65535 else port - 1}",
        f"http://localhost:{port}.evil.example",
        f"ftp://localhost:{port}",
        f"http://localhost:{port}/",
        "",
    ]


class TestCrossOriginRequestsAreRefused:
    @pytest.mark.parametrize(("method", "path"), ACTIONS + READS)
    def test_every_foreign_origin(self, admin: SidecarProcess, method: str, path: str) -> None:
        host = f"localhost:{admin.admin_port}"
        for origin in cross_origins(admin.admin_port):
            r = call(admin.admin_port, method, path, [JSON, ("Origin", origin)], host=host)
            assert refused(r, "cross_origin"), (origin, r.status, r.body)
        r = call(admin.admin_port, method, path, [JSON, ("Origin", f"http://{host}"), ("Origin", "null")], host=host)
        assert refused(r, "cross_origin")

    @pytest.mark.parametrize(("method", "path"), ACTIONS + READS)
    def test_its_own_origin_is_accepted(self, admin: SidecarProcess, method: str, path: str) -> None:
        for host, origin in [
            (f"localhost:{admin.admin_port}", f"http://localhost:{admin.admin_port}"),
            (f"127.0.0.1:{admin.admin_port}", f"http://127.0.0.1:{admin.admin_port}"),
            ("localhost:80", "http://localhost"),
        ]:
            r = call(admin.admin_port, method, path, [JSON, ("Origin", origin)], host=host)
            assert accepted(r), (origin, r.body)

    @pytest.mark.parametrize(("method", "path"), ACTIONS + READS)
    @pytest.mark.parametrize("site", ["cross-site", "same-site", "CROSS-SITE", "bogus", ""])
    def test_sec_fetch_site_other_than_same_origin_or_none(
        self, admin: SidecarProcess, method: str, path: str, site: str
    ) -> None:
        r = call(admin.admin_port, method, path, [JSON, ("Sec-Fetch-Site", site)], host="localhost")
        assert refused(r, "cross_site"), (site, r.status, r.body)

    @pytest.mark.parametrize(("method", "path"), ACTIONS + READS)
    @pytest.mark.parametrize("site", ["same-origin", "none"])
    def test_sec_fetch_site_same_origin_or_typed_by_the_user(
        self, admin: SidecarProcess, method: str, path: str, site: str
    ) -> None:
        assert accepted(call(admin.admin_port, method, path, [JSON, ("Sec-Fetch-Site", site)], host="localhost"))


class TestActionsNeedANonSimpleRequest:
    @pytest.mark.parametrize(("method", "path"), ACTIONS)
    @pytest.mark.parametrize(
        "content_type",
        [
            None,
            "text/plain",
            "text/plain; charset=utf-8",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "text/plain; application/json",
            "application/jsonp",
            "application/json-seq",
        ],
    )
    def test_what_a_form_or_a_simple_fetch_can_send_is_refused(
        self, admin: SidecarProcess, method: str, path: str, content_type: str | None
    ) -> None:
        headers = [("Content-Type", content_type)] if content_type is not None else []
        r = call(admin.admin_port, method, path, headers, host="localhost")
        assert refused(r, "simple_request"), (content_type, r.status, r.body)

    @pytest.mark.parametrize(("method", "path"), ACTIONS)
    @pytest.mark.parametrize(
        "headers",
        [
            [JSON],
            [("Content-Type", "application/json; charset=utf-8")],
            [("Content-Type", "Application/JSON")],
            [("X-Sidecar-Admin", "1")],
            [("X-Sidecar-Admin", "yes"), ("Content-Type", "text/plain")],
        ],
    )
    def test_json_or_the_admin_header_is_accepted(
        self, admin: SidecarProcess, method: str, path: str, headers: list[tuple[str, str]]
    ) -> None:
        assert accepted(call(admin.admin_port, method, path, headers, host="localhost"))

    def test_reads_need_no_special_header(self, admin: SidecarProcess) -> None:
        assert call(admin.admin_port, "GET", "/admin/keys", [], host="localhost").status == 200

    def test_a_preflight_for_an_action_is_never_granted(self, admin: SidecarProcess) -> None:
        ask = [("Origin", "http://evil.example"), ("Access-Control-Request-Method", "POST")]
        r = call(admin.admin_port, "OPTIONS", ACTIONS[0][1], ask, host="localhost")
        assert r.status >= 400 and r.header("Access-Control-Allow-Origin") is None


class TestProbesAndMetricsStillAnswerAnyone:
    @pytest.mark.parametrize("path", PROBES)
    def test_with_any_host_origin_or_fetch_site(self, admin: SidecarProcess, path: str) -> None:
        for host in ["10.1.2.3:9901", "jwt-sidecar-metrics.ns.svc:9901", "evil.example", "localhost"]:
            for extra in ([], [("Origin", "null")], [("Sec-Fetch-Site", "cross-site")]):
                assert call(admin.admin_port, "GET", path, extra, host=host).status == 200, (path, host, extra)


def own_address() -> str | None:
    """This machine's address on its default route (a UDP connect sends nothing), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            addr = str(s.getsockname()[0])
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


class TestTheListenersOwnAddressAndConfiguredNames:
    def test_host_naming_the_address_the_connection_arrived_at_is_accepted(
        self, issuer: DevIssuer, upstream: Upstream, tmp_path: Path
    ) -> None:
        addr = own_address()
        if addr is None:
            pytest.skip("no non-loopback address to call the listener on")
        port = free_port()
        config = tmp_path / "c.yaml"
        config.write_text(json.dumps({"admin_actions": "on", "admin_hosts": ["jwt-sidecar-admin.ns.svc"]}))
        sc = SidecarProcess([*sidecar_args(issuer, upstream, "--log-level", "warning"), "--config", str(config)])
        sc.args[3] = f"0.0.0.0:{port}"  # --admin-listen on every address, as in a pod
        sc.admin_port = port
        sc.start()
        try:
            for method, path in ACTIONS + READS:
                # kubelet's and an operator's curl name the pod IP: the address this connection arrived at
                assert accepted(call(port, method, path, [JSON], addr=addr))
                assert accepted(call(port, method, path, [JSON], host="jwt-sidecar-admin.ns.svc:9901", addr=addr))
                # a rebinding page names its own domain, whatever it resolved to
                r = call(port, method, path, [JSON], host="evil.example", addr=addr)
                assert refused(r, "foreign_host")
                # another address of this host is not the one called
                r = call(port, method, path, [JSON], host="10.255.255.254", addr=addr)
                assert refused(r, "foreign_host")
        finally:
            sc.stop()

    def test_admin_actions_off_still_says_so_first(self, issuer: DevIssuer, upstream: Upstream) -> None:
        sc = SidecarProcess(sidecar_args(issuer, upstream, "--admin-actions", "off")).start()
        try:
            for method, path in ACTIONS + READS:
                assert refused(call(sc.admin_port, method, path, [JSON], host="localhost"), "admin_actions_disabled")
        finally:
            sc.stop()


# --- a real browser ---------------------------------------------------------------------------------------

ATTACK = """<!doctype html><html><body><pre id="out">pending</pre>
<form id="f" method="POST" action="%(admin)s/admin/keys/default/refresh" target="sink"></form>
<iframe name="sink"></iframe><script>
(async () => {
  const out = [];
  async function attempt(label, init) {
    try { const r = await fetch(%(admin_js)s + "/admin/keys/default/refresh", init); out.push(label + ":" + r.status); }
    catch (e) { out.push(label + ":blocked"); }
  }
  await attempt("no-cors-text", {method: "POST", mode: "no-cors", body: "x", headers: {"Content-Type": "text/plain"}});
  await attempt("cors-json", {method: "POST", body: "{}", headers: {"Content-Type": "application/json"}});
  await attempt("cors-header", {method: "POST", headers: {"X-Sidecar-Admin": "1"}});
  document.getElementById("f").submit();
  await new Promise(r => setTimeout(r, 1000));
  document.getElementById("out").textContent = out.join("|");
})();
</script></body></html>"""


@pytest.mark.browser
def test_a_cross_site_page_in_a_real_browser_cannot_refresh_or_revoke(
    admin: SidecarProcess, issuer: DevIssuer, tmp_path: Path
) -> None:
    from tests.test_cors_browser import chromium_dom

    admin_url = f"http://127.0.0.1:{admin.admin_port}"

    async def page(request: web.Request) -> web.Response:
        return web.Response(
            text=ATTACK % {"admin": admin_url, "admin_js": json.dumps(admin_url)}, content_type="text/html"
        )

    app = web.Application()
    app.router.add_get("/", page)
    server = ThreadedServer(app)
    before = admin.metric("sidecar_jwks_fetches_total", provider="default", result="success")
    try:
        dom = chromium_dom(f"http://localhost:{server.port}/", tmp_path / "profile")
    finally:
        server.stop()
    assert "no-cors-text:0" in dom or "no-cors-text:blocked" in dom, dom  # opaque: the page learns nothing
    assert "cors-json:blocked" in dom and "cors-header:blocked" in dom, dom  # no preflight is ever granted
    # no attempt refreshed the keys; the ones that reached the sidecar were refused by the guard
    assert admin.metric("sidecar_jwks_fetches_total", provider="default", result="success") == before
    refusals = [line for line in admin.log_lines() if line.get("msg") == "admin request refused"]
    assert {line["reason"] for line in refusals} >= {"cross_origin"}, refusals
