"""Decision mode attacked through a real nginx (`auth_request`) and as Traefik and Envoy call it.

Each class is a family: request targets app routers could read more than one way, forwarded method/URI
headers that repeat or disagree, refusals a gateway must understand, and CORS preflights. nginx runs the
configuration docs/gateways.md recommends; the app behind it records what reaches it, and nothing judged
one way may reach it read another.
"""

from __future__ import annotations

import http.client
import itertools
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.devtools.issuer import DevIssuer
from tests.conftest import AUDIENCE, Upstream
from tests.support import Reply, SidecarProcess, ThreadedServer, free_port
from tests.support import nginx as nginx_running

TRUSTED = "127.0.0.2"  # nginx binds its auth subrequests here; the tests' own calls (127.0.0.1) are not trusted
ORIGIN = "http://localhost:3000"

# The recommended nginx configuration (docs/gateways.md), with `{...}` filled in per server block.
SERVER = """
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
      {strip}
    }}
    location @cors_preflight {{
      proxy_pass http://127.0.0.1:{decision};
      proxy_set_header X-Original-URI "";
      proxy_set_header X-Original-Method "";
      proxy_set_header X-Forwarded-Uri "";
      proxy_set_header X-Forwarded-Method "";
    }}
    location @auth_unavailable {{
      if ($auth_status = 400) {{ return 400; }}
      add_header Retry-After 5 always;
      add_header X-Auth-Reason $auth_reason always;
      return 503;
    }}
    location / {{
      error_page 418 = @cors_preflight;
      if ($cors_preflight) {{ return 418; }}
      auth_request /_auth;
      auth_request_set $auth_subject $upstream_http_x_auth_subject;
      auth_request_set $auth_www $upstream_http_www_authenticate;
      auth_request_set $auth_reason $upstream_http_x_auth_reason;
      auth_request_set $auth_status $upstream_status;
      auth_request_set $auth_acao $upstream_http_access_control_allow_origin;
      auth_request_set $auth_acac $upstream_http_access_control_allow_credentials;
      auth_request_set $auth_vary $upstream_http_vary;
      error_page 500 = @auth_unavailable;
      proxy_set_header X-Auth-Subject $auth_subject;
      add_header WWW-Authenticate $auth_www always;
      add_header X-Auth-Reason $auth_reason always;
      add_header Access-Control-Allow-Origin $auth_acao always;
      add_header Access-Control-Allow-Credentials $auth_acac always;
      add_header Vary $auth_vary always;
      proxy_pass http://127.0.0.1:{upstream};
    }}
  }}
"""
# A client header nginx would otherwise pass to the sidecar: the recommended config drops it.
STRIP = 'proxy_set_header X-Forwarded-Uri ""; proxy_set_header X-Forwarded-Method "";'

NGINX = """
  map "$request_method:$http_access_control_request_method" $cors_preflight {{
    default 0;
    "~^OPTIONS:." 1;
  }}
  {servers}
"""


def sidecar_config(path: Path, issuer: DevIssuer, upstream: Upstream, jwks_url: str, origins: list[str]) -> int:
    port = free_port()
    path.write_text(
        yaml.safe_dump(
            {
                "upstream": upstream.url,
                "providers": [{"issuer": issuer.issuer, "audiences": [AUDIENCE], "jwks_url": jwks_url}],
                "public_paths": ["/public"],
                "claim_headers": {"X-Auth-Subject": "sub"},
                "cors": {"origins": origins},
                "rules": [
                    {"name": "no-delete", "prefix": "/orders", "methods": ["DELETE"], "deny": True},
                    {"name": "admin", "prefix": "/admin", "scopes": ["admin"]},
                    {"name": "reports", "prefix": "/Reports", "scopes": ["reports"]},
                    {"name": "export", "prefix": "/export", "methods": ["GET"], "scopes": ["export"]},
                ],
                "decision": {"listen": f"127.0.0.1:{port}", "trusted_sources": [f"{TRUSTED}/32"]},
                "workers": 1,
                "log_level": "warning",
            }
        )
    )
    return port


class Page:
    """A page on its own loopback origin, for the browser test; its URL is an allowed CORS origin."""

    def __init__(self) -> None:
        from tests.test_cors_browser import page_server

        self.params: dict[str, Any] = {"valid": "", "expired": "", "sidecar": ""}
        self.server: ThreadedServer = page_server(self.params)


