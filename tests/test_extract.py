"""Exactly one bearer token per request, or a precise reason."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

from sidecar import errors
from sidecar.extract import bearer_token, find_token

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
