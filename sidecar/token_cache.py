"""Verified tokens, remembered by digest so a repeat costs a hash and a lookup, not an RSA verify.

Entries hold only what a later request needs (provider, kid, the verifying key's thumbprint, times, claim
header values), never the token.
The key is the token's full SHA-256 digest: two tokens share an entry only through a SHA-256 collision.
Expiry, grace and not-before are re-checked by the caller on every hit with the current clock, and a hit
whose exact key (by thumbprint, not by kid: a token without kid has one too) is no longer trusted (revoked,
retention over) is treated as a miss.

Each entry is one packed `bytes` in a plain dict kept in LRU order (a hit moves to the end). Measured with
100,000 entries: about 20 MB, against 58 MB for dataclass entries in cachetools' `LRUCache`, 31 MB for
packed entries there (it keeps a second ordered map per key) and 26 MB in an `OrderedDict` (a linked-list
node per key). The difference decides whether a worker stays under 80 MB RSS. Past the bound the oldest
1 % go in one pass: finding a dict's oldest entry scans the slots deleted before it, and one pass pays
that scan once per hundred evictions instead of once per eviction.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass
from itertools import islice

_HEAD = struct.Struct("<BHdddH")  # provider, (kid, key) index, exp, nbf, iat (NaN: absent), verdict bytes
_ABSENT = "\x01"  # claim values are header-safe (no control characters), so these markers cannot clash
_SEP = "\x00"
_NAN = math.nan


_TAIL = 32  # characters at a token's end (its signature's) that find its remembered digest


class Digests:
    """Recent tokens' SHA-256 digests (the cache's keys), bounded: a SHA-256 costs more than the rest of a hit.

    A token is found by its last 32 characters, then compared whole: looking it up whole would hash all of it
    (~2,000 instructions for an RS256 token, on every request), where a comparison is a memcmp. Two tokens
    that end alike only take each other's place, each compared whole before its digest is used."""

    __slots__ = ("_bound", "_by_tail", "_last", "_last_digest")

    def __init__(self, bound: int) -> None:
        self._bound = bound
        self._by_tail: dict[str, tuple[str, bytes]] = {}
        # the last token asked for, the same object: a request asks for its token's digest twice
        self._last: str | None = None
        self._last_digest = b""

    def __getitem__(self, token: str) -> bytes:
        if token is self._last:
            return self._last_digest
        tail = token[-_TAIL:]
        hit = self._by_tail.get(tail)
        if hit is not None and hit[0] == token:
            digest = hit[1]
        else:
            digest = hashlib.sha256(token.encode()).digest()
            if len(self._by_tail) >= self._bound:
                self._by_tail.clear()
            self._by_tail[tail] = (token, digest)
        self._last, self._last_digest = token, digest
        return digest

    def __len__(self) -> int:
        return len(self._by_tail)


# Not frozen (a frozen init costs three times as much, on every new token and every unpacked hit): nothing
# assigns to one after it is made; requests share the cache's copy.
@dataclass(slots=True)
class VerifiedToken:
    provider: int  # index into config.providers
    kid: str | None
    exp: float | None
    nbf: float | None
    iat: float | None
    claim_values: tuple[str | None, ...]  # aligned with Config.all_claim_headers; None: claim absent
    verdicts: bytes = b""  # one byte per rule, 0 where the token satisfies the rule (rules.verdict)
    key: str = ""  # RFC 7638 thumbprint of the key that verified it; "" never matches a trusted key


# Per entry beyond the packed bytes: the 32-byte digest key and both objects' headers, plus the dict's
# slot (measured: 100,000 entries with 40-byte values take about 20 MB in all).
_OVERHEAD = 160


def _cost(blob: bytes) -> int:
    return len(blob) + _OVERHEAD


def _opt(v: float) -> float | None:
    return None if v != v else v  # NaN marks an absent claim


_HOT = 1024  # entries also kept unpacked: the tokens in use right now hit without unpacking


