"""The verified-token cache: exact round trip of what a hit needs, LRU bound, purge by key."""

from __future__ import annotations

import hashlib

from sidecar.token_cache import Digests, TokenCache, VerifiedToken


def d(i: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest()


def entry(i: int, kid: str | None = "k1", provider: int = 0, key: str = "tp1") -> VerifiedToken:
    values = (f"user{i}", None) if i % 2 else (f"u{i}", "a,b")
    return VerifiedToken(provider, kid, 1.8e9 + i, None if i % 3 else 1.7e9, 1.79e9, values, bytes([0, i % 3]), key)


def test_a_hit_returns_exactly_what_was_verified_including_absent_claims() -> None:
    cache = TokenCache(10, 2)
    for i in range(4):
        cache.put(d(i), entry(i))
    for i in range(4):
        assert cache.get(d(i)) == entry(i)
    assert cache.get(d(99)) is None


def test_the_bound_holds_and_the_least_recently_used_goes_first() -> None:
    cache = TokenCache(3, 2)
    for i in range(3):
        cache.put(d(i), entry(i, kid=None))
    cache.get(d(0))  # 0 is now the most recently used
    cache.put(d(3), entry(3, kid=None))
    assert len(cache) == 3 and cache.get(d(1)) is None and cache.get(d(0)) is not None


def test_past_a_large_bound_the_oldest_hundredth_goes_in_one_pass() -> None:
    cache = TokenCache(1000, 2)
    for i in range(1000):
        cache.put(d(i), entry(i))
    cache.get(d(0))
    cache.put(d(1000), entry(1000))
    assert len(cache) == 991  # 1001 entries, then the oldest 1 % (10) in one pass: never above the bound
    assert cache.get(d(0)) is not None and cache.get(d(1000)) is not None
    assert all(cache.get(d(i)) is None for i in range(1, 11)) and cache.get(d(11)) is not None


def test_a_size_of_zero_turns_the_cache_off() -> None:
    cache = TokenCache(0, 2)
    cache.put(d(1), entry(1))
    assert cache.get(d(1)) is None and len(cache) == 0


def test_forgetting_a_key_drops_only_that_providers_tokens_of_that_key() -> None:
    cache = TokenCache(10, 2)
    cache.put(d(1), entry(1, kid="a", key="A"))
    cache.put(d(2), entry(2, kid="b", key="B"))
    cache.put(d(3), entry(3, kid="a", provider=1, key="A"))
    cache.put(d(4), entry(4, kid=None, key="A"))  # the same key, verifying a token without kid
    assert cache.forget_key(0, "A") == 2
    assert cache.get(d(1)) is None and cache.get(d(4)) is None
    assert cache.get(d(2)) is not None and cache.get(d(3)) is not None
    assert cache.forget_key(0, "never-seen") == 0


def test_the_memory_budget_holds_for_tokens_with_large_claims() -> None:
    cache = TokenCache(100_000, 2, max_bytes=1 << 20)
    big = "r" * 4000  # a roles claim of 4 KB
    for i in range(1000):
        cache.put(d(i), VerifiedToken(0, "k", 1.8e9, None, None, (big, None), b""))
    assert cache.size_bytes <= 1 << 20
    assert len(cache) < 300  # the byte budget binds long before the entry bound
    assert cache.get(d(999)) is not None and cache.get(d(0)) is None


def test_a_hit_names_the_exact_key_that_verified_it_with_or_without_kid() -> None:
    cache = TokenCache(10, 2)
    cache.put(d(1), entry(1, kid=None, key="thumb-1"))
    cache.put(d(2), entry(2, kid="k", key="thumb-2"))
    cache.put(d(3), entry(3, kid="k", key="thumb-3"))  # the same kid naming another key later (kid reuse)
    got = [cache.get(d(i)) for i in (1, 2, 3)]
    assert [(g.kid, g.key) for g in got if g] == [(None, "thumb-1"), ("k", "thumb-2"), ("k", "thumb-3")]
    assert cache.forget_key(0, "thumb-2") == 1 and cache.get(d(3)) is not None


def test_an_entry_without_a_key_identity_round_trips_as_none_trusted() -> None:
    cache = TokenCache(10, 0)
    cache.put(d(1), VerifiedToken(0, None, 1.8e9, None, None, ()))
    hit = cache.get(d(1))
    assert hit is not None and hit.key == ""  # "" is never a trusted thumbprint: such a hit is a miss


def test_tokens_that_end_alike_each_get_their_own_digest_and_the_digests_stay_bounded() -> None:
    digests = Digests(bound=8)
    end = "x" * 40
    first, second = "a.b." + end, "a.c." + end  # the same last characters: found by them, compared whole
    for _ in range(3):
        for token in ("", first, second, "short", first, first):
            assert digests[token] == hashlib.sha256(token.encode()).digest()
    for i in range(20):
        assert digests[f"t.{i}.s"] == hashlib.sha256(f"t.{i}.s".encode()).digest()
        assert len(digests) <= 8
