"""A corpus of key sets and tokens in the shapes identity providers publish, each with its expected verdict.

Every vector is generated at test time with real keys (nothing is copied from an IdP), served to an
in-process sidecar as its `jwks_file`, and judged through the proxy. The shapes: JWK Sets with and without
`kid`, with `x5c`/`x5t` (Auth0, Entra ID, Okta, Keycloak), Google's X.509 certificate map (service accounts,
Firebase `securetoken`), EC/OKP sets, tokens without `kid` or with only `x5t` (AD FS), padded tokens, keys
spelled in the standard base64 alphabet. docs/interop-keys.md states the decisions these vectors pin.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from sidecar.config import ConfigError, load
from sidecar.devtools.issuer import DevIssuer, SigningKey, new_key
from tests.conftest import MakeSidecar
from tests.support import KeySetServer, b64url, certificate, certificate_pem, certificate_x5c

ISS = "https://idp.example"
AUD = "demo-api"


@dataclass(frozen=True)
class Vector:
    doc: Any  # the key-set document as the IdP publishes it
    token: str
    expect: str | None  # None: accepted; else the failure reason
    detail: str = ""  # a piece the description must contain


class Ring:
    """Keys generated once per module: RSA generation is slow on a shared machine."""

    def __init__(self) -> None:
        self.rs = [new_key("RS256", kid=f"rs{i}") for i in range(6)]
        self.ps = new_key("PS256", kid="ps")
        self.es256, self.es384, self.es512 = (new_key(a, kid=a.lower()) for a in ("ES256", "ES384", "ES512"))
        self.ed = new_key("EdDSA", kid="ed")
        self.weak = new_key("RS256", kid="weak", bits=1024)


def claims() -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISS, "aud": AUD, "sub": "alice", "iat": now, "exp": now + 300}


def token(key: SigningKey, **header: Any) -> str:
    """Signed by `key`; the header carries the key's kid unless told otherwise (`kid=None` drops it)."""
    fields = {"kid": key.kid, **header}
    return jwt.encode(claims(), key.private, algorithm=key.alg, headers={k: v for k, v in fields.items() if v})


def jwk(key: SigningKey, *drop: str, **extra: Any) -> dict[str, Any]:
    return {k: v for k, v in key.public_jwk().items() if k not in drop} | extra


def x5t(key: SigningKey) -> str:
    der = certificate(key.private).public_bytes(Encoding.DER)
    return b64url(hashlib.sha1(der).digest())  # x5t is SHA-1 by definition (RFC 7517 4.8)


def entra(key: SigningKey) -> Vector:
    """Entra ID v1/v2: kid equals x5t, the JWK carries x5t and x5c and no alg; v1 tokens carry both."""
    der = certificate(key.private).public_bytes(Encoding.DER)
    thumb = b64url(hashlib.sha1(der).digest())
    entry = jwk(key, "alg", kid=thumb, x5t=thumb, x5c=[base64.b64encode(der).decode()])
    return Vector({"keys": [entry]}, token(key, kid=thumb, x5t=thumb), None)


def std_alphabet(key: SigningKey) -> dict[str, Any]:
    """The JWK with `n` in the standard base64 alphabet, padded (a key spelled the way RFC 7518 forbids)."""
    n = key.private.public_key().public_numbers().n
    return jwk(key) | {"n": base64.b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).decode()}


def padded(t: str) -> str:
    head, body, sig = t.split(".")
    return ".".join(p + "=" * (-len(p) % 4) for p in (head, body, sig))


