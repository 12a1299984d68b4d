"""A provider's trusted keys: vetting key sets, key identity, lookup, retention of retired keys, revocation.

A key set is a JWK Set or Google's X.509 certificate map (kid -> PEM), told apart by shape. Each key's
identity is its RFC 7638 thumbprint, so keys without a kid are tracked, retained and revoked like any other.
Parsing is pure (`parse_jwks`); `KeySet` holds what has been trusted and for how long. Times here are
monotonic seconds from the injected clock, so retention and staleness are tested by moving a fake clock.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_EC_CURVE_ALGS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
OKP_CURVES = frozenset({"Ed25519", "Ed448"})
MIN_RSA_BITS = 2048
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
# Members holding key material, which RFC 7518 section 6 spells in unpadded base64url. PyJWT's decoder
# would also take padding, the standard alphabet and stray characters (it skips them), so we check first.
_KEY_MEMBERS = {"RSA": ("n", "e"), "EC": ("x", "y"), "OKP": ("x",)}
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_PEM_CERT = "-----BEGIN CERTIFICATE-----"


class InvalidJwks(ValueError):
    """The document is not a usable key set (counted as fetch result `invalid`)."""

    def __init__(self, message: str, ignored: Counter[str] | None = None) -> None:
        super().__init__(message)
        self.ignored: Counter[str] = ignored if ignored is not None else Counter()  # still counted by the caller


@dataclass(frozen=True, slots=True)
class Key:
    kid: str | None
    kty: str
    algs: frozenset[str]  # algorithms this key may verify: its type's ∩ its `alg` ∩ the provider's allowlist
    public: Any  # a cryptography public key object
    # RFC 7638 SHA-256 thumbprint, computed from the key itself (not from how the IdP spelled it): the key's
    # identity for the token cache, retention and revocation, with or without a kid.
    thumbprint: str


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def thumbprint(public: Any) -> str:
    """RFC 7638: SHA-256 over the required members, in lexicographic order, without whitespace."""
    members: tuple[str, ...]
    if isinstance(public, rsa.RSAPublicKey):
        jwk, members = RSAAlgorithm.to_jwk(public, as_dict=True), ("e", "kty", "n")
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk, members = ECAlgorithm.to_jwk(public, as_dict=True), ("crv", "kty", "x", "y")
    else:
        jwk, members = OKPAlgorithm.to_jwk(public, as_dict=True), ("crv", "kty", "x")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode()).digest())


def _spki(public: Any) -> bytes:
    der: bytes = public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return der


def _admit(kid: str | None, kty: str, key: Any, declared: Any, allowed: frozenset[str]) -> Key | str:
    """A public key, from a JWK or a certificate, vetted for type, size and algorithms."""
    if hasattr(key, "public_key") and not hasattr(key, "verify"):
        key = key.public_key()
    algs: frozenset[str]
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            return "weak"
        algs = RSA_ALGS
    elif isinstance(key, ec.EllipticCurvePublicKey):
        alg = _EC_CURVE_ALGS.get(key.curve.name)
        if alg is None:
            return "unsupported"
        algs = frozenset({alg})
    elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        algs = frozenset({"EdDSA"})
    else:
        return "unsupported"
    if declared is not None:
        if not isinstance(declared, str):
            return "invalid"
        if declared.startswith(("RSA-OAEP", "RSA1_5", "ECDH", "A1", "A2", "dir")):
            return "enc"
        algs = algs & {declared}
    algs = algs & allowed
    if not algs:
        return "unsupported"
    return Key(kid=kid, kty=kty, algs=frozenset(algs), public=key, thumbprint=thumbprint(key))


def _x5c_key(chain: Any) -> Any:
    """The public key of the first certificate of an `x5c` chain (standard base64 DER), or None."""
    if not isinstance(chain, list) or not chain or not isinstance(chain[0], str):
        return None
    try:
        return x509.load_der_x509_certificate(base64.b64decode(chain[0], validate=True)).public_key()
    except (ValueError, binascii.Error):
        return None


def _vet(jwk: Any, allowed: frozenset[str]) -> Key | str:
    """A usable key, or the reason it is ignored (a `sidecar_jwks_keys_ignored_total` label)."""
    if not isinstance(jwk, dict) or not isinstance(jwk.get("kty"), str):
        return "invalid"
    kty = jwk["kty"]
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        return "invalid"
    if kty == "oct":
        return "symmetric"  # a secret in a public document; never usable for verification
    if jwk.get("use", "sig") != "sig":
        return "enc"
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return "enc"
    if kty not in _KEY_MEMBERS:
        return "unsupported"
    if kty == "EC" and jwk.get("crv") not in EC_ALGS:
        return "unsupported"
    if kty == "OKP" and jwk.get("crv") not in OKP_CURVES:
        return "unsupported"  # X25519/X448 are key-agreement keys
    for member in _KEY_MEMBERS[kty]:
        value = jwk.get(member)
        if not isinstance(value, str) or not _B64URL.fullmatch(value):
            return "invalid"  # padding or the standard alphabet: not base64url (RFC 7518 section 6)
    public = {k: v for k, v in jwk.items() if k not in _PRIVATE_MEMBERS}
    key: Any
    try:
        if kty == "RSA":
            key = RSAAlgorithm.from_jwk(public)
        elif kty == "EC":
            key = ECAlgorithm.from_jwk(public)
        else:
            key = OKPAlgorithm.from_jwk(public)
    except Exception:
        return "invalid"
    if hasattr(key, "public_key") and not hasattr(key, "verify"):
        key = key.public_key()
    if "x5c" in jwk:
        # RFC 7517 section 4.7: the first certificate's key MUST match. An app whose library reads x5c
        # would otherwise verify with a different key than we did.
        cert_key = _x5c_key(jwk["x5c"])
        if cert_key is None or _spki(cert_key) != _spki(key):
            return "invalid"
    return _admit(kid, kty, key, jwk.get("alg"), allowed)


def _vet_certificate(kid: str, pem: Any, allowed: frozenset[str]) -> Key | str:
    """One entry of an X.509 certificate map (Google, Firebase): the certificate is only a key container."""
    if not isinstance(pem, str) or not pem.strip().startswith(_PEM_CERT):
        return "invalid"
    try:
        certs = x509.load_pem_x509_certificates(pem.encode())
    except ValueError:
        return "invalid"
    if len(certs) != 1:
        return "invalid"  # which one would the app use?
    key = certs[0].public_key()
    kty = (
        "RSA"
        if isinstance(key, rsa.RSAPublicKey)
        else "EC"
        if isinstance(key, ec.EllipticCurvePublicKey)
        else "OKP"
        if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
        else "unsupported"
    )
    if kty == "unsupported":
        return "unsupported"
    return _admit(kid, kty, key, None, allowed)


def is_certificate_map(doc: Any) -> bool:
    """Google's x509 metadata shape: {"kid": "-----BEGIN CERTIFICATE-----...", ...}."""
    return (
        isinstance(doc, dict)
        and "keys" not in doc
        and bool(doc)
        and all(isinstance(v, str) for v in doc.values())
        and any(v.lstrip().startswith(_PEM_CERT) for v in doc.values())
    )


