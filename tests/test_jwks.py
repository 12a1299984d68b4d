"""Vetting JWKS entries and the key set's retention and revocation, on plain numbers for time."""

from __future__ import annotations

from typing import Any

import pytest
from jwt.algorithms import RSAAlgorithm

from sidecar.config import ASYMMETRIC_ALGS
from sidecar.devtools.issuer import new_key
from sidecar.jwks import InvalidJwks, KeySet, parse_jwks

ALL = frozenset(ASYMMETRIC_ALGS)


def vet(*entries: dict[str, Any], allowed: frozenset[str] = ALL) -> tuple[dict[str | None, Any], dict[str, int]]:
    try:
        keys, ignored = parse_jwks({"keys": list(entries)}, allowed)
    except InvalidJwks:
        return {}, {}
    return keys, dict(ignored)


def test_each_key_type_gets_the_algorithms_its_type_allows() -> None:
    keys, _ = vet(*(new_key(a, kid=a).public_jwk() | {"alg": None} for a in ("RS256", "ES256", "ES384", "EdDSA")))
    assert keys["RS256"].algs == {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
    assert keys["ES256"].algs == {"ES256"} and keys["ES384"].algs == {"ES384"} and keys["EdDSA"].algs == {"EdDSA"}


def test_a_declared_alg_and_the_provider_allowlist_narrow_a_keys_algorithms() -> None:
    keys, _ = vet(new_key("RS256", kid="k").public_jwk(), allowed=frozenset({"RS256", "PS256"}))
    assert keys["k"].algs == {"RS256"}
    _, ignored = vet(new_key("ES256", kid="e").public_jwk(), allowed=frozenset({"RS256"}))
    assert ignored == {}  # nothing usable at all: the whole set is invalid


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (new_key("RS256", kid="w", bits=1024).public_jwk(), "weak"),
        ({"kty": "oct", "kid": "s", "k": "c2VjcmV0"}, "symmetric"),
        (new_key("RS256", kid="e").public_jwk() | {"use": "enc"}, "enc"),
        (new_key("RS256", kid="o").public_jwk() | {"key_ops": ["encrypt"]}, "enc"),
        (new_key("RS256", kid="a").public_jwk() | {"alg": "RSA-OAEP-256"}, "enc"),
        ({"kty": "EC", "kid": "k1", "crv": "secp256k1", "x": "AA", "y": "AA"}, "unsupported"),
        (
            {"kty": "OKP", "kid": "x", "crv": "X25519", "x": "hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo"},
            "unsupported",
        ),
        ({"kty": "RSA", "kid": "bad", "n": "!!", "e": "AQAB"}, "invalid"),
        ({"kid": "nokty"}, "invalid"),
        (new_key("RS256", kid=None).public_jwk() | {"kid": 5}, "invalid"),
        ({"kty": "XYZ", "kid": "u"}, "unsupported"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_unusable_entries_are_ignored_with_a_reason(entry: dict[str, Any], reason: str) -> None:
    good = new_key("ES256", kid="good").public_jwk()
    keys, ignored = vet(good, entry)
    assert list(keys) == ["good"]
    assert ignored == {reason: 1}


def test_private_members_published_by_mistake_are_discarded() -> None:
    key = new_key("RS256", kid="p")
    private = RSAAlgorithm.to_jwk(key.private, as_dict=True) | {"kid": "p"}
    private.pop("key_ops", None)  # PyJWT writes ["sign"], which on its own makes the entry "enc"
    keys, _ = vet(private)
    assert hasattr(keys["p"].public, "verify") and not hasattr(keys["p"].public, "sign")


def test_two_keys_with_one_kid_keep_the_first_and_count_the_second() -> None:
    a, b = new_key("RS256", kid="dup"), new_key("RS256", kid="dup")
    keys, ignored = vet(a.public_jwk(), b.public_jwk())
    assert keys["dup"].public.public_numbers() == a.private.public_key().public_numbers()
    assert ignored == {"invalid": 1}


@pytest.mark.parametrize("doc", [None, [], {"keys": "x"}, {"keys": []}, {"no": 1}])
def test_a_document_that_is_not_a_usable_jwk_set_is_invalid(doc: Any) -> None:
    with pytest.raises(InvalidJwks):
        parse_jwks(doc, ALL)


def test_a_removed_key_is_retained_then_dropped_and_a_revoked_one_never_returns() -> None:
    one, two = (
        parse_jwks({"keys": [new_key("ES256", kid="one").public_jwk()]}, ALL)[0],
        parse_jwks({"keys": [new_key("ES256", kid="two").public_jwk()]}, ALL)[0],
    )
    ks = KeySet(retention=100.0)
    assert ks.replace(one, now=0.0)
    assert ks.replace(two, now=10.0)
    assert ks.get("one", 109.0) is not None and ks.get("one", 110.0) is None
    assert not ks.replace(two, now=20.0)  # same kids: no change
    assert ks.revoke("two") and ks.get("two", 21.0) is None
    ks.replace(two, now=22.0)
    assert ks.get("two", 22.0) is None and len(ks) == 0


def test_a_token_without_kid_uses_the_only_key_or_none() -> None:
    ks = KeySet(retention=0.0)
    ks.replace(parse_jwks({"keys": [new_key("ES256", kid="a").public_jwk()]}, ALL)[0], 0.0)
    assert ks.only_key() is not None
    both = {"keys": [new_key("ES256", kid="a").public_jwk(), new_key("ES256", kid="b").public_jwk()]}
    ks.replace(parse_jwks(both, ALL)[0], 1.0)
    assert ks.only_key() is None