@pytest.fixture(scope="module")
def page() -> Iterator[Page]:
    p = Page()
    yield p
    p.server.stop()


@pytest.fixture(scope="module")
def decider(
    issuer: DevIssuer, upstream: Upstream, page: Page, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SidecarProcess]:
    config = tmp_path_factory.mktemp("decision") / "sidecar.yaml"
    port = sidecar_config(config, issuer, upstream, f"{issuer.issuer}/jwks.json", [ORIGIN, page.server.url])
    proc = SidecarProcess(["--config", str(config)]).start()
    proc.decision_port = port  # type: ignore[attr-defined]
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def keyless(
    issuer: DevIssuer, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SidecarProcess]:
    """A sidecar whose IdP never answers: every token decision is 503 keys_unavailable."""
    config = tmp_path_factory.mktemp("keyless") / "sidecar.yaml"
    port = sidecar_config(config, issuer, upstream, f"http://127.0.0.1:{free_port()}/jwks.json", [ORIGIN])
    proc = SidecarProcess(["--config", str(config)]).start(wait="/healthz")
    proc.decision_port = port  # type: ignore[attr-defined]
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def gateway(
    decider: SidecarProcess, keyless: SidecarProcess, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, int]]:
    """nginx with three servers: the recommended config, the same without stripping client X-Forwarded-*
    (so conflicts reach the sidecar), and one in front of the keyless sidecar."""
    tmp = tmp_path_factory.mktemp("nginx")
    ports = {"strict": free_port(), "passing": free_port(), "keyless": free_port()}
    up = upstream.url.rsplit(":", 1)[1]
    servers = "".join(
        SERVER.format(port=ports[name], decision=sc.decision_port, trusted=TRUSTED, upstream=up, strip=strip)  # type: ignore[attr-defined]
        for name, sc, strip in (
            ("strict", decider, STRIP),
            ("passing", decider, ""),
            ("keyless", keyless, STRIP),
        )
    )
    with nginx_running(tmp, NGINX.format(servers=servers), f"http://127.0.0.1:{ports['strict']}"):
        yield ports


def send(port: int, target: bytes, headers: list[tuple[str, str]] = (), method: bytes = b"GET") -> Reply:  # type: ignore[assignment]
    """One request with the target as raw bytes (http.client would refuse or re-encode some of them)."""
    head = method + b" " + target + b" HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
    head += b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head + b"\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    top, _, body = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    pairs = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:] if ":" in line]
    return Reply(int(lines[0].split()[1]), pairs, body)  # type: ignore[arg-type]