class TokenCache:
    __slots__ = ("_bytes", "_entries", "_hot", "_ident_index", "_idents", "_max", "_max_bytes", "_values")

    def __init__(self, max_entries: int, claim_values: int = 0, max_bytes: int = 32 << 20) -> None:
        self._entries: dict[bytes, bytes] = {}
        self._max = max_entries
        self._max_bytes = max_bytes  # what entries hold, with the dict's own cost per entry counted in
        self._bytes = 0
        self._values = claim_values
        # (kid, thumbprint) pairs, stored once and named by index in the packed entries
        self._idents: list[tuple[str | None, str]] = []
        self._ident_index: dict[tuple[str | None, str], int] = {}
        # Unpacked copies of recent hits. Valid only while the packed entry is there: a removal from
        # `_entries` (eviction, discard) is seen by `get`, a replacement goes through `discard`.
        self._hot: dict[bytes, VerifiedToken] = {}

    def get(self, digest: bytes) -> VerifiedToken | None:
        blob = self._entries.pop(digest, None)
        if blob is None:
            return None
        self._entries[digest] = blob  # now the most recently used
        hot = self._hot.get(digest)
        if hot is not None:
            return hot
        if len(self._hot) >= _HOT:
            self._hot.clear()  # a cheap bound: the tokens still in use come back on their next hit
        provider, ident, exp, nbf, iat, n = _HEAD.unpack_from(blob)
        at = _HEAD.size + n
        values: tuple[str | None, ...] = ()
        if self._values:
            values = tuple(None if v == _ABSENT else v for v in blob[at:].decode().split(_SEP))
        kid, key = self._idents[ident]
        entry = VerifiedToken(provider, kid, _opt(exp), _opt(nbf), _opt(iat), values, blob[_HEAD.size : at], key)
        self._hot[digest] = entry
        return entry

    def put(self, digest: bytes, entry: VerifiedToken) -> None:
        if self._max <= 0:
            return
        pair = (entry.kid, entry.key)
        ident = self._ident_index.get(pair)
        if ident is None:
            if len(self._idents) > 0xFFFF:
                return  # only trusted keys get here, so this is never reached in practice; stay correct anyway
            ident = self._ident_index[pair] = len(self._idents)
            self._idents.append(pair)
        blob = (
            _HEAD.pack(
                entry.provider,
                ident,
                _NAN if entry.exp is None else entry.exp,
                _NAN if entry.nbf is None else entry.nbf,
                _NAN if entry.iat is None else entry.iat,
                len(entry.verdicts),
            )
            + entry.verdicts
        )
        if self._values:
            blob += _SEP.join(_ABSENT if v is None else v for v in entry.claim_values).encode()
        self.discard(digest)
        self._entries[digest] = blob
        self._bytes += _cost(blob)
        if len(self._entries) > self._max or self._bytes > self._max_bytes:
            self._evict()

    def _evict(self) -> None:
        """The oldest 1 % in one pass; more passes only while the byte budget is still exceeded."""
        while True:
            for old in list(islice(self._entries, max(1, self._max // 100))):
                self._bytes -= _cost(self._entries.pop(old))
                self._hot.pop(old, None)
            if not self._entries or self._bytes <= self._max_bytes:
                return

    def discard(self, digest: bytes) -> None:
        self._hot.pop(digest, None)
        blob = self._entries.pop(digest, None)
        if blob is not None:
            self._bytes -= _cost(blob)

    def forget_key(self, provider: int, thumbprint: str) -> int:
        """Drop every entry one key verified (revoked, or its retention ended). Returns how many went."""
        indexes = {i for i, (_, key) in enumerate(self._idents) if key == thumbprint}
        if not indexes:
            return 0
        doomed = [d for d, b in self._entries.items() if (h := _HEAD.unpack_from(b))[0] == provider and h[1] in indexes]
        for d in doomed:
            self.discard(d)
        return len(doomed)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __contains__(self, digest: object) -> bool:
        return digest in self._entries

    def __len__(self) -> int:
        return len(self._entries)
