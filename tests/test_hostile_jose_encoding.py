"""Issue 9, class 8: one token, one reading. Every token here is signed correctly by a trusted key; only its
encoding is one that the app's JWT library or JSON parser could read differently from the sidecar (or that
Python's lenient decoders would have read at all). Each is refused as `malformed` by a real `sidecar run`,
and never reaches the app, while the same claims in plain UTF-8 JSON pass.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sidecar.devtools.issuer import SigningKey, new_key
from tests.conftest import Upstream
from tests.support import KeySetServer, SidecarProcess, b64url, request, sign_raw

ISS = "https://idp.example"
AUD = "demo-api"


@pytest.fixture(scope="module")
def signer() -> SigningKey:
    return new_key("RS256", kid="main")


@pytest.fixture(scope="module")
def sidecar(signer: SigningKey, upstream: Upstream) -> Iterator[SidecarProcess]:
    keys = KeySetServer()
    keys.doc = {"keys": [signer.public_jwk()]}
    proc = SidecarProcess(
        [
            "--upstream", upstream.url,
            "--jwks-url", keys.url,
            "--issuer", ISS,
            "--audience", AUD,
            "--claim-header", "X-Auth-Subject=sub",
            "--workers", "1",
        ]
    ).start()  # fmt: skip
    yield proc
    proc.stop()
    keys.stop()


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISS, "aud": AUD, "sub": "alice", "iat": now, "exp": now + 300, **extra}


def compact(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


def header(key: SigningKey) -> dict[str, Any]:
    return {"alg": key.alg, "kid": key.kid, "typ": "JWT"}


def token_from(key: SigningKey, head: bytes | None = None, body: bytes | None = None) -> str:
    return sign_raw(
        compact(header(key)).encode() if head is None else head,
        compact(claims()).encode() if body is None else body,
        key.private,
        key.alg,
    )


def splice(payload_json: str, member: str) -> bytes:
    """The claims' JSON with one more raw member text spliced in before the closing brace."""
    return (payload_json[:-1] + "," + member + "}").encode()


Build = Callable[[SigningKey], str]


def body(make: Callable[[], bytes]) -> Build:
    return lambda k: token_from(k, body=make())


def head(make: Callable[[SigningKey], bytes]) -> Build:
    return lambda k: token_from(k, head=make(k))


def member(text: str) -> Build:
    """The plain claims plus one raw member, spelled exactly as given."""
    return body(lambda: splice(compact(claims()), text))


def utf8(obj: dict[str, Any], encoding: str = "utf-8") -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode(encoding)


# (what, build, refused?) — the refused ones share a reason (malformed); the passing ones are the controls.
CASES: list[tuple[str, Build, bool]] = [
    ("utf8-control", lambda k: token_from(k), False),
    ("utf8-pretty-printed-control", body(lambda: json.dumps(claims(), indent=2).encode()), False),
    ("payload-raw-utf8-control", body(lambda: utf8(claims(n="jos\u00e9"))), False),
    ("payload-utf16-le", body(lambda: compact(claims()).encode("utf-16-le")), True),
    ("payload-utf16-be", body(lambda: compact(claims()).encode("utf-16-be")), True),
    ("payload-utf16-with-bom", body(lambda: compact(claims()).encode("utf-16")), True),
    ("payload-utf32-le", body(lambda: compact(claims()).encode("utf-32-le")), True),
    ("header-utf16-le", head(lambda k: compact(header(k)).encode("utf-16-le")), True),
    ("payload-utf8-bom", body(lambda: b"\xef\xbb\xbf" + compact(claims()).encode()), True),
    ("header-utf8-bom", head(lambda k: b"\xef\xbb\xbf" + compact(header(k)).encode()), True),
    ("payload-latin1", body(lambda: utf8(claims(n="jos\u00e9"), "latin-1")), True),
    ("payload-duplicate-sub", member('"sub":"admin"'), True),
    ("payload-duplicate-aud", member('"aud":"other"'), True),
    ("payload-duplicate-exp", member('"exp":1'), True),
    ("payload-duplicate-nested-roles", member('"realm":{"roles":["user"],"roles":["admin"]}'), True),
    ("header-duplicate-alg", head(lambda k: splice(compact(header(k)), '"alg":"none"')), True),
    ("header-duplicate-kid", head(lambda k: splice(compact(header(k)), '"kid":"other"')), True),
    ("payload-lone-high-surrogate", member('"n":"\\ud800"'), True),
    ("payload-lone-low-surrogate", member('"n":"a\\udc00b"'), True),
    ("payload-valid-surrogate-pair", member('"n":"\\ud83d\\ude00"'), False),
    ("payload-NaN", member('"n":NaN'), True),
    ("payload-Infinity", member('"n":Infinity'), True),
    ("payload-minus-Infinity", member('"n":-Infinity'), True),
    ("payload-float-overflow", member('"n":1e400'), True),
    ("payload-nested-40-deep", member('"n":' + "[" * 40 + "]" * 40), True),
    ("payload-nested-8-deep", member('"n":' + "[" * 8 + "]" * 8), False),
    ("payload-array-not-object", body(lambda: b"[1]"), True),
    ("payload-trailing-garbage", body(lambda: compact(claims()).encode() + b"x"), True),
]


