"""A provider's trusted keys: vetting JWKS entries, lookup by kid, retention of retired keys, revocation.

Parsing is pure (`parse_jwks`); `KeySet` holds what has been trusted and for how long. Times here are
monotonic seconds from the injected clock, so retention and staleness are tested by moving a fake clock.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
OKP_CURVES = frozenset({"Ed25519", "Ed448"})
MIN_RSA_BITS = 2048
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


class InvalidJwks(ValueError):
    """The document is not a usable JWK Set (counted as fetch result `invalid`)."""


@dataclass(frozen=True, slots=True)
class Key:
    kid: str | None
    kty: str
    algs: frozenset[str]  # algorithms this key may verify: its type's ∩ its `alg` ∩ the provider's allowlist
    public: Any  # a cryptography public key object


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
    public = {k: v for k, v in jwk.items() if k not in _PRIVATE_MEMBERS}
    key: Any
    algs: frozenset[str]
    try:
        if kty == "RSA":
            algs, key = RSA_ALGS, RSAAlgorithm.from_jwk(json.dumps(public))
            if key.key_size < MIN_RSA_BITS:
                return "weak"
        elif kty == "EC":
            crv = public.get("crv")
            if crv not in EC_ALGS:
                return "unsupported"
            algs, key = frozenset({EC_ALGS[crv]}), ECAlgorithm.from_jwk(json.dumps(public))
        elif kty == "OKP":
            if public.get("crv") not in OKP_CURVES:
                return "unsupported"  # X25519/X448 are key-agreement keys
            algs, key = frozenset({"EdDSA"}), OKPAlgorithm.from_jwk(json.dumps(public))
        else:
            return "unsupported"
    except Exception:
        return "invalid"
    declared = jwk.get("alg")
    if declared is not None:
        if not isinstance(declared, str):
            return "invalid"
        if declared.startswith(("RSA-OAEP", "RSA1_5", "ECDH", "A1", "A2", "dir")):
            return "enc"
        algs = algs & {declared}
    algs = algs & allowed
    if not algs:
        return "unsupported"
    if hasattr(key, "public_key") and not hasattr(key, "verify"):
        key = key.public_key()
    return Key(kid=kid, kty=kty, algs=frozenset(algs), public=key)


def parse_jwks(doc: Any, allowed_algs: frozenset[str]) -> tuple[dict[str | None, Key], Counter[str]]:
    """Vet every entry. Raises InvalidJwks when the document is not a JWK Set or holds no usable key."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise InvalidJwks('not a JWK Set (expected {"keys": [...]})')
    keys: dict[str | None, Key] = {}
    ignored: Counter[str] = Counter()
    for entry in doc["keys"]:
        vetted = _vet(entry, allowed_algs)
        if isinstance(vetted, str):
            ignored[vetted] += 1
        elif vetted.kid in keys:
            ignored["invalid"] += 1  # two keys with one kid: neither choice is safe, keep the first
        else:
            keys[vetted.kid] = vetted
    if not keys:
        raise InvalidJwks(f"no usable key in the set (ignored: {dict(ignored) or 'none'})")
    return keys, ignored


class KeySet:
    """Keys currently published, plus retired ones still trusted until their retention ends."""

    __slots__ = ("_current", "_retention", "_retired", "_revoked", "on_drop")

    def __init__(self, retention: float, revoked: frozenset[str] = frozenset()) -> None:
        self._current: dict[str | None, Key] = {}
        self._retired: dict[str | None, tuple[Key, float]] = {}
        self._retention = retention
        self._revoked: set[str] = set(revoked)
        # Told of every kid that stops being trusted, so tokens cached for it are forgotten at once.
        self.on_drop: Callable[[str], object] = lambda _kid: None

    def replace(self, keys: dict[str | None, Key], now: float) -> bool:
        """Install a fresh set; keys that vanished are retained. True when the set of kids changed."""
        keys = {k: v for k, v in keys.items() if k not in self._revoked}
        changed = keys.keys() != self._current.keys()
        for kid, key in self._current.items():
            if kid not in keys and kid not in self._retired:
                if self._retention > 0:
                    self._retired[kid] = (key, now + self._retention)
                elif kid is not None:
                    self.on_drop(kid)
        for kid in keys:
            self._retired.pop(kid, None)
        self._current = keys
        self.expire(now)
        return changed

    def expire(self, now: float) -> None:
        for kid in [k for k, (_, until) in self._retired.items() if until <= now]:
            del self._retired[kid]
            if kid is not None:
                self.on_drop(kid)

    def get(self, kid: str | None, now: float) -> Key | None:
        key = self._current.get(kid)
        if key is not None:
            return key
        retired = self._retired.get(kid)
        if retired is not None and retired[1] > now:
            return retired[0]
        return None

    def only_key(self) -> Key | None:
        """The single trusted key, for tokens without a kid; None when there is not exactly one."""
        return next(iter(self._current.values())) if len(self._current) == 1 and not self._retired else None

    def revoke(self, kid: str) -> bool:
        """Drop a key at once (compromised). It stays refused even if the IdP still publishes it."""
        self._revoked.add(kid)
        found = self._current.pop(kid, None) is not None
        return self._retired.pop(kid, None) is not None or found

    def __len__(self) -> int:
        return len(self._current)

    def describe(self, now: float) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [
            {"kid": k.kid, "kty": k.kty, "algs": sorted(k.algs), "state": "current"} for k in self._current.values()
        ]
        out += [
            {
                "kid": k.kid,
                "kty": k.kty,
                "algs": sorted(k.algs),
                "state": "retired",
                "retained_for": round(until - now, 1),
            }
            for k, until in self._retired.values()
            if until > now
        ]
        return out

    # --- one key set for a pod: the fetcher's set is exported, each worker restores the same set ------

    def export(self) -> tuple[list[str | None], dict[str | None, float], list[str]]:
        """Current kids, retired kids with the monotonic time their trust ends, revoked kids."""
        return list(self._current), {k: until for k, (_, until) in self._retired.items()}, sorted(self._revoked)

    @classmethod
    def restore(
        cls,
        retention: float,
        current: dict[str | None, Key],
        retired: dict[str | None, tuple[Key, float]],
        revoked: frozenset[str],
    ) -> KeySet:
        ks = cls(retention, revoked)
        ks._current = {k: v for k, v in current.items() if k not in revoked}
        ks._retired = {k: v for k, v in retired.items() if k not in revoked}
        return ks

    def trusted_kids(self, now: float) -> set[str | None]:
        return set(self._current) | {k for k, (_, until) in self._retired.items() if until > now}
