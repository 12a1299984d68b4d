"""Token verification: `jose` reads the token strictly, PyJWT's algorithms check the signature, and this
module makes every other check.

PyJWT's own decoder reads JSON leniently (UTF-16, duplicate members, NaN), reads the wall clock itself and
accepts `"exp": "123"`, so the token is parsed once by `jose.parse`, the signature is checked with PyJWT's
algorithm objects, and every time and type check on registered claims happens here, against the injected
clock. A token without kid is tried against the few keys that fit its alg (`max_kidless_candidates`), and
whatever key verified it, by thumbprint, is what a cache hit is checked against later.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from typing import Any, Final

from jwt.algorithms import Algorithm, get_default_algorithms

from sidecar import errors, jose
from sidecar.clock import Clock
from sidecar.config import ASYMMETRIC_ALGS, Config, Provider
from sidecar.headers import header_safe
from sidecar.jwks import Key
from sidecar.keys.view import KeyView
from sidecar.metrics import Metrics
from sidecar.rules import RuleSet, claim_value
from sidecar.token_cache import Digests, TokenCache, VerifiedToken

# JOSE header parameters that would make a verifier fetch or trust key material named by the token
# itself, or change how the payload is read. We never follow them; `crit`/`b64`/`zip` are refused.
_REFUSED_HEADER = ("crit", "b64", "zip", "enc")


def _seconds(x: float) -> str:
    return f"{x:.0f}s" if abs(x) < 1e12 else f"{x:.3g}s"  # exp: 1e300 must not print 300 digits


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


# Refusals that depend on the token and the key sets alone: the same token is refused the same way until a
# key set changes. Not cached: time (expired, not yet valid...), an unknown kid (a refetch may bring it),
# no usable keys, and anything a reload could change (its verifier is new anyway).
_LASTING: Final = (
    errors.Malformed,
    errors.BadSignature,
    errors.UnsupportedAlg,
    errors.IssuerMismatch,
    errors.AudienceMismatch,
    errors.MissingClaim,
    errors.InvalidClaim,
)
_REFUSALS = 4096  # distinct bad tokens remembered; a flood of distinct ones is bounded by the verify cost
_RECENT = 1024  # token -> digest pairs kept: the tokens in use right now skip the hash


class RefusalCache:
    """Bad tokens seen lately, by digest, so a client (or an attacker) repeating one costs a lookup, not a
    signature check: a flood of one bad token cannot crowd out valid traffic. Cleared whenever a provider's
    key set changes, since a new key may verify what an old one did not."""

    __slots__ = ("_entries", "_keysets", "_metrics")

    def __init__(self, metrics: Metrics) -> None:
        self._entries: dict[bytes, tuple[type[errors.Rejection], str, dict[str, object]]] = {}
        self._keysets: tuple[object, ...] = ()
        self._metrics = metrics

    def _current(self, views: list[KeyView]) -> None:
        keysets = tuple(v.keys for v in views)
        if len(keysets) != len(self._keysets) or any(a is not b for a, b in zip(keysets, self._keysets, strict=True)):
            self._entries.clear()
            self._keysets = keysets

    def check(self, digest: bytes, views: list[KeyView]) -> None:
        """Raises the remembered refusal of this token, if any."""
        if not self._entries:
            return
        self._current(views)
        known = self._entries.get(digest)
        if known is not None:
            kind, description, context = known
            self._metrics.token_cache.labels("refused").inc()
            r = kind(description)
            r.context = dict(context)
            raise r

    def remember(self, digest: bytes, r: errors.Rejection, views: list[KeyView]) -> None:
        if isinstance(r, _LASTING):
            self._current(views)
            if len(self._entries) >= _REFUSALS:
                del self._entries[next(iter(self._entries))]  # the oldest
            self._entries[digest] = (type(r), r.description, dict(r.context))

    def __len__(self) -> int:
        return len(self._entries)


class Verifier:
    def __init__(
        self,
        cfg: Config,
        keys: list[KeyView],
        clock: Clock,
        metrics: Metrics,
        rules: RuleSet,
        cache: TokenCache | None = None,  # a reload passes the last one on when its entries still hold
        *,
        bind: bool = True,
    ) -> None:
        self.cfg = cfg
        self.keys = keys
        self.clock = clock
        self.metrics = metrics
        self.rules = rules
        self._claim_paths = tuple(claim for _, claim in cfg.all_claim_headers)
        if cache is None:
            cache = TokenCache(cfg.token_cache_size, len(self._claim_paths), cfg.token_cache_max_bytes)
        self.cache = cache
        if bind:  # a key view tells one verifier, the requests', which cached tokens its dropped keys verified
            for index, pk in enumerate(keys):
                pk.on_drop = functools.partial(self.cache.forget_key, index)
        self.leeway = cfg.leeway
        self.grace = cfg.expired_grace
        self._by_issuer = {p.issuer: i for i, p in enumerate(cfg.providers)}
        self._max_lifetime = tuple(p.max_token_lifetime for p in cfg.providers)
        self.refused = RefusalCache(metrics)
        # Recent tokens' digests: a SHA-256 costs more than the rest of a cache hit. Bounded like the cache's
        # unpacked entries (at most _RECENT tokens of up to limits.max_token_bytes each are held).
        self._digests = Digests(_RECENT)
        self._hits, self._misses = metrics.token_cache.labels("hit"), metrics.token_cache.labels("miss")
        algorithms = get_default_algorithms()
        self._algorithms: dict[str, Algorithm] = {a: algorithms[a] for a in ASYMMETRIC_ALGS}

    def detached(self, metrics: Metrics) -> Verifier:
        """This verifier's settings, keys and rules with caches of its own and `metrics` to count into: each
        check runs in full, and what it learns reaches neither the requests' caches nor their metrics."""
        return Verifier(self.cfg, self.keys, self.clock, metrics, self.rules, bind=False)

    def forget(self, provider: int, ident: str) -> int:
        """Drop the cached tokens of the keys a kid or thumbprint names (before they are revoked): how many.

        The revocation itself is the pod's fetcher's; the state it publishes drops them in every worker."""
        keys = self.keys[provider].keys.matching(ident, self.clock.monotonic())
        return sum(self.cache.forget_key(provider, k.thumbprint) for k in keys)

    def times(self, t: VerifiedToken, now: float) -> float | None:
        """Seconds past `exp` when accepted inside grace, else None. Raises for expired/nbf/iat/lifetime."""
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
        limit = self._max_lifetime[t.provider]
        if limit:
            # With iat the bound is fixed by the token; without it, exp may be at most that far from now.
            start = now if t.iat is None else t.iat
            if t.exp - start > limit + leeway:
                raise errors.LifetimeTooLong(
                    f"exp is {_seconds(t.exp - start)} after {'now' if t.iat is None else 'iat'}; "
                    f"max_token_lifetime is {limit:g}s"
                )
        past = now - t.exp
        if past <= leeway:
            return None
        if past <= leeway + self.grace:
            return past
        raise errors.Expired(f"expired {past:.0f}s ago (leeway {leeway:g}s, grace {self.grace:g}s)")

    def knows(self, token: str) -> bool:
        """Is this token in the cache? Then it passed every check once, its form (extract.py) included.
        Asked before that form is checked: a token that is not ASCII (it may hold the surrogates of undecodable
        header bytes, which cannot be hashed) was never verified."""
        return token.isascii() and self._digests[token] in self.cache

    def cached(self, token: str) -> tuple[VerifiedToken, float | None] | None:
        """`verify`'s answer without a coroutine when the token is in the cache and its key still trusted (the
        usual request), else None. Raises, as `verify` does, when the cached token's times refuse it."""
        digest = self._digests[token]
        hit = self.cache.get(digest)
        if hit is None:
            return None
        pk = self.keys[hit.provider]
        # The exact key that verified it, not whatever key its kid (or its lack of one) names today.
        if pk.usable() and pk.keys.trusts(hit.key, self.clock.monotonic()):
            self._hits.inc()
            return hit, self._timed(hit)
        self.cache.discard(digest)
        return None

    async def verify(self, token: str) -> tuple[VerifiedToken, float | None]:
        """The verified token and its grace seconds (None unless accepted inside grace)."""
        known = self.cached(token)
        if known is not None:
            return known
        digest = self._digests[token]
        self.refused.check(digest, self.keys)
        self._misses.inc()
        try:
            entry = await self._verify_fully(token)
        except errors.Rejection as r:
            self.refused.remember(digest, r, self.keys)
            raise
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

    def _provider_for(self, claims: Mapping[str, Any]) -> int:
        if len(self.cfg.providers) == 1:
            return 0
        iss = claims.get("iss")
        index = self._by_issuer.get(iss) if isinstance(iss, str) else None
        if index is None:
            raise errors.IssuerMismatch("iss names no configured provider")
        return index

    async def _verify_fully(self, token: str) -> VerifiedToken:
        jws = jose.parse(token)
        header = jws.header
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise errors.Malformed("the token header has no alg")
        for name in _REFUSED_HEADER:
            if name in header:
                raise errors.Malformed(f"the token header uses {name!r}, which this sidecar does not support")
        kid = header.get("kid")
        if "kid" in header and not isinstance(kid, str):
            raise errors.Malformed("kid must be a string")  # `"kid": null` too: absent and null are not one thing
        try:
            return await self._with_header(jws, alg, kid)
        except errors.Rejection as r:
            r.context.update(kid=None if kid is None else kid[:64], alg=alg[:16])
            raise

    async def _with_header(self, jws: jose.Jws, alg: str, kid: str | None) -> VerifiedToken:
        index = self._provider_for(jws.claims)
        provider = self.cfg.providers[index]
        if alg not in provider.algorithms:
            raise errors.UnsupportedAlg(f"alg {alg!r} is not allowed (allowed: {', '.join(provider.algorithms)})")
        pk = self.keys[index]
        if not pk.usable():
            raise errors.KeysUnavailable(f"no usable keys for provider {provider.name!r}")
        if kid is None:
            key = self._kidless(jws, alg, index)
        else:
            named = pk.keys.get(kid, self.clock.monotonic())
            if named is None and await pk.refetch_unknown_kid(kid):
                named = pk.keys.get(kid, self.clock.monotonic())
            if named is None:
                raise errors.UnknownKid("no trusted key has this kid")
            key = named
            if alg not in key.algs:
                raise errors.UnsupportedAlg(f"alg {alg!r} does not fit the {key.kty} key {kid!r}")
            if not self._verifies(alg, key, jws):
                raise errors.BadSignature()
        claims = jws.claims
        for name in provider.required_claims:
            if claims.get(name) is None:
                raise errors.MissingClaim(f"the token has no {name!r} claim")
        try:
            return self._check_claims(claims, provider, index, kid, key)
        except errors.Rejection as r:
            iss = claims.get("iss")
            r.context["iss"] = iss[:200] if isinstance(iss, str) else None
            raise

    def _verifies(self, alg: str, key: Key, jws: jose.Jws) -> bool:
        try:
            return self._algorithms[alg].verify(jws.signing_input, key.public, jws.signature)
        except (ValueError, TypeError):  # a signature of a shape the algorithm cannot even read
            return False

    def _kidless(self, jws: jose.Jws, alg: str, index: int) -> Key:
        """A token without kid: try the keys that fit its alg, at most `max_kidless_candidates` of them."""
        provider = self.cfg.providers[index]
        limit = provider.max_kidless_candidates
        if limit == 0:
            raise errors.UnknownKid("the token has no kid, and this provider requires one (max_kidless_candidates: 0)")
        fitting = self.keys[index].keys.candidates(alg, self.clock.monotonic())
        if not fitting:
            raise errors.UnsupportedAlg(f"the token has no kid and no trusted key fits alg {alg!r}")
        tried = fitting[:limit]
        counter = self.metrics.kidless_attempts
        for key in tried:
            if self._verifies(alg, key, jws):
                counter.labels(provider.name, "verified").inc()
                return key
            counter.labels(provider.name, "failed").inc()
        n = len(tried)
        untried = len(fitting) - n
        # unknown_kid, not bad_signature: no trusted key is this token's key, as for a kid nobody has.
        raise errors.UnknownKid(
            f"no kid; tried {n} candidate key{'s' if n != 1 else ''}; none verified"
            + (f" ({untried} more not tried: max_kidless_candidates is {limit})" if untried else "")
        )

    def _check_claims(
        self, claims: dict[str, Any], provider: Provider, index: int, kid: str | None, key: Key
    ) -> VerifiedToken:
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
            key=key.thumbprint,
        )