def leading_zero(key: SigningKey) -> dict[str, Any]:
    n = key.private.public_key().public_numbers().n
    return jwk(key) | {"n": b64url(b"\x00" + n.to_bytes((n.bit_length() + 7) // 8, "big"))}


VECTORS: dict[str, Callable[[Ring], Vector]] = {
    # JWK Sets with kid (Auth0, Okta, Keycloak, Google's JWK endpoint, Cognito, Dex, ZITADEL, GitLab, GitHub)
    "rsa-kid-alg-use": lambda r: Vector({"keys": [jwk(r.rs[0]), jwk(r.rs[1])]}, token(r.rs[1]), None),
    "rsa-kid-no-alg-no-use": lambda r: Vector({"keys": [jwk(r.rs[0], "alg", "use")]}, token(r.rs[0]), None),
    "rsa-ps256": lambda r: Vector({"keys": [jwk(r.ps)]}, token(r.ps), None),
    "ec-p256": lambda r: Vector({"keys": [jwk(r.es256), jwk(r.rs[0])]}, token(r.es256), None),
    "ec-p384": lambda r: Vector({"keys": [jwk(r.es384)]}, token(r.es384), None),
    "ec-p521": lambda r: Vector({"keys": [jwk(r.es512)]}, token(r.es512), None),
    "okp-ed25519": lambda r: Vector({"keys": [jwk(r.ed)]}, token(r.ed), None),
    "rsa-n-with-leading-zero-octet": lambda r: Vector({"keys": [leading_zero(r.rs[0])]}, token(r.rs[0]), None),
    # x5c / x5t (Auth0, Entra ID v1/v2, Keycloak, AD FS)
    "x5c-matching": lambda r: Vector(
        {"keys": [jwk(r.rs[0], x5c=certificate_x5c(r.rs[0].private), x5t=x5t(r.rs[0]))]}, token(r.rs[0]), None
    ),
    "entra-kid-equals-x5t-token-has-both": lambda r: entra(r.rs[0]),
    "adfs-token-with-x5t-only": lambda r: Vector(
        {"keys": [jwk(r.rs[0], kid=x5t(r.rs[0]), x5t=x5t(r.rs[0])), jwk(r.rs[1])]},
        token(r.rs[0], kid=None, x5t=x5t(r.rs[0])),
        None,
    ),
    "x5c-of-another-key": lambda r: Vector(
        {"keys": [jwk(r.rs[0], x5c=certificate_x5c(r.rs[1].private)), jwk(r.rs[2])]},
        token(r.rs[0]),
        "unknown_kid",
    ),
    # Google's X.509 certificate map (service accounts' x509 metadata, Firebase securetoken)
    "google-x509-map": lambda r: Vector(
        {r.rs[0].kid: certificate_pem(r.rs[0].private), r.rs[1].kid: certificate_pem(r.rs[1].private)},
        token(r.rs[1]),
        None,
    ),
    "google-x509-map-unknown-kid": lambda r: Vector(
        {r.rs[0].kid: certificate_pem(r.rs[0].private)}, token(r.rs[1]), "unknown_kid"
    ),
    "google-x509-map-token-without-kid": lambda r: Vector(
        {r.rs[0].kid: certificate_pem(r.rs[0].private)}, token(r.rs[0], kid=None), None
    ),
    # Tokens without kid
    "single-kidless-key": lambda r: Vector({"keys": [jwk(r.rs[0], "kid")]}, token(r.rs[0], kid=None), None),
    "several-kidless-keys-third-signs": lambda r: Vector(
        {"keys": [jwk(k, "kid") for k in r.rs[:3]]}, token(r.rs[2], kid=None), None
    ),
    "keys-with-kid-token-without": lambda r: Vector(
        {"keys": [jwk(r.es256), jwk(r.rs[0]), jwk(r.rs[1])]}, token(r.rs[1], kid=None), None
    ),
    "kidless-beyond-the-bound": lambda r: Vector(
        {"keys": [jwk(k, "kid") for k in r.rs]},
        token(r.rs[5], kid=None),
        "unknown_kid",
        "no kid; tried 4 candidate keys; none verified (2 more not tried",
    ),
    "kidless-no-key-fits-alg": lambda r: Vector({"keys": [jwk(r.rs[0])]}, token(r.es256, kid=None), "unsupported_alg"),
    # Encodings
    "padded-token": lambda r: Vector({"keys": [jwk(r.rs[0])]}, padded(token(r.rs[0])), "malformed", "padding"),
    "n-in-standard-alphabet-padded": lambda r: Vector(
        {"keys": [std_alphabet(r.rs[0]), jwk(r.rs[1])]}, token(r.rs[0]), "unknown_kid"
    ),
    # Vetting
    "enc-key-beside-sig-key": lambda r: Vector(
        {"keys": [jwk(r.rs[0], use="enc", alg="RSA-OAEP"), jwk(r.rs[1])]}, token(r.rs[0]), "unknown_kid"
    ),
    "rsa-1024-ignored": lambda r: Vector({"keys": [jwk(r.weak), jwk(r.rs[0])]}, token(r.weak), "unknown_kid"),
    "es256-token-naming-an-rsa-key": lambda r: Vector(
        {"keys": [jwk(r.rs[0])]},
        jwt.encode(claims(), r.es256.private, "ES256", headers={"kid": "rs0"}),
        "unsupported_alg",
    ),
}


@pytest.fixture(scope="module")
def ring() -> Ring:
    return Ring()


async def judge(make_sidecar: MakeSidecar, issuer: DevIssuer, tmp_path: Path, v: Vector) -> tuple[str | None, str]:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(v.doc))
    sc = await make_sidecar(issuer, providers=[{"issuer": ISS, "audiences": [AUD], "jwks_file": str(path)}])
    r = await sc.get(token=v.token)
    if r.status == 200:
        return None, ""
    body = await r.json()
    return body["reason"], body["description"]


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # the 1024-bit vector is the point
@pytest.mark.parametrize("name", list(VECTORS))
async def test_interop_vector(
    name: str, ring: Ring, make_sidecar: MakeSidecar, issuer: DevIssuer, tmp_path: Path
) -> None:
    vector = VECTORS[name](ring)
    reason, description = await judge(make_sidecar, issuer, tmp_path, vector)
    assert reason == vector.expect, description
    assert vector.detail in description


async def test_a_key_set_whose_every_key_is_ignored_is_counted_and_never_ready(
    ring: Ring, make_sidecar: MakeSidecar, issuer: DevIssuer, tmp_path: Path
) -> None:
    doc = {"keys": [jwk(ring.weak), std_alphabet(ring.rs[0]), {"kty": "oct", "k": "c2VjcmV0"}]}
    # as a file, such a set is a config error at start (the reasons named); from a URL it is fetched and counted
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=r"no usable key in the set \(ignored: .*weak"):
        load({"providers": [{"issuer": ISS, "audiences": [AUD], "jwks_file": str(path)}]})
    server = KeySetServer()
    server.doc = doc
    try:
        sc = await make_sidecar(
            issuer, wait=False, providers=[{"issuer": ISS, "audiences": [AUD], "jwks_url": server.url}]
        )
        await _all_ignored_is_counted(sc, ring)
    finally:
        server.stop()


async def _all_ignored_is_counted(sc: Any, ring: Ring) -> None:
    pk = sc.state.keys[0]
    assert not (await pk.refresh())["ok"]
    assert "no usable key" in (pk.last_error or "")
    for reason, n in (("weak", 1), ("invalid", 1), ("symmetric", 1)):
        assert sc.metric("sidecar_jwks_keys_ignored_total", provider="default", reason=reason) >= n
    assert (await sc.get(token=token(ring.rs[0]))).status == 503
