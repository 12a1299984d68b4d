"""Unverified tokens never reach the app, in any form a common framework could read one from.

Against a real `sidecar run` in front of a real echo app. Every case sends a forged token (a real token with a
broken signature) in one form: Authorization in any scheme or spacing, a configured header or its `_` twin,
the token cookie under any name reading, `access_token` or a configured query name in any reading. Invariants:
the forged token never appears in anything the app received, the sidecar never answers 5xx, and a valid token
beside it reaches the app exactly as sent, or the request is refused as `multiple_tokens`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from sidecar.devtools.issuer import DevIssuer
from tests.conftest import Upstream, config_process
from tests.support import Reply, SidecarProcess, request

SOURCES = ["header", "header:X-Api-Token", "cookie:session", "query:token"]


@dataclass(frozen=True)
class Form:
    id: str
    headers: tuple[tuple[str, str], ...] = ()
    query: str = ""
    canonical: bool = False  # the sidecar reads it as a token: beside another token, 400 multiple_tokens


def forms(f: str) -> list[Form]:
    return [
        # Authorization: any scheme, any spacing; only `Bearer SP token` is read, everything else is removed
        Form("auth-tab", (("Authorization", f"Bearer\t{f}"),)),
        Form("auth-nbsp-latin1", (("Authorization", f"Bearer\xa0{f}"),)),
        Form("auth-nbsp-utf8", (("Authorization", f"Bearer\xc2\xa0{f}"),)),
        Form("auth-space-tab", (("Authorization", f"Bearer \t{f}"),), canonical=True),
        Form("auth-no-space", (("Authorization", f"Bearer{f}"),)),
        Form("auth-comma", (("Authorization", f"Bearer,{f}"),)),
        Form("auth-token-scheme", (("Authorization", f"Token {f}"),)),
        Form("auth-jwt-scheme", (("Authorization", f"JWT {f}"),)),
        Form("auth-basic-scheme", (("Authorization", f"Basic {f}"),)),
        Form("auth-no-scheme", (("Authorization", f),)),
        Form("auth-lower", (("Authorization", f"bearer {f}"),), canonical=True),
        Form("auth-upper-spaces", (("Authorization", f"BEARER   {f}"),), canonical=True),
        Form("auth-name-lower", (("authorization", f"Bearer {f}"),), canonical=True),
        Form("proxy-authorization", (("Proxy-Authorization", f"Bearer {f}"),)),
        Form("proxy-authorization-twin", (("Proxy_Authorization", f"Bearer {f}"),)),
        # a configured header, and the `_` twins CGI/WSGI servers read as the same variable
        Form("header", (("X-Api-Token", f),), canonical=True),
        Form("header-upper", (("X-API-TOKEN", f),), canonical=True),
        Form("header-underscore", (("X_Api_Token", f),)),
        Form("header-underscore-lower", (("x_api_token", f),)),
        Form("header-mixed", (("X-Api_Token", f),)),
        # the token cookie under every name reading of Starlette, Django, Go, Express, Rack, PHP, SimpleCookie
        Form("cookie", (("Cookie", f"theme=dark; session={f}"),), canonical=True),
        Form("cookie-space-before-eq", (("Cookie", f"session ={f}"),), canonical=True),
        Form("cookie-space-after-eq", (("Cookie", f"session= {f}"),), canonical=True),
        Form("cookie-quoted", (("Cookie", f'session="{f}"'),), canonical=True),
        Form("cookie-case", (("Cookie", f"Session={f}"),)),
        Form("cookie-percent-name", (("Cookie", f"%73ession={f}"),)),
        Form("cookie-php-array", (("Cookie", f"session[]={f}"),)),
        Form("cookie-php-array-encoded", (("Cookie", f"session%5B%5D={f}"),)),
        Form("cookie-whitespace-split", (("Cookie", f"theme=dark session={f}"),)),
        Form("cookie-comma-split", (("Cookie", f"theme=dark,session={f}"),)),
        Form("cookie-second-header", (("Cookie", "theme=dark"), ("Cookie", f"session={f}")), canonical=True),
        Form("cookie-twice", (("Cookie", f"session={f}; session={f}"),), canonical=True),
        # RFC 6750 §2.3 access_token and a configured query name, in every reading
        Form("query-access-token", query=f"access_token={f}", canonical=True),
        Form("query-access-token-encoded", query=f"access%5Ftoken={f}", canonical=True),
        Form("query-access-token-upper", query=f"ACCESS_TOKEN={f}"),
        Form("query-access-token-array", query=f"access_token[]={f}"),
        Form("query-access-token-index", query=f"access_token[0]={f}"),
        Form("query-access-token-dot", query=f"access.token={f}"),
        Form("query-access-token-plus", query=f"access+token={f}"),
        Form("query-semicolon", query=f"a=1;access_token={f}"),
        Form("query-configured", query=f"token={f}", canonical=True),
        Form("query-configured-encoded", query=f"tok%65n={f}", canonical=True),
        Form("query-configured-case", query=f"Token={f}"),
        Form("query-configured-array", query=f"token[]={f}"),
    ]


IDS = [form.id for form in forms("x")]


@pytest.fixture(scope="module")
def sidecar(
    issuer: DevIssuer, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SidecarProcess]:
    proc = config_process(
        issuer,
        upstream,
        tmp_path_factory.mktemp("sources"),
        providers=[
            {
                "issuer": issuer.issuer,
                "audiences": ["demo-api"],
                "jwks_url": f"{issuer.issuer}/jwks.json",
                "token_sources": SOURCES,
            }
        ],
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def stripping(
    issuer: DevIssuer, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SidecarProcess]:
    proc = config_process(
        issuer,
        upstream,
        tmp_path_factory.mktemp("strip"),
        strip_authorization=True,
        authorization_passthrough=["Basic"],
        providers=[
            {
                "issuer": issuer.issuer,
                "audiences": ["demo-api"],
                "jwks_url": f"{issuer.issuer}/jwks.json",
                "token_sources": SOURCES,
            }
        ],
    )
    yield proc
    proc.stop()


def forged_from(valid: str) -> str:
    head, payload, sig = valid.split(".")
    return f"{head}.{payload}.{sig[:-6]}AAAAAA"


def send(proc: SidecarProcess, upstream: Upstream, path: str, form: Form, extra: list[tuple[str, str]]) -> Reply:
    upstream.clear()
    target = path + ("?" + form.query if form.query else "")
    r = request(proc.url, path=target, headers=[*extra, *form.headers])
    assert r.status < 500, r.body[:300]
    return r


def seen(upstream: Upstream) -> str:
    """Everything the app received, as one text: path, query and every header."""
    assert len(upstream.record) <= 1
    rec: dict[str, Any] = upstream.record[0] if upstream.record else {"path": "", "headers": []}
    return rec["path"] + "\n" + "\n".join(f"{k}: {v}" for k, v in rec["headers"])


@pytest.mark.parametrize("index", range(len(IDS)), ids=IDS)
def test_an_unverified_token_in_any_form_never_reaches_a_public_path(
    index: int, sidecar: SidecarProcess, upstream: Upstream, issuer: DevIssuer
) -> None:
    forged = forged_from(issuer.mint(sub="mallory"))
    form = forms(forged)[index]
    r = send(sidecar, upstream, "/public/page", form, [])
    assert r.status == 200 and len(upstream.record) == 1
    assert forged not in seen(upstream)
    assert "x-auth-subject" not in seen(upstream).lower()


@pytest.mark.parametrize("index", range(len(IDS)), ids=IDS)
def test_a_second_token_form_beside_a_valid_token_is_refused_or_removed(
    index: int, sidecar: SidecarProcess, upstream: Upstream, issuer: DevIssuer
) -> None:
    valid = issuer.mint(sub="alice")
    forged = forged_from(issuer.mint(sub="mallory"))
    form = forms(forged)[index]
    # the valid token goes where the forged form is not: a cookie beside Authorization forms, else Authorization
    beside_auth = form.id.startswith("auth-")
    carrier = ("Cookie", f"session={valid}") if beside_auth else ("Authorization", f"Bearer {valid}")
    for path in ("/api/orders", "/public/page"):
        r = send(sidecar, upstream, path, form, [carrier])
        assert forged not in seen(upstream)
        if form.canonical and path == "/api/orders":
            assert (r.status, r.json()["reason"]) == (400, "multiple_tokens") and upstream.record == []
            continue
        assert r.status == 200
        text = seen(upstream)
        assert text.count(valid) == (0 if form.canonical else 1), text
        if not form.canonical:
            assert f"{carrier[0]}: {carrier[1]}" in text and "X-Auth-Subject: alice" in text


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        ([("Authorization", "Bearer {t}")], ""),
        ([("X-Api-Token", "{t}")], ""),
        ([("Cookie", "theme=dark; session={t}")], ""),
        ([("Cookie", 'session="{t}"')], ""),
        ([], "a=1&token={t}"),
    ],
    ids=["authorization", "header", "cookie", "cookie-quoted", "query"],
)
def test_strip_authorization_removes_the_verified_token_from_the_source_it_came_from(
    headers: list[tuple[str, str]], query: str, stripping: SidecarProcess, upstream: Upstream, issuer: DevIssuer
) -> None:
    valid = issuer.mint(sub="alice")
    for path in ("/api/orders", "/public/page"):
        form = Form("x", tuple((k, v.format(t=valid)) for k, v in headers), query.format(t=valid))
        r = send(stripping, upstream, path, form, [])
        assert r.status == 200 and len(upstream.record) == 1
        text = seen(upstream)
        assert valid not in text and "X-Auth-Subject: alice" in text
        assert "theme=dark" in text if "theme" in str(headers) else True
        assert "a=1" in text if query else True


def test_passthrough_schemes_reach_the_app_and_no_other_unverified_scheme_does(
    stripping: SidecarProcess, sidecar: SidecarProcess, upstream: Upstream
) -> None:
    basic = ("Authorization", "Basic dXNlcjpwYXNz")
    send(stripping, upstream, "/public/page", Form("basic", (basic,)), [])
    assert "Authorization: Basic dXNlcjpwYXNz" in seen(upstream)
    send(sidecar, upstream, "/public/page", Form("basic", (basic,)), [])
    assert "authorization" not in seen(upstream).lower()
    send(stripping, upstream, "/public/page", Form("basic-tab", (("Authorization", "Basic\tdXNlcjpwYXNz"),)), [])
    assert "authorization" not in seen(upstream).lower()


def multipart_field(name: str, value: str) -> bytes:
    return f'--b0undary\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n--b0undary--\r\n'.encode()


FORM_BODIES = [
    ("application/x-www-form-urlencoded", lambda f: f"a=1&access_token={f}".encode()),
    ("application/x-www-form-urlencoded", lambda f: f"access%5Ftoken={f}".encode()),
    ("application/x-www-form-urlencoded", lambda f: f"ACCESS_TOKEN[]={f}".encode()),
    ("application/x-www-form-urlencoded; charset=utf-8", lambda f: f"token={f}".encode()),
    ("multipart/form-data; boundary=b0undary", lambda f: multipart_field("access_token", f)),
    ("multipart/form-data; boundary=b0undary", lambda f: multipart_field("Token", f)),
]


@pytest.mark.parametrize(
    ("ctype", "body"), FORM_BODIES, ids=[f"{c.split(';')[0]}-{i}" for i, (c, _) in enumerate(FORM_BODIES)]
)
def test_a_token_in_a_form_body_is_refused_and_never_reaches_the_app(
    ctype: str, body: Any, sidecar: SidecarProcess, upstream: Upstream, issuer: DevIssuer
) -> None:
    forged = forged_from(issuer.mint(sub="mallory"))
    valid = issuer.mint(sub="alice")
    for path, extra in (("/public/form", []), ("/api/form", [("Authorization", f"Bearer {valid}")])):
        upstream.clear()
        r = request(sidecar.url, "POST", path, headers=[("Content-Type", ctype), *extra], body=body(forged))
        assert (r.status, r.json()["reason"]) == (400, "bad_request"), r.body[:200]
        assert upstream.record == []


def test_an_ordinary_form_body_reaches_the_app_intact(sidecar: SidecarProcess, upstream: Upstream) -> None:
    upstream.clear()
    body = b"name=alice&tokenizer=x&my_token=y&" + b"z=" + b"0" * 200_000
    r = request(
        sidecar.url, "POST", "/public/form", headers=[("Content-Type", "application/x-www-form-urlencoded")], body=body
    )
    assert r.status == 200 and upstream.record[0]["body"] == body
    upstream.clear()
    data = multipart_field("file", "x" * 300_000)
    r = request(
        sidecar.url,
        "POST",
        "/public/form",
        headers=[("Content-Type", "multipart/form-data; boundary=b0undary")],
        body=data,
    )
    assert r.status == 200 and upstream.record[0]["body"] == data


def test_two_content_types_on_a_body_are_a_bad_request(sidecar: SidecarProcess, upstream: Upstream) -> None:
    upstream.clear()
    headers = [("Content-Type", "application/json"), ("Content-Type", "application/x-www-form-urlencoded")]
    r = request(sidecar.url, "POST", "/public/form", headers=headers, body=b"access_token=x")
    # aiohttp's parser refuses it before the handler (formbody.content_type would otherwise)
    assert r.status == 400 and upstream.record == []