def decide(port: int, path: str, headers: list[tuple[str, str]], source: str = TRUSTED, method: str = "GET") -> Reply:
    """Call the decision listener as a gateway would: from `source`, headers possibly repeated."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in headers:
            conn.putheader(k, v.encode())  # as UTF-8 bytes, the way a gateway passes a raw target on
        conn.endheaders()
        resp = conn.getresponse()
        return Reply(resp.status, resp.getheaders(), resp.read())
    finally:
        conn.close()


def bearer(token: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {token}")


def reached(upstream: Upstream) -> list[str]:
    return [r["path"] for r in upstream.record]


# --- 1. targets with no single reading ------------------------------------------------------------------

# What the attacker wants judged (a public path) and what the app is to route (a protected one), joined by
# each way of making the two readings differ. `{p}` is the public tail, `{a}` the protected head.
TRICKS = {
    "fragment": ["{a}#/../..{p}", "{a}#{p}", "{a}?x=1#{p}"],
    "encoded-dot-segment": [
        "{a}/%2e%2e/%2e%2e{p}",
        "{a}/%2E%2E/%2E%2E{p}",
        "{a}/.%2e/.%2e{p}",
        "{a}/%2e./%2e.{p}",
        "{a}/%2e/..{p}",
    ],
    "double-encoding": ["{a}/%252e%252e/%252e%252e{p}", "{a}%252f..%252f..{p}", "{a}/%25{p}"],
    "encoded-slash": ["{p}%2f..%2f..{a}", "{p}%2F..%2F..{a}", "{a}%2fx"],
    "backslash": ["{a}\\..\\..{p}", "{a}/%5c..%5c..{p}", "{a}%5C{p}"],
    "path-parameters": ["{a};/../..{p}", "{p}/..;/..{a}", "{a};jsessionid=1", "{a}%3b{p}"],
    "dot-segment": ["{a}/../..{p}", "{p}/..{a}", "{a}/.{p}", "{p}/./..{a}"],
    "empty-segment": ["/{p}/..{a}", "{a}//x", "/{a}"],
    "encoded-unreserved": ["/%61dmin/x", "/%70ublic/x", "/adm%69n/x", "/%41dmin/x"],
    "encoded-query-or-fragment": ["{a}%3f{p}", "{a}%23{p}", "{p}%3F/..{a}"],
    "overlong-utf8": ["{a}/%c0%ae%c0%ae{p}", "{a}/%e0%80%ae%e0%80%ae{p}", "{a}%c0%af..{p}"],
    "invalid-utf8": ["{a}/%ff{p}", "{a}/%c3{p}"],
    "case-folding": ["/ADMIN/x", "/Admin/x", "/PUBLIC/../admin", "/reports/x", "/REPORTS/x"],
    "unicode-compatibility": [
        "{p}/%EF%BC%8E%EF%BC%8E{a}",
        "/%EF%BD%81dmin/x",
        "{p}%EF%BC%8F..%EF%BC%8F..{a}",
        "/e%CC%81{p}",
    ],
    "raw-non-ascii": ["{p}/café", "{a}/\u2025/..{p}", "{p}/\uff0e\uff0e{a}"],
}
TARGETS = [
    pytest.param(t.format(a="/admin/x", p="/public/y"), id=f"{family}-{i}")
    for family, templates in TRICKS.items()
    for i, t in enumerate(templates)
]
# Refused by nginx itself before any auth subrequest, or never sent by it; the sidecar must refuse them too
# when Traefik or Envoy hand them over.
RAW_ONLY = {
    "control": ["/admin/x\x01/public", "/public\x7f", "/public/\x00"],
    "nul-escape": ["/public/%00/x", "/public%00.json"],
    "escaped-control": ["/public/%0a", "/public/%0d%0aX-Injected:%201", "/public/%7f"],
    "bad-escape": ["/public/%zz", "/public/%4", "/public/%", "/public/%g1"],
    "space": ["/public/a b", "/public/\tx"],
    "non-ascii": ["/public/café", "/admin/\u2025/public"],
    "not-origin-form": ["http://gw/public/x", "HTTP://gw/public", "//gw/public/x", "*", "public/x", ""],
}
RAW_TARGETS = [pytest.param(t, id=f"{family}-{i}") for family, values in RAW_ONLY.items() for i, t in enumerate(values)]


class TestTargetsWithNoSingleReadingAreRefused:
    @pytest.mark.parametrize("target", TARGETS)
    def test_behind_nginx_refused_with_a_403_nginx_passes_on(
        self, gateway: dict[str, int], upstream: Upstream, target: str
    ) -> None:
        upstream.clear()
        r = send(gateway["strict"], target.encode())
        assert reached(upstream) == [], target
        if r.status == 400:  # nginx refused it itself: fine, it never reached the app either
            return
        assert r.status == 403 and r.header("X-Auth-Reason") == "ambiguous_target", (r.status, r.headers)

    @pytest.mark.parametrize("target", TARGETS + RAW_TARGETS)
    @pytest.mark.parametrize("method", ["GET", "DELETE"])
    def test_in_traefik_form_refused_with_400(self, decider: SidecarProcess, target: str, method: str) -> None:
        headers = [("X-Forwarded-Method", method), ("X-Forwarded-Uri", target)]
        r = decide(decider.decision_port, "/auth", headers)  # type: ignore[attr-defined]
        if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in target):
            assert r.status == 400  # aiohttp's header parser refuses these before the sidecar sees them
            return
        assert r.status == 400 and r.json()["reason"] == "ambiguous_target", (r.status, r.body)
        assert r.header("X-Auth-Reason") == "ambiguous_target"

    @pytest.mark.parametrize("target", TARGETS)
    def test_in_envoy_form_refused_with_400_even_with_a_valid_admin_token(
        self, decider: SidecarProcess, issuer: DevIssuer, target: str
    ) -> None:
        if "#" in target or not target.isascii():  # Envoy never passes a fragment or raw non-ASCII on
            return
        token = issuer.mint(scope="admin")
        r = decide(decider.decision_port, "/ext_authz" + target, [bearer(token)], source="127.0.0.1")  # type: ignore[attr-defined]
        assert r.status == 400 and r.json()["reason"] == "ambiguous_target", (r.status, r.body)


# Targets every router reads one way: judged normally (public ones reach the app), never refused.
SINGLE = [
    "/public/caf%C3%A9",
    "/public/a%20b",
    "/public/%E2%82%AC/x",
    "/public/x?q=%2e%2e/%2f&r=%23",
    "/public/",
    "/public",
    "/public/a!$&'()*+,=:@x",
    "/public/a|b^c[d]",
    "/public/x%21y",
    "/public/deep/er/path.json",
]


class TestTargetsWithOneReadingAreJudged:
    @pytest.mark.parametrize("target", SINGLE)
    def test_public_ones_reach_the_app_behind_nginx_as_sent(
        self, gateway: dict[str, int], upstream: Upstream, target: str
    ) -> None:
        upstream.clear()
        r = send(gateway["strict"], target.encode())
        assert r.status == 200, (r.status, r.headers)
        assert reached(upstream) == [target]

    @pytest.mark.parametrize(
        "target", [t.replace("/public", "/admin", 1) for t in SINGLE] + ["/admin/X", "/admin/ÄB".replace("Ä", "%C3%84")]
    )
    def test_protected_ones_need_their_scope(
        self, gateway: dict[str, int], issuer: DevIssuer, upstream: Upstream, target: str
    ) -> None:
        upstream.clear()
        assert send(gateway["strict"], target.encode()).status == 401
        r = send(gateway["strict"], target.encode(), [bearer(issuer.mint())])
        assert r.status == 403 and r.header("X-Auth-Reason") == "insufficient_scope"
        assert reached(upstream) == []
        assert send(gateway["strict"], target.encode(), [bearer(issuer.mint(scope="admin"))]).status == 200
        assert reached(upstream) == [target]

    @pytest.mark.parametrize("target", ["/Reports/q1", "/Reports", "/Reports/a%20b"])
    def test_a_rule_written_in_upper_case_applies_to_its_own_spelling(
        self, gateway: dict[str, int], issuer: DevIssuer, target: str
    ) -> None:
        assert send(gateway["strict"], target.encode(), [bearer(issuer.mint())]).status == 403
        assert send(gateway["strict"], target.encode(), [bearer(issuer.mint(scope="reports"))]).status == 200


class TestHeadIsReadAsTheGetItRuns:
    @pytest.mark.parametrize("target", [b"/export", b"/export/q1.csv", b"/export/a%20b"])
    def test_head_on_a_get_only_rule_is_refused_not_judged_by_the_weaker_rule(
        self, gateway: dict[str, int], issuer: DevIssuer, upstream: Upstream, target: bytes
    ) -> None:
        upstream.clear()
        r = send(gateway["strict"], target, [bearer(issuer.mint())], method=b"HEAD")
        assert r.status == 403 and r.header("X-Auth-Reason") == "ambiguous_target"
        assert reached(upstream) == []
        assert send(gateway["strict"], target, [bearer(issuer.mint())]).status == 403  # GET needs the scope
        assert send(gateway["strict"], target, [bearer(issuer.mint(scope="export"))]).status == 200

    @pytest.mark.parametrize("target", [b"/orders", b"/admin/x", b"/public/x"])
    def test_head_where_get_and_head_share_a_rule_is_judged(
        self, gateway: dict[str, int], issuer: DevIssuer, target: bytes
    ) -> None:
        assert send(gateway["strict"], target, [bearer(issuer.mint(scope="admin"))], method=b"HEAD").status == 200


# --- 2. forwarded method/URI headers that repeat or disagree ----------------------------------------------

OM, OU, FM, FU = "X-Original-Method", "X-Original-URI", "X-Forwarded-Method", "X-Forwarded-Uri"


def conflicts() -> Iterator[Any]:
    """Every way two forwarded headers can tell two stories, with the public path as the lure."""
    real, lure = ("DELETE", "/orders/1"), ("GET", "/public/x")
    for name in (OM, OU, FM, FU):
        pair = [(OM, real[0]), (OU, real[1])] if name in (OM, OU) else [(FM, real[0]), (FU, real[1])]
        value = dict(pair)[name]
        for copy in (value, lure[0] if "Method" in name else lure[1]):
            yield pytest.param([*pair, (name, copy)], id=f"repeat-{name}-{'same' if copy == value else 'other'}")
    for (m1, u1), (m2, u2) in itertools.product([real, lure], repeat=2):
        if (m1, u1) != (m2, u2):
            yield pytest.param([(OM, m1), (OU, u1), (FM, m2), (FU, u2)], id=f"disagree-{m1}{u1}-{m2}{u2}")
    for present in ((OU,), (FU,), (OM,), (FM,), (OU, FM), (FU, OM)):
        given = [(n, real[0] if "Method" in n else real[1]) for n in present]
        yield pytest.param(given, id="unpaired-" + "+".join(present))
    for bad in ("GET, DELETE", "G ET", "GE\tT", "", "DELETE/"):
        yield pytest.param([(FM, bad), (FU, real[1])], id=f"bad-method-{bad!r}")


class TestConflictingForwardedHeadersAreRefused:
    @pytest.mark.parametrize("headers", list(conflicts()))
    def test_from_a_trusted_gateway_in_traefik_form_400(self, decider: SidecarProcess, headers: Any) -> None:
        r = decide(decider.decision_port, "/auth", headers)  # type: ignore[attr-defined]
        nginx_form = any(k == OU for k, _ in headers)
        assert r.status == (403 if nginx_form else 400), (r.status, r.body)
        assert r.json()["reason"] == "conflicting_forwarded"
        assert r.header("X-Auth-Reason") == "conflicting_forwarded"

    @pytest.mark.parametrize("headers", list(conflicts()))
    def test_from_anyone_else_they_are_ignored(self, decider: SidecarProcess, headers: Any) -> None:
        r = decide(decider.decision_port, "/auth", headers, source="127.0.0.1")  # type: ignore[attr-defined]
        assert r.status == 401 and r.json()["reason"] == "missing_token"  # judged as the GET /auth it is

    @pytest.mark.parametrize(
        "added",
        [
            [(FU, "/public/x")],
            [(FM, "GET")],
            [(FM, "GET"), (FU, "/public/x")],
            [(FU, "/public/x"), (FU, "/public/y")],
            [(FM, "OPTIONS"), (FU, "/public/x")],
        ],
    )
    def test_a_client_adding_them_through_nginx_is_refused_or_ignored(
        self, gateway: dict[str, int], issuer: DevIssuer, upstream: Upstream, added: list[tuple[str, str]]
    ) -> None:
        upstream.clear()
        token = issuer.mint()
        # nginx passes client headers to the auth subrequest: the sidecar sees two stories and refuses
        r = send(gateway["passing"], b"/orders/1", [bearer(token), *added], method=b"DELETE")
        assert r.status == 403 and r.header("X-Auth-Reason") == "conflicting_forwarded"
        # the recommended config drops them: the request is judged as what it is (DELETE is denied here)
        r = send(gateway["strict"], b"/orders/1", [bearer(token), *added], method=b"DELETE")
        assert r.status == 403 and r.header("X-Auth-Reason") == "route_denied"
        assert reached(upstream) == []

    @pytest.mark.parametrize(
        "name",
        ["X-Original-URL", "x-original-url", "X-Rewrite-URL", "X_Original_URL", "X_REWRITE_URL", "x-original_url"],
    )
    def test_headers_some_frameworks_route_by_instead_of_the_target_are_refused(
        self, decider: SidecarProcess, gateway: dict[str, int], upstream: Upstream, name: str
    ) -> None:
        upstream.clear()
        for source in (TRUSTED, "127.0.0.1"):
            headers = [(FM, "GET"), (FU, "/public/x"), (name, "/admin/x")]
            r = decide(decider.decision_port, "/auth", headers, source=source)  # type: ignore[attr-defined]
            assert r.status == 400 and r.header("X-Auth-Reason") == "conflicting_forwarded"
        if "_" not in name:  # nginx drops names with '_' itself (underscores_in_headers off)
            r = send(gateway["strict"], b"/public/x", [(name, "/admin/x")])
            assert r.status == 403 and r.header("X-Auth-Reason") == "conflicting_forwarded"
        assert reached(upstream) == []

    @pytest.mark.parametrize(
        ("path", "headers"),
        [
            ("/ext_authz/orders/1", [(FM, "GET"), (FU, "/public/x")]),
            ("/ext_authz/public/x", [(FM, "DELETE"), (FU, "/orders/1")]),
            ("/ext_authz/orders/1", [(OM, "DELETE"), (OU, "/orders/2")]),
        ],
    )
    def test_envoy_path_and_forwarded_headers_disagreeing_are_refused(
        self, decider: SidecarProcess, path: str, headers: list[tuple[str, str]]
    ) -> None:
        r = decide(decider.decision_port, path, headers, method="DELETE")  # type: ignore[attr-defined]
        assert r.status in (400, 403) and r.json()["reason"] == "conflicting_forwarded"

    @pytest.mark.parametrize(
        "headers",
        [
            [(OM, "GET"), (OU, "/public/x"), (FM, "GET"), (FU, "/public/x")],
            [(FM, "GET"), (FU, "/public/x")],
            [(OM, "get"), (OU, "/public/x")],
        ],
    )
    def test_one_story_told_once_or_twice_is_believed(self, decider: SidecarProcess, headers: Any) -> None:
        assert decide(decider.decision_port, "/auth", headers).status == 200  # type: ignore[attr-defined]


# --- 13. answers a gateway understands ------------------------------------------------------------------


def refusals(issuer: DevIssuer) -> list[tuple[str, bytes, bytes, list[tuple[str, str]], int]]:
    """(reason, method, target, headers, status behind nginx) for every refusal decision mode can give."""
    t = issuer.mint()
    return [
        ("missing_token", b"GET", b"/orders", [], 401),
        ("malformed", b"GET", b"/orders", [("Authorization", "Bearer not.a.jwt")], 401),
        ("expired", b"GET", b"/orders", [bearer(issuer.mint(ttl=-3600))], 401),
        # nginx itself refuses two Authorization headers (400); a second token in the query reaches the sidecar
        ("multiple_tokens", b"GET", b"/orders?access_token=" + t.encode(), [bearer(t)], 403),
        ("insufficient_scope", b"GET", b"/admin/x", [bearer(t)], 403),
        ("route_denied", b"DELETE", b"/orders/1", [bearer(t)], 403),
        ("ambiguous_target", b"GET", b"/admin/x/%2e%2e/%2e%2e/public", [], 403),
        ("ambiguous_target", b"GET", b"/admin/x#/../../public", [bearer(t)], 403),
    ]


class TestEveryDecisionRefusalIsAStatusTheGatewayHandles:
    def test_behind_nginx_each_reason_is_401_or_403_with_its_reason_header(
        self, gateway: dict[str, int], issuer: DevIssuer, upstream: Upstream
    ) -> None:
        upstream.clear()
        for reason, method, target, headers, status in refusals(issuer):
            r = send(gateway["strict"], target, headers, method=method)
            assert (r.status, r.header("X-Auth-Reason")) == (status, reason), (target, r.status, r.headers)
            if status == 401:
                assert (r.header("WWW-Authenticate") or "").startswith('Bearer realm="sidecar"')
        assert reached(upstream) == []

    def test_in_traefik_form_the_proxy_status_is_kept(self, decider: SidecarProcess, issuer: DevIssuer) -> None:
        for reason, method, target, headers, status in refusals(issuer):
            given = [(FM, method.decode()), (FU, target.decode()), *headers]
            r = decide(decider.decision_port, "/auth", given)  # type: ignore[attr-defined]
            expected = 400 if reason in ("multiple_tokens", "ambiguous_target") else status
            assert (r.status, r.header("X-Auth-Reason")) == (expected, reason), (target, r.body)

    @pytest.mark.parametrize("target", [b"/orders", b"/admin/x", b"/orders?x=1"])
    def test_no_keys_is_a_503_with_retry_after_behind_nginx_never_a_500(
        self, gateway: dict[str, int], keyless: SidecarProcess, issuer: DevIssuer, upstream: Upstream, target: bytes
    ) -> None:
        upstream.clear()
        r = send(gateway["keyless"], target, [bearer(issuer.mint())])
        assert r.status == 503 and r.header("Retry-After") == "5"
        assert r.header("X-Auth-Reason") == "keys_unavailable"
        assert send(gateway["keyless"], b"/public/x").status == 200  # public paths need no keys
        assert reached(upstream) == ["/public/x"]


class TestHeadersTheDecisionParserRefusesAreA400BehindNginx:
    @pytest.mark.parametrize("name", ["X-Foo", "Authorization", "Cookie", "Origin", "User-Agent"])
    @pytest.mark.parametrize("byte", [b"\x01", b"\x08", b"\x1b", b"\x7f"])
    def test_a_control_byte_nginx_lets_through_is_never_a_500_and_never_reaches_the_app(
        self, gateway: dict[str, int], upstream: Upstream, name: str, byte: bytes
    ) -> None:
        upstream.clear()
        value = (b"Bearer a" if name == "Authorization" else b"a") + byte + b"b"
        with socket.create_connection(("127.0.0.1", gateway["strict"]), timeout=10) as s:
            s.sendall(
                b"GET /public/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
                + name.encode()
                + b": "
                + value
                + b"\r\n\r\n"
            )
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        assert data.split(b" ", 2)[1] == b"400", data[:200]
        assert reached(upstream) == []


# --- 13. CORS preflights --------------------------------------------------------------------------------

PREFLIGHT_PATHS = [b"/orders", b"/admin/x", b"/public/x", b"/orders/1?x=y"]


def preflight(origin: str, method: str = "GET", headers: str = "authorization") -> list[tuple[str, str]]:
    return [
        ("Origin", origin),
        ("Access-Control-Request-Method", method),
        ("Access-Control-Request-Headers", headers),
    ]


class TestPreflightsInDecisionMode:
    @pytest.mark.parametrize("path", PREFLIGHT_PATHS)
    @pytest.mark.parametrize(("method", "headers"), [("GET", "authorization"), ("DELETE", "content-type"), ("PUT", "")])
    def test_nginx_routes_an_allowed_preflight_to_the_sidecar_and_the_browser_gets_cors_headers(
        self, gateway: dict[str, int], upstream: Upstream, path: bytes, method: str, headers: str
    ) -> None:
        upstream.clear()
        r = send(gateway["strict"], path, preflight(ORIGIN, method, headers), method=b"OPTIONS")
        assert r.status == 204, (r.status, r.headers)
        assert r.header("Access-Control-Allow-Origin") == ORIGIN
        assert method in (r.header("Access-Control-Allow-Methods") or "")
        assert reached(upstream) == []  # the app never sees a preflight

    @pytest.mark.parametrize("path", PREFLIGHT_PATHS)
    @pytest.mark.parametrize(
        "asked",
        [
            preflight("http://evil.example"),
            preflight("null"),
            preflight(ORIGIN + ".evil.example"),
            preflight(ORIGIN, "TRACE"),
            preflight(ORIGIN, "GET", "x-evil"),
        ],
        ids=["foreign-origin", "null-origin", "suffix-origin", "method", "header"],
    )
    def test_nginx_refuses_a_disallowed_preflight_without_cors_headers(
        self, gateway: dict[str, int], upstream: Upstream, path: bytes, asked: list[tuple[str, str]]
    ) -> None:
        upstream.clear()
        r = send(gateway["strict"], path, asked, method=b"OPTIONS")
        assert r.status == 403 and r.header("X-Auth-Reason") == "cors_rejected"
        assert r.header("Access-Control-Allow-Origin") is None
        assert reached(upstream) == []

    @pytest.mark.parametrize("path", [b"/orders", b"/admin/x"])
    def test_an_auth_subrequest_about_a_preflight_is_never_a_2xx(
        self, decider: SidecarProcess, gateway: dict[str, int], upstream: Upstream, path: bytes
    ) -> None:
        # without the preflight route, a 2xx would send an unauthenticated OPTIONS on to the app
        for form in ([(OM, "OPTIONS"), (OU, path.decode())], [(FM, "OPTIONS"), (FU, path.decode())]):
            r = decide(decider.decision_port, "/auth", [*form, *preflight(ORIGIN)])  # type: ignore[attr-defined]
            assert r.status == 401 and r.header("X-Auth-Reason") == "missing_token"
            assert r.header("Access-Control-Allow-Origin") == ORIGIN  # the browser may read why
        r = decide(decider.decision_port, "/ext_authz" + path.decode(), preflight(ORIGIN), method="OPTIONS")  # type: ignore[attr-defined]
        assert r.status == 401

    @pytest.mark.parametrize("path", ["/orders", "/admin/x"])
    def test_a_preflight_routed_straight_to_the_listener_is_answered(self, decider: SidecarProcess, path: str) -> None:
        # what a Traefik router or an Envoy route for preflights sends: the request itself
        r = decide(decider.decision_port, path, preflight(ORIGIN), source="127.0.0.1", method="OPTIONS")  # type: ignore[attr-defined]
        assert r.status == 204 and r.header("Access-Control-Allow-Origin") == ORIGIN
        r = decide(decider.decision_port, path, preflight("http://evil.example"), method="OPTIONS")  # type: ignore[attr-defined]
        assert r.status == 403 and r.header("Access-Control-Allow-Origin") is None

    def test_options_that_is_not_a_preflight_needs_a_token_behind_nginx(
        self, gateway: dict[str, int], issuer: DevIssuer, upstream: Upstream
    ) -> None:
        upstream.clear()
        assert send(gateway["strict"], b"/orders", [("Origin", ORIGIN)], method=b"OPTIONS").status == 401
        assert reached(upstream) == []
        r = send(gateway["strict"], b"/orders", [("Origin", ORIGIN), bearer(issuer.mint())], method=b"OPTIONS")
        assert r.status == 200 and reached(upstream) == ["/orders"]

    @pytest.mark.parametrize(
        ("token_kind", "status"), [("valid", 200), ("expired", 401), ("none", 401), ("narrow", 403)]
    )
    def test_actual_requests_from_an_allowed_origin_carry_cors_headers_behind_nginx(
        self, gateway: dict[str, int], issuer: DevIssuer, token_kind: str, status: int
    ) -> None:
        tokens = {"valid": issuer.mint(scope="admin"), "expired": issuer.mint(ttl=-3600), "narrow": issuer.mint()}
        headers = [("Origin", ORIGIN)] + ([bearer(tokens[token_kind])] if token_kind in tokens else [])
        r = send(gateway["strict"], b"/admin/x", headers)
        assert r.status == status
        assert r.header("Access-Control-Allow-Origin") == ORIGIN
        r = send(gateway["strict"], b"/admin/x", [("Origin", "http://evil.example"), *headers[1:]])
        assert r.status == status and r.header("Access-Control-Allow-Origin") is None

    @pytest.mark.browser
    def test_a_browser_behind_nginx_gets_through_preflight_and_reads_every_answer(
        self, gateway: dict[str, int], issuer: DevIssuer, page: Page, tmp_path: Path
    ) -> None:
        from tests.test_cors_browser import chromium_dom

        page.params.update(
            valid=issuer.mint(sub="browser"),
            expired=issuer.mint(ttl=-3600),
            sidecar=f"http://127.0.0.1:{gateway['strict']}",
        )
        dom = chromium_dom(page.server.url + "/", tmp_path / "profile")
        # the preflight went to the sidecar, the token to the app, and nginx added the CORS headers
        assert "valid:200:Bearer eyJhbG" in dom, dom


OVERRIDES = [
    [("X-HTTP-Method-Override", "DELETE")],
    [("x-http-method", "delete")],  # (nginx itself drops `_` spellings: ignore_invalid_headers)
    [("X-Method-Override", "PATCH, DELETE")],
]


class TestMethodOverridesAreJudgedInDecisionMode:
    """The gateway passes the client's headers to the app: a rule that denies DELETE holds for a POST that
    an override header (or `_method` in the query) turns into a DELETE."""

    @pytest.mark.parametrize("override", OVERRIDES, ids=lambda o: o[0][0])
    def test_an_override_header_naming_a_denied_method_is_refused_behind_nginx(
        self, gateway: dict[str, int], issuer: DevIssuer, upstream: Upstream, override: list[tuple[str, str]]
    ) -> None:
        upstream.clear()
        token = bearer(issuer.mint())
        assert send(gateway["strict"], b"/orders/1", [token], method=b"POST").status == 200
        upstream.clear()
        r = send(gateway["strict"], b"/orders/1", [token, *override], method=b"POST")
        assert r.status == 403 and r.header("X-Auth-Reason"), (r.status, r.headers)
        assert reached(upstream) == []

    @pytest.mark.parametrize("query", ["?_method=DELETE", "?x=1&_method=delete", "?_method=DELETE;a=b"])
    def test_method_in_the_query_naming_a_denied_method_is_refused_behind_nginx(
        self, gateway: dict[str, int], issuer: DevIssuer, upstream: Upstream, query: str
    ) -> None:
        upstream.clear()
        r = send(gateway["strict"], f"/orders/1{query}".encode(), [bearer(issuer.mint())], method=b"POST")
        assert r.status == 403, (r.status, r.headers)
        assert reached(upstream) == []
