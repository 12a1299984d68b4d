"""Token verification: PyJWT checks the JWS; this module adds the checks PyJWT does not make.

PyJWT reads the wall clock itself and accepts `"exp": "123"`, so every time and type check on registered
claims happens here, once, against the injected clock. PyJWT exceptions map 1:1 onto our reasons.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

import jwt
from jwt import exceptions as jex

from sidecar import errors
from sidecar.clock import Clock
from sidecar.config import Config, Provider
from sidecar.headers import header_safe
from sidecar.keys.view import KeyView
from sidecar.metrics import Metrics
from sidecar.rules import RuleSet, claim_value
from sidecar.token_cache import TokenCache, VerifiedToken

# JOSE header parameters that would make a verifier fetch or trust key material named by the token
# itself, or change how the payload is read. We never follow them; `crit`/`b64`/`zip` are refused.
_REFUSED_HEADER = ("crit", "b64", "zip", "enc")
_PYJWT_OPTIONS_BASE = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
}


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    v = claims.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise errors.InvalidClaim(f"{name} must be a NumericDate (a JSON number), got {type(v).__name__}")
    try:
        f = float(v)  # JSON allows integers far beyond a float: 1e400 as an int overflows here
    except OverflowError:
        raise errors.InvalidClaim(f"{name} is out of range") from None
    if not math.isfinite(f):
        raise errors.InvalidClaim(f"{name} is out of range")
    return f


def render(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        out = value
    elif isinstance(value, list) and all(isinstance(x, str) for x in value):
        out = ",".join(value)
    else:
        out = json.dumps(value, separators=(",", ":"), ensure_ascii=True)
    return header_safe(out)


class Verifier:
    def __init__(self, cfg: Config, keys: list[KeyView], clock: Clock, metrics: Metrics, rules: RuleSet) -> None:
        self.cfg = cfg
        self.keys = keys
        self.clock = clock
        self.metrics = metrics
        self.rules = rules
        self._claim_paths = tuple(claim for _, claim in cfg.all_claim_headers)
        self.cache = TokenCache(cfg.token_cache_size, len(self._claim_paths), cfg.token_cache_max_bytes)
        for index, pk in enumerate(keys):
            pk.on_drop = functools.partial(self.cache.forget_kid, index)
        self.leeway = cfg.leeway
        self.grace = cfg.expired_grace
        self._by_issuer = {p.issuer: i for i, p in enumerate(cfg.providers)}
        self._jwt = jwt.PyJWT()
        self._options = [{**_PYJWT_OPTIONS_BASE, "require": list(p.required_claims)} for p in cfg.providers]

    def times(self, t: VerifiedToken, now: float) -> float | None:
        """Seconds past `exp` when accepted inside grace, else None. Raises for expired/nbf/iat."""
        leeway = self.leeway
        if t.nbf is not None and now + leeway < t.nbf:
            raise errors.NotYetValid(f"valid from {t.nbf:.0f}, now {now:.0f} (leeway {leeway:g}s)")
        if t.iat is not None and t.iat > now + leeway:
            self.metrics.future_iat.inc()
            raise errors.IssuedInFuture(
                f"iat {t.iat:.0f} is {t.iat - now:.0f}s ahead of this host (leeway {leeway:g}s)"
            )
        if t.exp is None:
            return None
        past = now - t.exp
        if past <= leeway:
            return None
        if past <= leeway + self.grace:
            return past
        raise errors.Expired(f"expired {past:.0f}s ago (leeway {leeway:g}s, grace {self.grace:g}s)")

    async def verify(self, token: str) -> tuple[VerifiedToken, float | None]:
        """The verified token and its grace seconds (None unless accepted inside grace)."""
        if token.count(".") != 2 or "=" in token:
            # JWS compact form is three unpadded base64url parts. PyJWT tolerates padding, but one token
            # must have one spelling, or the app's JWT library may read it differently than we did.
            raise errors.Malformed("not three unpadded base64url parts (header.payload.signature)")
        digest = hashlib.sha256(token.encode()).digest()
        hit = self.cache.get(digest)
        if hit is not None:
            pk = self.keys[hit.provider]
            if pk.trusted(hit.kid) and pk.usable():
                self.metrics.token_cache.labels("hit").inc()
                return hit, self._timed(hit)
            self.cache.discard(digest)
        self.metrics.token_cache.labels("miss").inc()
        entry = await self._verify_fully(token)
        # Cached before the time check: a genuine token that is expired (a client retrying in a loop) is
        # then refused from the cache, since every hit re-checks the times, instead of by an RSA verify.
        self.cache.put(digest, entry)
        return entry, self._timed(entry)

    def _timed(self, entry: VerifiedToken) -> float | None:
        try:
            return self.times(entry, self.clock.now())
        except errors.Rejection as r:
            r.context = {"kid": entry.kid, "iss": self.cfg.providers[entry.provider].issuer}
            raise

    def _provider_for(self, token: str) -> int:
        if len(self.cfg.providers) == 1:
            return 0
        try:
            iss = self._jwt.decode(token, options={"verify_signature": False}).get("iss")
        except jex.PyJWTError:
            raise errors.Malformed("the token's payload is not a JSON object") from None
        index = self._by_issuer.get(iss) if isinstance(iss, str) else None
        if index is None:
            raise errors.IssuerMismatch("iss names no configured provider")
        return index

    async def _verify_fully(self, token: str) -> VerifiedToken:
        try:
            header = jwt.get_unverified_header(token)
        except jex.PyJWTError:
            raise errors.Malformed("the token is not a JWS compact serialisation (header.payload.signature)") from None
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise errors.Malformed("the token header has no alg")
        for name in _REFUSED_HEADER:
            if name in header:
                raise errors.Malformed(f"the token header uses {name!r}, which this sidecar does not support")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise errors.Malformed("kid must be a string")
        try:
            return await self._with_header(token, alg, kid)
        except errors.Rejection as r:
            r.context.update(kid=None if kid is None else kid[:64], alg=alg[:16])
            raise

    async def _with_header(self, token: str, alg: str, kid: str | None) -> VerifiedToken:
        index = self._provider_for(token)
        provider = self.cfg.providers[index]
        if alg not in provider.algorithms:
            raise errors.UnsupportedAlg(f"alg {alg!r} is not allowed (allowed: {', '.join(provider.algorithms)})")
        pk = self.keys[index]
        if not pk.usable():
            raise errors.KeysUnavailable(f"no usable keys for provider {provider.name!r}")
        key = pk.key_for(kid)
        if key is None and kid is not None and await pk.refetch_unknown_kid(kid):
            key = pk.key_for(kid)
        if key is None:
            raise errors.UnknownKid(
                "no trusted key has this kid" if kid else "the token has no kid and the key set has several keys"
            )
        if alg not in key.algs:
            raise errors.UnsupportedAlg(f"alg {alg!r} does not fit the {key.kty} key {kid!r}")
        try:
            claims = self._jwt.decode(token, key.public, algorithms=[alg], options=self._options[index])  # type: ignore[arg-type]
        except jex.InvalidSignatureError:
            raise errors.BadSignature() from None
        except jex.MissingRequiredClaimError as e:
            raise errors.MissingClaim(f"the token has no {e.claim!r} claim") from None
        except (jex.InvalidAlgorithmError, jex.InvalidKeyError):
            raise errors.UnsupportedAlg(f"alg {alg!r} cannot be used with this key") from None
        except jex.PyJWTError:
            raise errors.Malformed("the token's payload is not a JSON object") from None
        try:
            return self._check_claims(claims, provider, index, kid)
        except errors.Rejection as r:
            iss = claims.get("iss")
            r.context["iss"] = iss[:200] if isinstance(iss, str) else None
            raise

    def _check_claims(self, claims: dict[str, Any], provider: Provider, index: int, kid: str | None) -> VerifiedToken:
        exp, nbf, iat = _number(claims, "exp"), _number(claims, "nbf"), _number(claims, "iat")
        iss = claims.get("iss")
        if iss is None:
            raise errors.MissingClaim("the token has no 'iss' claim")
        if not isinstance(iss, str):
            raise errors.InvalidClaim("iss must be a string")
        if iss != provider.issuer:
            raise errors.IssuerMismatch(f"iss is not {provider.issuer!r}")
        aud = claims.get("aud")
        if aud is None:
            raise errors.MissingClaim("the token has no 'aud' claim")
        auds = [aud] if isinstance(aud, str) else aud
        if not isinstance(auds, list) or not all(isinstance(a, str) for a in auds):
            raise errors.InvalidClaim("aud must be a string or an array of strings")
        if not any(a in provider.audiences for a in auds):
            raise errors.AudienceMismatch(f"aud names none of: {', '.join(provider.audiences)}")
        for name in ("sub", "jti", "azp", "scope"):
            if name in claims and not isinstance(claims[name], str):
                raise errors.InvalidClaim(f"{name} must be a string")
        return VerifiedToken(
            provider=index,
            kid=kid,
            exp=exp,
            nbf=nbf,
            iat=iat,
            claim_values=tuple(render(claim_value(claims, path)) for path in self._claim_paths),
            verdicts=self.rules.verdicts(claims, provider.name),
        )
