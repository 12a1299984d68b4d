"""Verified tokens, remembered by digest so a repeat costs a hash and a dict lookup, not an RSA verify.

Entries hold only what a later request needs (times, provider, kid, rendered claim headers), never the
token. The key is the token's SHA-256 digest: two tokens share an entry only through a SHA-256
collision. Expiry, grace and not-before are re-checked by the caller on every hit with the current clock,
and a hit whose key is no longer trusted (revoked, retention over) is treated as a miss.
"""

from __future__ import annotations

from dataclasses import dataclass

from cachetools import LRUCache


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    provider: int  # index into config.providers
    kid: str | None
    iss: str
    exp: float | None
    nbf: float | None
    iat: float | None
    claim_headers: tuple[tuple[str, str], ...]
    fingerprint: str  # first 12 hex digits of the digest, for logs


class TokenCache:
    __slots__ = ("_lru",)

    def __init__(self, max_entries: int) -> None:
        self._lru: LRUCache[bytes, VerifiedToken] | None = LRUCache(max_entries) if max_entries > 0 else None

    def get(self, digest: bytes) -> VerifiedToken | None:
        return self._lru.get(digest) if self._lru is not None else None

    def put(self, digest: bytes, entry: VerifiedToken) -> None:
        if self._lru is not None:
            self._lru[digest] = entry

    def discard(self, digest: bytes) -> None:
        if self._lru is not None:
            self._lru.pop(digest, None)

    def forget_kid(self, provider: int, kid: str) -> int:
        """Drop every entry verified by one key (the key was revoked). Returns how many went."""
        if self._lru is None:
            return 0
        doomed = [d for d, e in self._lru.items() if e.provider == provider and e.kid == kid]
        for d in doomed:
            del self._lru[d]
        return len(doomed)

    def __len__(self) -> int:
        return len(self._lru) if self._lru is not None else 0
