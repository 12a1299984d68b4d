"""CORS origins compare byte for byte (Fetch standard), and Access-Control-Allow-Origin only ever names a
listed origin.

Against a real `sidecar run` with exact and wildcard origins and credentials on: every lookalike origin (case,
trailing slash, default port, whitespace, trailing dot, suffix and prefix tricks against the pattern) gets no
CORS headers on a preflight, on the app's answer or on the sidecar's own 401, while the listed origins get
exactly their own value back.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sidecar.devtools.issuer import DevIssuer
from tests.conftest import Upstream, config_process
from tests.support import Reply, SidecarProcess, request

ALLOWED = ["https://app.example.com", "http://localhost:3000", "https://a.example.org", "https://a.b.example.org"]
LOOKALIKES = [
    "https://APP.example.com",
    "https://App.Example.Com",
    "HTTPS://app.example.com",
    "https://app.example.com/",
    "https://app.example.com:443",
    "https://app.example.com.",
    "https://app.example.com\t.evil",
    "https://app.example.com%2f.evil.com",
    "https://app.example.com.evil.com",
    "https://evilapp.example.com",
    "https://app.example.co",
    "http://app.example.com",
    "http://localhost:3000/",
    "http://localhost:03000",
    "http://LOCALHOST:3000",
    "http://localhost",
    "http://127.0.0.1:3000",
    "https://A.example.org",
    "https://a.example.ORG",
    "https://example.org",
    "https://.example.org",
    "https://a..example.org",
    "https://a.example.org:443",
    "https://a.example.org:8443",
    "https://a.example.org.evil.com",
    "https://x.example.org.evil.com",
    "https://evil.com/.example.org",
    "https://evil.com?.example.org",
    "https://evil.com#.example.org",
    "https://evil.com@a.example.org",
    "https://evil.com\\.example.org",
    "https://a_b.example.org",
    "http://a.example.org",
    "null",
    "https://app.example.com, https://evil.com",
    "https://app.example.com https://evil.com",
    "*",
]


@pytest.fixture(scope="module")
def sidecar(
    issuer: DevIssuer, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SidecarProcess]:
    proc = config_process(
        issuer,
        upstream,
        tmp_path_factory.mktemp("cors"),
        cors={
            "origins": ["https://app.example.com", "http://localhost:3000", "https://*.example.org"],
            "allow_credentials": True,
        },
    )
    yield proc
    proc.stop()


def cors_headers(r: Reply) -> dict[str, str]:
    return {k.lower(): v for k, v in r.headers if k.lower().startswith("access-control-")}


def preflight(proc: SidecarProcess, origin: str) -> Reply:
    return request(
        proc.url, "OPTIONS", "/api/x", headers=[("Origin", origin), ("Access-Control-Request-Method", "GET")]
    )


@pytest.mark.parametrize("origin", LOOKALIKES)
def test_a_lookalike_origin_gets_no_cors_headers_anywhere(
    origin: str, sidecar: SidecarProcess, issuer: DevIssuer
) -> None:
    r = preflight(sidecar, origin)
    assert r.status == 403 and cors_headers(r) == {}
    app = request(sidecar.url, path="/public/x", headers=[("Origin", origin)])
    assert app.status == 200 and cors_headers(app) == {}
    own = request(sidecar.url, path="/api/x", headers=[("Origin", origin)])
    assert own.status == 401 and cors_headers(own) == {}
    ok = request(sidecar.url, path="/api/x", headers=[("Origin", origin), ("Authorization", f"Bearer {issuer.mint()}")])
    assert ok.status == 200 and cors_headers(ok) == {}


@pytest.mark.parametrize("origin", ALLOWED)
def test_a_listed_origin_gets_exactly_its_own_value_back(origin: str, sidecar: SidecarProcess) -> None:
    r = preflight(sidecar, origin)
    assert r.status == 204
    assert cors_headers(r)["access-control-allow-origin"] == origin
    assert cors_headers(r)["access-control-allow-credentials"] == "true"
    for path, status in (("/public/x", 200), ("/api/x", 401)):
        resp = request(sidecar.url, path=path, headers=[("Origin", origin)])
        assert resp.status == status and cors_headers(resp)["access-control-allow-origin"] == origin


def test_a_preflight_with_two_origin_headers_is_refused(sidecar: SidecarProcess) -> None:
    r = request(
        sidecar.url,
        "OPTIONS",
        "/api/x",
        headers=[
            ("Origin", "https://app.example.com"),
            ("Origin", "https://evil.com"),
            ("Access-Control-Request-Method", "GET"),
        ],
    )
    assert r.status == 403 and cors_headers(r) == {}


def test_surrounding_whitespace_is_not_part_of_the_origin(sidecar: SidecarProcess) -> None:
    # RFC 9110 §5.5: leading and trailing whitespace is not part of a field value; the parser drops it
    r = request(sidecar.url, path="/public/x", headers=[("Origin", " https://app.example.com\t")])
    assert cors_headers(r)["access-control-allow-origin"] == "https://app.example.com"
