"""Exactly one bearer token per request, or a precise reason."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

from sidecar import errors
from sidecar.extract import bearer_token, find_token, is_b64token

NO_QUERY: MultiDictProxy[str] = MultiDictProxy(MultiDict())


def extract(*auth: str, query: dict[str, str] | None = None, limit: int = 8192) -> str:
    headers = CIMultiDict[str]()
    for a in auth:
        headers.add("Authorization", a)
    q = MultiDictProxy(MultiDict(query or {}))
    return bearer_token(CIMultiDictProxy(headers), q, limit)


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_bearer_scheme_matches_case_insensitively(scheme: str) -> None:
    assert extract(f"{scheme} abc.def.ghi") == "abc.def.ghi"


@pytest.mark.parametrize(
    ("auth", "query", "reason"),
    [
        ((), None, "missing_token"),
        (("Basic dXNlcjpwYXNz",), None, "missing_token"),
        ((), {"access_token": "a.b.c"}, "missing_token"),
        (("Bearer a.b.c", "Bearer d.e.f"), None, "multiple_tokens"),
        (("Bearer a.b.c",), {"access_token": "a.b.c"}, "multiple_tokens"),
        (("Bearer",), None, "malformed"),
        (("Bearer a.b.c extra",), None, "malformed"),
        (("Bearer a.b.c\x00",), None, "malformed"),
        (("Bearer " + "a" * 9000,), None, "token_too_large"),
    ],
)
def test_anything_but_one_bearer_token_gets_its_reason(
    auth: tuple[str, ...], query: dict[str, str] | None, reason: str
) -> None:
    with pytest.raises(errors.Rejection) as e:
        extract(*auth, query=query)
    assert e.value.reason == reason


@pytest.mark.parametrize("value", ["Bearer\ta.b.c", "Bearer\xa0a.b.c", "bearer,a.b.c", "BEARER"])
def test_bearer_without_a_space_before_the_token_is_no_token_and_says_so(value: str) -> None:
    with pytest.raises(errors.Rejection) as e:
        extract(value)
    assert e.value.reason in ("missing_token", "malformed")
    if e.value.reason == "missing_token":
        assert "followed by a space" in (e.value.description or "")


@pytest.mark.parametrize("cookie", ["session=a.b.c", "session =a.b.c", " session = a.b.c ", 'session="a.b.c"'])
def test_the_cookie_name_is_trimmed_as_frameworks_trim_it(cookie: str) -> None:
    headers = CIMultiDictProxy(CIMultiDict({"Cookie": f"theme=dark; {cookie}"}))
    assert find_token(headers, NO_QUERY, ("cookie:session",), 8192) == ("a.b.c", "cookie:session")


def test_two_trimmed_readings_of_the_token_cookie_are_two_tokens() -> None:
    headers = CIMultiDictProxy(CIMultiDict({"Cookie": "session=a.b.c; session =d.e.f"}))
    with pytest.raises(errors.MultipleTokens):
        find_token(headers, NO_QUERY, ("cookie:session",), 8192)


# RFC 6750 §2.1, as its grammar reads: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_RFC6750_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


@given(st.text(alphabet="Aa9-._~+/=%, \t\x00\x7f\u00e9\u20ac\U0001d11e", max_size=12))
def test_the_token_character_check_is_the_rfc_6750_grammar(token: str) -> None:
    # the check is a byte-table deletion, for speed: it must accept exactly what the grammar accepts
    assert is_b64token(token) == (_RFC6750_B64TOKEN.fullmatch(token) is not None)


@pytest.mark.parametrize("token", ["a=b", "=", "ab==c", "a b", "ab\u00e9", "a\x00"])
def test_a_token_outside_the_b64token_grammar_is_malformed(token: str) -> None:
    headers = CIMultiDictProxy(CIMultiDict(Authorization=f"Bearer {token}"))
    with pytest.raises(errors.Malformed):
        find_token(headers, MultiDictProxy(MultiDict()), ("header",), 4096)


def test_a_token_known_to_the_verifier_skips_only_the_character_check() -> None:
    # the verifier's cache holds only tokens that passed every check: re-checking 600 characters on every
    # hit was 5 % of a proxied request. Emptiness, size and the number of tokens are still checked.
    headers = CIMultiDictProxy(CIMultiDict(Authorization="Bearer a.b.c"))
    seen: list[str] = []

    def known(token: str) -> bool:
        seen.append(token)
        return True

    assert find_token(headers, MultiDictProxy(MultiDict()), ("header",), 4096, known) == ("a.b.c", "header")
    assert seen == ["a.b.c"]
    with pytest.raises(errors.TokenTooLarge):
        find_token(headers, MultiDictProxy(MultiDict()), ("header",), 3, known)
