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
    return {k.kid: k for k in keys}, dict(ignored)


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


# --- key identity, kid-less keys, strict members, x5c, the X.509 certificate map (issues 9 and 15) ---------

from collections import Counter  # noqa: E402

from sidecar.jwks import thumbprint  # noqa: E402
from tests.support import b64url, certificate_pem, certificate_x5c  # noqa: E402


def parsed(*entries: dict[str, Any]) -> tuple[Any, ...]:
    return parse_jwks({"keys": list(entries)}, ALL)[0]


def test_the_thumbprint_is_rfc_7638s_own_example() -> None:
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3"
        "oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdA"
        "ZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-"
        "kEgU8awapJzKnqDKgw"
    )
    (key,) = parsed({"kty": "RSA", "n": n, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"})
    assert key.thumbprint == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_a_key_has_one_identity_however_the_idp_spells_it() -> None:
    k = new_key("RS256", kid="a")
    jwk = k.public_jwk()
    n = int(k.private.public_key().public_numbers().n).to_bytes(257, "big")  # a leading zero octet (Java style)
    zero_padded_n = jwk | {"kid": "b", "n": b64url(n)}
    a, b = parsed(jwk, zero_padded_n)
    assert a.thumbprint == b.thumbprint == thumbprint(k.private.public_key())


def test_every_kidless_key_is_kept_and_each_is_a_candidate() -> None:
    keys = [new_key(alg, kid=None) for alg in ("RS256", "RS256", "ES256")]
    entries = [{k: v for k, v in key.public_jwk().items() if k not in ("kid", "alg")} for key in keys]
    found = parsed(*entries)
    assert len(found) == 3
    ks = KeySet(retention=0.0)
    ks.replace(found, 0.0)
    assert [k.thumbprint for k in ks.candidates("RS256", 0.0)] == [found[0].thumbprint, found[1].thumbprint]
    assert [k.thumbprint for k in ks.candidates("ES256", 0.0)] == [found[2].thumbprint]
    assert ks.candidates("ES384", 0.0) == []


def test_the_same_kidless_key_published_twice_is_kept_once_and_counted() -> None:
    jwk = {k: v for k, v in new_key("ES256").public_jwk().items() if k != "kid"}
    keys, ignored = parse_jwks({"keys": [jwk, dict(jwk)]}, ALL)
    assert len(keys) == 1 and ignored == Counter({"invalid": 1})


def test_one_key_under_two_kids_answers_to_both() -> None:
    jwk = new_key("ES256", kid="first").public_jwk()
    ks = KeySet(retention=0.0)
    ks.replace(parsed(jwk, jwk | {"kid": "second"}), 0.0)
    first, second = ks.get("first", 0.0), ks.get("second", 0.0)
    assert first is not None and second is not None and first.thumbprint == second.thumbprint
    assert len(ks.candidates("ES256", 0.0)) == 1


@pytest.mark.parametrize(
    "spelling",
    ["padded", "standard alphabet", "stray character"],
)
def test_key_members_must_be_unpadded_base64url(spelling: str) -> None:
    good = new_key("ES256", kid="good").public_jwk()
    jwk = new_key("RS256", kid="odd").public_jwk()
    n = jwk["n"]
    if spelling == "padded":
        jwk["n"] = n + "=" * (-len(n) % 4 or 4)
        jwk["e"] = "AQAB="
    elif spelling == "standard alphabet":
        while "-" not in n and "_" not in n:  # make sure the alphabets differ for this key
            jwk = new_key("RS256", kid="odd").public_jwk()
            n = jwk["n"]
        jwk["n"] = n.replace("-", "+").replace("_", "/")
    else:
        jwk["n"] = n[:10] + "~" + n[10:]
    keys, ignored = vet(good, jwk)
    assert list(keys) == ["good"] and ignored == {"invalid": 1}


def test_an_x5c_chain_must_hold_the_same_key_as_n_and_e() -> None:
    k, other = new_key("RS256", kid="k"), new_key("RS256", kid="o")
    matching = k.public_jwk() | {"x5c": certificate_x5c(k.private)}
    keys, ignored = vet(matching)
    assert list(keys) == ["k"] and ignored == {}
    good = new_key("ES256", kid="good").public_jwk()
    for bad in (
        k.public_jwk() | {"x5c": certificate_x5c(other.private)},  # another key's certificate
        k.public_jwk() | {"x5c": ["not base64!"]},
        k.public_jwk() | {"x5c": []},
    ):
        keys, ignored = vet(good, bad)
        assert list(keys) == ["good"] and ignored == {"invalid": 1}


def test_googles_x509_certificate_map_is_read_by_its_shape() -> None:
    rsa_key, ec_key = new_key("RS256"), new_key("ES256")
    doc = {"a1": certificate_pem(rsa_key.private), "b2": certificate_pem(ec_key.private)}
    keys, ignored = parse_jwks(doc, ALL)
    by_kid = {k.kid: k for k in keys}
    assert by_kid["a1"].kty == "RSA" and by_kid["a1"].algs == {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
    assert by_kid["b2"].algs == {"ES256"} and not ignored
    assert by_kid["a1"].thumbprint == thumbprint(rsa_key.private.public_key())


def test_a_certificate_map_entry_that_is_not_one_certificate_is_ignored() -> None:
    good = certificate_pem(new_key("ES256").private)
    weak = certificate_pem(new_key("RS256", bits=1024).private)
    doc = {"good": good, "two": good + good, "garbage": "-----BEGIN CERTIFICATE-----\nxx\n", "weak": weak}
    keys, ignored = parse_jwks(doc, ALL)
    assert [k.kid for k in keys] == ["good"] and ignored == Counter({"invalid": 2, "weak": 1})


@pytest.mark.parametrize("doc", [{}, {"a": "b"}, {"a": 1}, "x"])
def test_a_document_of_neither_shape_names_both(doc: Any) -> None:
    with pytest.raises(InvalidJwks, match=r"neither a JWK Set .* nor an X\.509 certificate map"):
        parse_jwks(doc, ALL)


def test_a_set_whose_every_key_is_ignored_still_reports_what_was_ignored() -> None:
    weak = new_key("RS256", kid="w", bits=1024).public_jwk()
    with pytest.raises(InvalidJwks) as e:
        parse_jwks({"keys": [weak, {"kty": "oct", "k": "c2VjcmV0"}]}, ALL)
    assert e.value.ignored == Counter({"weak": 1, "symmetric": 1})


def test_a_kidless_key_is_retained_then_dropped_by_thumbprint() -> None:
    one = parsed({k: v for k, v in new_key("ES256").public_jwk().items() if k != "kid"})
    two = parsed({k: v for k, v in new_key("ES256").public_jwk().items() if k != "kid"})
    dropped: list[str] = []
    ks = KeySet(retention=100.0)
    ks.on_drop = dropped.append
    ks.replace(one, 0.0)
    ks.replace(two, 10.0)
    assert ks.trusts(one[0].thumbprint, 109.0) and [k.thumbprint for k in ks.candidates("ES256", 50.0)] == [
        two[0].thumbprint,
        one[0].thumbprint,
    ]
    ks.expire(110.0)
    assert not ks.trusts(one[0].thumbprint, 110.0) and dropped == [one[0].thumbprint]


def test_a_key_is_revoked_by_kid_or_by_thumbprint_and_stays_revoked() -> None:
    a = parsed(new_key("ES256", kid="a").public_jwk())
    b = parsed({k: v for k, v in new_key("ES256").public_jwk().items() if k != "kid"})
    ks = KeySet(retention=100.0)
    ks.replace((*a, *b), 0.0)
    assert ks.revoke(b[0].thumbprint) == [b[0]]
    assert ks.revoke("a") == [a[0]]
    assert not ks.trusts(a[0].thumbprint, 1.0) and not ks.trusts(b[0].thumbprint, 1.0)
    ks.replace((*a, *b), 2.0)  # the IdP still publishes both
    assert len(ks) == 0 and ks.candidates("ES256", 2.0) == []
    assert ks.revoke("never-published") == []


def test_config_revocation_by_thumbprint_keeps_a_kidless_key_out() -> None:
    b = parsed({k: v for k, v in new_key("ES256").public_jwk().items() if k != "kid"})
    ks = KeySet(retention=0.0, revoked=frozenset({b[0].thumbprint}))
    ks.replace(b, 0.0)
    assert len(ks) == 0
