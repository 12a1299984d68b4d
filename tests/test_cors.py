"""The CORS policy: exact and pattern origins, preflight decisions, headers for allowed origins."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from sidecar.config import ConfigError, Cors, load
from sidecar.cors import CorsPolicy


def h(**kw: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({k.replace("_", "-"): v for k, v in kw.items()}))


POLICY = CorsPolicy(Cors(origins=("https://app.example.com", "https://*.preview.example.com")))


def test_exact_and_pattern_origins_are_allowed_and_lookalikes_are_not() -> None:
    assert POLICY.allowed_origin("https://app.example.com")
    assert POLICY.allowed_origin("https://pr-1.preview.example.com")
    assert POLICY.allowed_origin("https://a.b.preview.example.com")
    for bad in (
        "https://app.example.com.evil.com",
        "https://evilapp.example.com",
        "http://app.example.com",
        "null",
        "https://preview.example.com",
        "https://x.preview.example.com.evil",
        "https://evil.com#.preview.example.com",
    ):
        assert not POLICY.allowed_origin(bad), bad


def test_a_preflight_from_an_allowed_origin_gets_the_policy_headers() -> None:
    out = dict(
        POLICY.preflight(
            h(
                Origin="https://app.example.com",
                Access_Control_Request_Method="PUT",
                Access_Control_Request_Headers="authorization, content-type",
            )
        )
        or ()
    )
    assert out["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert out["Access-Control-Allow-Headers"] == "Authorization, Content-Type"
    assert out["Access-Control-Max-Age"] == "600"


def test_a_preflight_is_refused_for_a_method_or_header_outside_the_policy() -> None:
    assert POLICY.preflight(h(Origin="https://app.example.com", Access_Control_Request_Method="TRACE")) is None
    assert (
        POLICY.preflight(
            h(
                Origin="https://app.example.com",
                Access_Control_Request_Method="GET",
                Access_Control_Request_Headers="x-admin",
            )
        )
        is None
    )
    assert POLICY.preflight(h(Origin="https://evil.com", Access_Control_Request_Method="GET")) is None


def test_only_options_with_origin_and_request_method_is_a_preflight() -> None:
    assert CorsPolicy.is_preflight("OPTIONS", h(Origin="x", Access_Control_Request_Method="GET"))
    assert not CorsPolicy.is_preflight("OPTIONS", h(Origin="x"))
    assert not CorsPolicy.is_preflight("GET", h(Origin="x", Access_Control_Request_Method="GET"))


def test_actual_responses_vary_on_origin_and_carry_credentials_when_configured() -> None:
    creds = CorsPolicy(Cors(origins=("https://a.example",), allow_credentials=True, expose_headers=("X-Id",)))
    out = creds.actual("https://a.example")
    assert ("Access-Control-Allow-Credentials", "true") in out and ("Vary", "Origin") in out
    assert ("Access-Control-Expose-Headers", "X-Id") in out
    assert creds.actual("https://other.example") == (("Vary", "Origin"),)
    star = CorsPolicy(Cors(origins=("*",)))
    assert ("Access-Control-Allow-Origin", "*") in star.actual("https://any.example")


def test_origins_compare_byte_for_byte_as_the_fetch_standard_does() -> None:
    policy = CorsPolicy(Cors(origins=("https://app.example.com", "http://localhost:3000", "https://*.example.org")))
    for good in (
        "https://app.example.com",
        "http://localhost:3000",
        "https://a.example.org",
        "https://a.b.example.org",
    ):
        assert policy.allowed_origin(good), good
        assert dict(policy.actual(good))["Access-Control-Allow-Origin"] == good
    for bad in (
        "https://APP.example.com",
        "HTTPS://app.example.com",
        "https://app.example.com/",
        "https://app.example.com:443",
        "https://app.example.com.",
        "https://app.example.com ",
        " https://app.example.com",
        "https://app.example.com, https://evil.com",
        "http://localhost:3000/",
        "http://localhost:03000",
        "http://LOCALHOST:3000",
        "https://A.example.org",
        "https://a.EXAMPLE.org",
        "https://example.org",
        "https://.example.org",
        "https://a.example.org:443",
        "https://a.example.org.evil.com",
        "https://evil.com/.example.org",
        "https://evil.com?.example.org",
        "https://evil.com#.example.org",
        "https://evil.com@a.example.org",
        "http://a.example.org",
        "null",
    ):
        assert not policy.allowed_origin(bad), bad
        assert policy.actual(bad) == (("Vary", "Origin"),), bad


def test_a_preflight_with_two_origins_is_refused() -> None:
    headers = CIMultiDict([("Origin", "https://app.example.com"), ("Origin", "https://evil.com")])
    headers["Access-Control-Request-Method"] = "GET"
    assert POLICY.preflight(CIMultiDictProxy(headers)) is None


@pytest.mark.parametrize(
    ("origin", "problem"),
    [
        ("https://App.example.com", "write 'https://app.example.com'"),
        ("HTTPS://app.example.com", "not an origin"),
        ("https://app.example.com:443", "write 'https://app.example.com'"),
        ("http://localhost:80", "write 'http://localhost'"),
        ("https://app-*.example.com", "leftmost label"),
        ("https://*.*.example.com", "leftmost label"),
        ("https://app.example.com/", "not an origin"),
    ],
)
def test_configured_origins_must_be_what_a_browser_sends(origin: str, problem: str) -> None:
    raw = {
        "providers": [{"issuer": "https://idp", "audiences": ["a"], "jwks_url": "https://idp/jwks"}],
        "cors": {"origins": ["https://ok.example.com", origin]},
    }
    with pytest.raises(ConfigError) as e:
        load(raw)
    assert e.value.path == "cors.origins[1]" and problem in e.value.problem