def parse_jwks(doc: Any, allowed_algs: frozenset[str]) -> tuple[tuple[Key, ...], Counter[str]]:
    """Vet every entry of a JWK Set or of an X.509 certificate map (told apart by shape).

    Raises InvalidJwks when the document is neither, or holds no usable key; its `ignored` still counts.
    """
    vetted: list[Key | str]
    if isinstance(doc, dict) and isinstance(doc.get("keys"), list):
        vetted = [_vet(entry, allowed_algs) for entry in doc["keys"]]
    elif is_certificate_map(doc):
        vetted = [_vet_certificate(kid, pem, allowed_algs) for kid, pem in doc.items()]
    else:
        raise InvalidJwks(
            'neither a JWK Set ({"keys": [...]}) nor an X.509 certificate map'
            ' ({"kid": "-----BEGIN CERTIFICATE-----..."})'
        )
    keys: list[Key] = []
    kids: set[str] = set()
    kidless: set[str] = set()
    ignored: Counter[str] = Counter()
    for v in vetted:
        if isinstance(v, str):
            ignored[v] += 1
        elif v.kid is not None and v.kid in kids:
            ignored["invalid"] += 1  # two keys with one kid: neither choice is safe, keep the first
        elif v.kid is None and v.thumbprint in kidless:
            ignored["invalid"] += 1  # the same kid-less key twice
        else:
            keys.append(v)
            if v.kid is None:
                kidless.add(v.thumbprint)
            else:
                kids.add(v.kid)
    if not keys:
        raise InvalidJwks(f"no usable key in the set (ignored: {dict(ignored) or 'none'})", ignored)
    return tuple(keys), ignored