def _respell(token: str, part: int, change: Callable[[str], str]) -> str:
    parts = token.split(".")
    parts[part] = change(parts[part])
    return ".".join(parts)


def _with_alphabet_chars(key: SigningKey) -> str:
    """A token whose signature part holds '-' or '_', so the standard alphabet spells it differently."""
    for i in range(200):
        t = sign_raw(compact(header(key)).encode(), compact(claims(jti=str(i))).encode(), key.private, key.alg)
        if "-" in t.split(".")[2] or "_" in t.split(".")[2]:
            return t
    raise AssertionError("no signature with '-' or '_' in 200 tries")


def _next_char(c: str) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return alphabet[alphabet.index(c) + 1]


def _standard_alphabet(part: str) -> str:
    return part.replace("-", "+").replace("_", "/")


# Spellings of a correctly signed token that decode to the same bytes (Python's base64 is lenient).
SPELLINGS: list[tuple[str, Callable[[str], str], str]] = [
    ("signature-padded", lambda t: _respell(t, 2, lambda p: p + "=" * (-len(p) % 4 or 4)), "padding"),
    # '=' inside the token is already refused by extraction (RFC 6750 token68 allows it only at the end)
    ("payload-padded", lambda t: _respell(t, 1, lambda p: p + "=" * (-len(p) % 4 or 4)), "token68"),
    ("signature-standard-alphabet", lambda t: _respell(t, 2, _standard_alphabet), "alphabet"),
    ("signature-stray-tilde", lambda t: _respell(t, 2, lambda p: p[:5] + "~" + p[5:]), "alphabet"),
    ("signature-stray-dot-segment", lambda t: t + ".", "three"),
    ("signature-noncanonical-last-char", lambda t: _respell(t, 2, lambda p: p[:-1] + _next_char(p[-1])), "canonical"),
]


@pytest.mark.parametrize(("build", "refused"), [pytest.param(b, r, id=i) for i, b, r in CASES])
def test_jose_json_that_parsers_read_differently_is_refused(
    build: Build, refused: bool, signer: SigningKey, sidecar: SidecarProcess, upstream: Upstream
) -> None:
    token = build(signer)
    upstream.clear()
    reply = request(sidecar.url, path="/api/x", headers={"Authorization": f"Bearer {token}"})
    if not refused:
        assert reply.status == 200, reply.body
        assert dict(upstream.record[-1]["headers"])["X-Auth-Subject"] == "alice"
        return
    assert reply.status == 401, reply.body
    assert reply.json()["reason"] == "malformed"
    assert (reply.header("WWW-Authenticate") or "").startswith('Bearer realm="sidecar", error="invalid_token"')
    assert upstream.record == []


@pytest.mark.parametrize(("respell", "word"), [pytest.param(r, w, id=i) for i, r, w in SPELLINGS])
def test_a_second_spelling_of_a_valid_token_is_refused_and_says_why(
    respell: Callable[[str], str], word: str, signer: SigningKey, sidecar: SidecarProcess, upstream: Upstream
) -> None:
    token = _with_alphabet_chars(signer)
    assert request(sidecar.url, path="/api/x", headers={"Authorization": f"Bearer {token}"}).status == 200
    upstream.clear()
    reply = request(sidecar.url, path="/api/x", headers={"Authorization": f"Bearer {respell(token)}"})
    assert reply.status == 401, reply.body
    assert reply.json()["reason"] == "malformed"
    assert word in reply.json()["description"]
    assert upstream.record == []


def test_the_refusals_are_counted_and_never_logged_with_the_token(signer: SigningKey, sidecar: SidecarProcess) -> None:
    token = token_from(signer, body=compact(claims()).encode("utf-16-le"))
    before = sidecar.metric("sidecar_auth_failures_total", reason="malformed")
    request(sidecar.url, path="/api/x", headers={"Authorization": f"Bearer {token}"})
    assert sidecar.metric("sidecar_auth_failures_total", reason="malformed") == before + 1
    time.sleep(0.2)
    assert token.split(".")[1] not in sidecar.logs() and b64url(b"alice") not in sidecar.logs()
