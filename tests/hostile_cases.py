"""Building blocks for the hostile-input suite: a key ring, a hand-rolled JWS encoder and the case tables.

Tokens are assembled by hand (not through `jwt.encode`) so that a header may lie about its `alg`, carry
non-string members, or be signed by a key of another type: exactly what an attacker can send.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from jwt.algorithms import RSAAlgorithm, get_default_algorithms

from sidecar.devtools.issuer import DevIssuer, SigningKey

AUDIENCE = "demo-api"
ALGS = get_default_algorithms()
DROP = object()  # marks a member to leave out of a header or payload
DEFAULT = object()  # "use the natural value"


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64u_decode(seg: str) -> bytes:
    return base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4))


def _segment(part: dict[str, Any] | str | bytes | Any) -> str:
    if isinstance(part, bytes):
        return b64u(part)
    if isinstance(part, str):
        return b64u(part.encode())
    return b64u(json.dumps(part, separators=(",", ":")).encode())


Signer = Callable[[bytes], bytes]


def with_key(key: SigningKey, alg: str) -> Signer:
    """Sign with a private key using any JWS alg the key type supports (not necessarily key.alg)."""
    return lambda msg: ALGS[alg].sign(msg, key.private)


def with_hmac(secret: bytes, alg: str = "HS256") -> Signer:
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    return lambda msg: hmac.new(secret, msg, digest).digest()


def jws(header: Any, payload: Any, signer: Signer | bytes | None = None) -> str:
    """header.payload.signature; `header`/`payload` may be dicts, raw JSON text or raw bytes."""
    signing_input = f"{_segment(header)}.{_segment(payload)}"
    if signer is None:
        sig = b""
    elif isinstance(signer, bytes):
        sig = signer
    else:
        sig = signer(signing_input.encode())
    return f"{signing_input}.{b64u(sig)}"


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if v is DROP:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def self_signed_cert_der(key: SigningKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attacker")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key.private, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


@dataclass
class Ring:
    """The issuer's published keys and the attacker's unpublished ones."""

    issuer: DevIssuer
    rs: SigningKey  # published RSA key, JWK declares alg RS256 (the issuer's signing key)
    es: SigningKey  # published ES256 key
    ed: SigningKey  # published Ed25519 key
    bare: SigningKey  # published RSA key whose JWK has no `alg` (so RS*/PS* all fit it)
    evil_rs: SigningKey  # never published
    evil_es: SigningKey
    evil_ed: SigningKey
    attacker_url: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def claims(self, **over: Any) -> dict[str, Any]:
        now = int(time.time())
        base = {
            "iss": self.issuer.issuer,
            "aud": AUDIENCE,
            "sub": "alice",
            "iat": now,
            "exp": now + 300,
            "jti": uuid.uuid4().hex,
            "realm_access": {"roles": ["user"]},
        }
        return _merge(base, over)

    def header(self, key: SigningKey, alg: Any = DEFAULT, **over: Any) -> dict[str, Any]:
        """A JOSE header; `alg` may be any JSON value, None (JSON null) or DROP (absent)."""
        base = {"alg": key.alg if alg is DEFAULT else alg, "typ": "JWT", "kid": key.kid}
        return _merge(base, {"alg": alg, **over} if alg is DROP else over)

    def token(
        self, key: SigningKey | None = None, alg: str | None = None, hdr: dict[str, Any] | None = None, **claims: Any
    ) -> str:
        """A correctly signed token from a (published or attacker) key, header and claims overridable."""
        key = key or self.rs
        alg = alg or key.alg
        return jws(self.header(key, alg, **(hdr or {})), self.claims(**claims), with_key(key, alg))

    def signed_payload(self, payload: Any, key: SigningKey | None = None) -> str:
        key = key or self.rs
        return jws(self.header(key), payload, with_key(key, key.alg))

    def rs_public_pem(self, fmt: str = "spki") -> bytes:
        pub = self.rs.private.public_key()
        if fmt == "pkcs1":
            return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
        if fmt == "der":
            return pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def rs_public_jwk(self) -> dict[str, Any]:
        return self.rs.public_jwk()

    def evil_jwk(self) -> dict[str, Any]:
        return {**RSAAlgorithm.to_jwk(self.evil_rs.private.public_key(), as_dict=True), "kid": self.evil_rs.kid}


# --- token helpers used by the case tables ------------------------------------------------------------


def flip_sig_byte(token: str, index: int = 10) -> str:
    h, p, s = token.split(".")
    raw = bytearray(b64u_decode(s))
    raw[index] ^= 0x01
    return f"{h}.{p}.{b64u(bytes(raw))}"


def swap_payload(token: str, other: str) -> str:
    h, _, s = token.split(".")
    return f"{h}.{other.split('.')[1]}.{s}"


def swap_header(token: str, other: str) -> str:
    _, p, s = token.split(".")
    return f"{other.split('.')[0]}.{p}.{s}"
