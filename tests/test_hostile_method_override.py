"""Method overrides never get a request past a rule for the method the app will act on.

Against a real `sidecar run` with method-specific rules: a POST carrying an override header (any case, `_`
spelling) or a `_method` query parameter (any reading) is judged as POST and as every method it names. The
app behind may be Rack, Laravel, Symfony, Spring or Express with method-override: all of them would route
the POST as the named method.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from sidecar.devtools.issuer import DevIssuer
from tests.conftest import Upstream, config_process
from tests.support import SidecarProcess, request

RULES = [
    {"name": "no-delete", "prefix": "/api/items", "methods": ["DELETE"], "deny": True},
    {"name": "admin-write", "prefix": "/api/items", "methods": ["PUT", "PATCH"], "scopes": ["admin"]},
    {"name": "open-post", "prefix": "/open", "methods": ["POST"], "public": True},
]


Carrier = Callable[[str], tuple[list[tuple[str, str]], str]]


def header(name: str) -> Carrier:
    return lambda m: ([(name, m)], "")


def param(template: str) -> Carrier:
    return lambda m: ([], template.format(m=m.replace(" ", "+")))


CARRIERS = {
    "X-HTTP-Method-Override": header("X-HTTP-Method-Override"),
    "x-http-method-override": header("x-http-method-override"),
    "X_HTTP_Method_Override": header("X_HTTP_Method_Override"),
    "X-HTTP-Method": header("X-HTTP-Method"),
    "X_HTTP_METHOD": header("X_HTTP_METHOD"),
    "X-Method-Override": header("X-Method-Override"),
    "x_method_override": header("x_method_override"),
    "_method": param("_method={m}"),
    "_METHOD": param("_METHOD={m}"),
    "%5Fmethod": param("%5Fmethod={m}"),
    "_method[]": param("_method[]={m}"),
    "semicolon": param("a=1;_method={m}"),
    "second-of-two": param("_method=POST&_method={m}"),
}


@pytest.fixture(scope="module")
def sidecar(
    issuer: DevIssuer, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SidecarProcess]:
    proc = config_process(issuer, upstream, tmp_path_factory.mktemp("override"), rules=RULES)
    yield proc
    proc.stop()


def post(proc: SidecarProcess, upstream: Upstream, path: str, carrier: str, method: str, token: str | None) -> int:
    headers, query = CARRIERS[carrier](method)
    if token:
        headers.append(("Authorization", f"Bearer {token}"))
    upstream.clear()
    r = request(proc.url, "POST", path + ("?" + query if query else ""), headers=headers, body=b"{}")
    assert r.status < 500
    if r.status != 200:
        assert upstream.record == [], "a refused request reached the app"
    return r.status


@pytest.mark.parametrize("carrier", CARRIERS)
@pytest.mark.parametrize("method", ["DELETE", "delete", " Delete "])
def test_an_overridden_delete_is_refused_where_delete_is_denied(
    carrier: str, method: str, sidecar: SidecarProcess, upstream: Upstream, issuer: DevIssuer
) -> None:
    token = issuer.mint(sub="alice", scope="admin")
    assert post(sidecar, upstream, "/api/items/1", carrier, method, token) == 403


@pytest.mark.parametrize("carrier", CARRIERS)
def test_an_overridden_put_needs_the_put_rules_scope(
    carrier: str, sidecar: SidecarProcess, upstream: Upstream, issuer: DevIssuer
) -> None:
    assert post(sidecar, upstream, "/api/items/1", carrier, "PUT", issuer.mint(sub="alice")) == 403
    assert post(sidecar, upstream, "/api/items/1", carrier, "PUT", issuer.mint(sub="alice", scope="admin")) == 200
    rec = upstream.record[0]
    assert rec["method"] == "POST"  # forwarded as sent: the app acts on the override it was judged under


@pytest.mark.parametrize("carrier", CARRIERS)
def test_an_override_on_a_public_post_needs_what_the_named_method_needs(
    carrier: str, sidecar: SidecarProcess, upstream: Upstream
) -> None:
    assert post(sidecar, upstream, "/open/form", carrier, "DELETE", None) == 401
    assert post(sidecar, upstream, "/open/form", carrier, "POST", None) == 200


def test_without_an_override_the_post_is_judged_as_a_post(sidecar: SidecarProcess, upstream: Upstream) -> None:
    upstream.clear()
    assert request(sidecar.url, "POST", "/open/form?method=DELETE&x_method=DELETE", body=b"{}").status == 200
    assert request(sidecar.url, "POST", "/open/form", headers={"X-Method": "DELETE"}, body=b"{}").status == 200


def test_too_many_overrides_are_a_bad_request(sidecar: SidecarProcess, upstream: Upstream) -> None:
    many = ",".join(f"M{i}" for i in range(20))
    r = request(sidecar.url, "POST", "/open/form", headers={"X-HTTP-Method-Override": many}, body=b"{}")
    assert (r.status, r.json()["reason"]) == (400, "bad_request")


FORMS = {
    "urlencoded": ("application/x-www-form-urlencoded", lambda m: f"title=x&_method={m}".encode()),
    "urlencoded-semicolon": ("application/x-www-form-urlencoded", lambda m: f"title=x;_METHOD={m}".encode()),
    "multipart": (
        "multipart/form-data; boundary=zz",
        lambda m: (
            b'--zz\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'
            + b"x" * 200_000
            + f'\r\n--zz\r\nContent-Disposition: form-data; name="_method"\r\n\r\n{m}\r\n--zz--\r\n'.encode()
        ),
    ),
}


@pytest.mark.parametrize("form", FORMS)
def test_a_method_override_in_a_form_body_is_judged_before_the_app_gets_the_whole_body(
    form: str, sidecar: SidecarProcess, upstream: Upstream, issuer: DevIssuer
) -> None:
    ctype, body = FORMS[form]
    token = issuer.mint(sub="alice")
    for method, status in (("delete", 403), ("PUT", 403), ("POST", 200)):
        upstream.clear()
        headers = [("Content-Type", ctype), ("Authorization", f"Bearer {token}")]
        r = request(sidecar.url, "POST", "/api/items/1", headers=headers, body=body(method))
        assert r.status == status, (method, r.body[:200])
        assert len(upstream.record) == (1 if status == 200 else 0)
    upstream.clear()
    r = request(sidecar.url, "POST", "/open/form", headers=[("Content-Type", ctype)], body=body("DELETE"))
    assert r.status == 401 and upstream.record == []


def test_a_compressed_or_ambiguous_form_body_is_refused(sidecar: SidecarProcess, upstream: Upstream) -> None:
    import gzip

    cases = [
        (
            [("Content-Type", "application/x-www-form-urlencoded"), ("Content-Encoding", "gzip")],
            gzip.compress(b"_method=DELETE"),
        ),
        ([("Content-Type", "multipart/form-data; boundary=a; boundary=b")], b"--b\r\n\r\n--b--\r\n"),
    ]
    for headers, body in cases:
        upstream.clear()
        r = request(sidecar.url, "POST", "/open/form", headers=headers, body=body)
        assert (r.status, r.json()["reason"]) == (400, "bad_request") and upstream.record == []
    upstream.clear()
    headers = [("Content-Type", "application/x-www-form-urlencoded, text/plain")]
    assert request(sidecar.url, "POST", "/open/form", headers=headers, body=b"_method=DELETE").status == 401