class KeySet:
    """Keys currently published, plus retired ones still trusted until their retention ends.

    Keys are identified by thumbprint; a kid is only how a token names one. Revocation takes either.
    """

    __slots__ = ("_by_kid", "_current", "_prints", "_retention", "_retired", "_revoked", "on_drop")

    def __init__(self, retention: float, revoked: Iterable[str] = frozenset()) -> None:
        self._current: tuple[Key, ...] = ()
        self._by_kid: dict[str, Key] = {}
        self._prints: frozenset[str] = frozenset()
        self._retired: dict[str, tuple[Key, float]] = {}  # thumbprint -> (key, monotonic end of retention)
        self._retention = retention
        self._revoked: set[str] = set(revoked)  # kids and thumbprints
        # Told of every key (thumbprint) that stops being trusted, so tokens cached for it are forgotten at once.
        self.on_drop: Callable[[str], object] = lambda _thumbprint: None

    def _is_revoked(self, key: Key) -> bool:
        return key.thumbprint in self._revoked or (key.kid is not None and key.kid in self._revoked)

    def replace(self, keys: Iterable[Key], now: float) -> bool:
        """Install a fresh set; keys that vanished are retained. True when the set of (kid, key) changed."""
        fresh = tuple(k for k in keys if not self._is_revoked(k))
        prints = frozenset(k.thumbprint for k in fresh)
        changed = {(k.kid, k.thumbprint) for k in fresh} != {(k.kid, k.thumbprint) for k in self._current}
        for key in self._current:
            if key.thumbprint not in prints and key.thumbprint not in self._retired:
                if self._retention > 0:
                    self._retired[key.thumbprint] = (key, now + self._retention)
                else:
                    self.on_drop(key.thumbprint)
        for tp in prints:
            self._retired.pop(tp, None)
        self._set_current(fresh)
        self.expire(now)
        return changed

    def _set_current(self, keys: tuple[Key, ...]) -> None:
        self._current = keys
        self._prints = frozenset(k.thumbprint for k in keys)
        self._by_kid = {k.kid: k for k in keys if k.kid is not None}

    def expire(self, now: float) -> None:
        for tp in [tp for tp, (_, until) in self._retired.items() if until <= now]:
            del self._retired[tp]
            self.on_drop(tp)

    def get(self, kid: str | None, now: float) -> Key | None:
        """The key a token's kid names: a current one first, else the retired one retained longest."""
        if kid is None:
            return None
        key = self._by_kid.get(kid)
        if key is not None:
            return key
        retired = [(until, k) for k, until in self._retired.values() if k.kid == kid and until > now]
        return max(retired, key=lambda r: r[0])[1] if retired else None

    def candidates(self, alg: str, now: float) -> list[Key]:
        """Keys that may verify a token without kid: current ones in published order, then retired ones
        (the most recently retired first), each key once."""
        out: list[Key] = []
        seen: set[str] = set()
        retired = sorted(((until, k) for k, until in self._retired.values() if until > now), key=lambda r: -r[0])
        for key in (*self._current, *(k for _, k in retired)):
            if alg in key.algs and key.thumbprint not in seen:
                seen.add(key.thumbprint)
                out.append(key)
        return out

    def trusts(self, thumbprint: str, now: float) -> bool:
        """Is this exact key still trusted (published, or retired and inside its retention)?"""
        if thumbprint in self._prints:
            return True
        retired = self._retired.get(thumbprint)
        return retired is not None and retired[1] > now

    def only_key(self) -> Key | None:
        """The single trusted key; None when there is not exactly one."""
        return self._current[0] if len(self._current) == 1 and not self._retired else None

    def matching(self, ident: str, now: float) -> list[Key]:
        """The trusted keys (current, or retired inside retention) with this kid or thumbprint."""
        retired = [k for k, until in self._retired.values() if until > now]
        return [k for k in (*self._current, *retired) if ident in (k.kid, k.thumbprint)]

    def revoke(self, ident: str) -> list[Key]:
        """Drop the keys with this kid or thumbprint at once (compromised). They stay refused even if the
        IdP still publishes them. Returns the keys dropped; the caller purges what they verified."""
        self._revoked.add(ident)
        dropped = [k for k in self._current if self._is_revoked(k)]
        dropped += [k for k, _ in self._retired.values() if self._is_revoked(k)]
        if dropped:
            self._set_current(tuple(k for k in self._current if not self._is_revoked(k)))
            self._retired = {tp: r for tp, r in self._retired.items() if not self._is_revoked(r[0])}
        return dropped

    def __len__(self) -> int:
        return len(self._current)

    def describe(self, now: float) -> list[dict[str, Any]]:
        def one(k: Key) -> dict[str, Any]:
            return {"kid": k.kid, "thumbprint": k.thumbprint, "kty": k.kty, "algs": sorted(k.algs)}

        out: list[dict[str, Any]] = [one(k) | {"state": "current"} for k in self._current]
        out += [
            one(k) | {"state": "retired", "retained_for": round(until - now, 1)}
            for k, until in self._retired.values()
            if until > now
        ]
        return out

    # --- one key set for a pod: the fetcher's set is exported, each worker restores the same set ------

    def export(self) -> tuple[tuple[Key, ...], dict[str, tuple[Key, float]], list[str]]:
        """Current keys, retired keys (by thumbprint) with the monotonic time their trust ends, revoked
        kids and thumbprints."""
        return self._current, dict(self._retired), sorted(self._revoked)

    @classmethod
    def restore(
        cls,
        retention: float,
        current: Iterable[Key],
        retired: Iterable[tuple[Key, float]],
        revoked: Iterable[str],
    ) -> KeySet:
        ks = cls(retention, revoked)
        ks._set_current(tuple(k for k in current if not ks._is_revoked(k)))
        ks._retired = {k.thumbprint: (k, until) for k, until in retired if not ks._is_revoked(k)}
        return ks

    def trusted_prints(self, now: float) -> set[str]:
        """Thumbprints of every key trusted now: published, or retired inside its retention."""
        return set(self._prints) | {tp for tp, (_, until) in self._retired.items() if until > now}


def to_jwk(key: Key) -> dict[str, Any]:
    """A key's public JWK, as workers rebuild it (`parse_jwks` vets it again, so the same code decides).

    Made from the key itself, whatever the IdP published (JWK or X.509 certificate), in canonical base64url;
    `alg` is kept when the key is limited to one algorithm."""
    algorithm: Any = {"RSA": RSAAlgorithm, "EC": ECAlgorithm, "OKP": OKPAlgorithm}[key.kty]
    jwk: dict[str, Any] = json.loads(algorithm.to_jwk(key.public))
    jwk = {k: v for k, v in jwk.items() if k not in _PRIVATE_MEMBERS}
    if key.kid is not None:
        jwk["kid"] = key.kid
    if len(key.algs) == 1:
        jwk["alg"] = next(iter(key.algs))
    return jwk
