"""Every token form but the verified one is removed: Authorization in any scheme or spacing, `_` twins of
token headers, cookie name variants, `access_token` and configured query names in every reading."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from sidecar.scrub import TokenForms, auth_scheme, fold_param

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln"
FORGED = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJyb290In0."
ALL = ("header", "header:X-Api-Token", "cookie:session", "query:token")
FORMS = TokenForms(ALL, ())


def scrub(
    pairs: list[tuple[str, str]], query: str = "", kept: tuple[str, str] | None = None, forms: TokenForms = FORMS
) -> tuple[list[tuple[str, str]], str]:
    headers = CIMultiDict(pairs)
    q = forms.scrub(headers, query, kept)
    return list(headers.items()), q


@pytest.mark.parametrize(
    "value",
    [
        f"Bearer\t{FORGED}",
        f"Bearer\xa0{FORGED}",
        f"Bearer \t{FORGED}",
        f"bearer{FORGED}",
        f"Token {FORGED}",
        f"JWT {FORGED}",
        f"Basic {FORGED}",
        FORGED,
        f"Bearer {FORGED}",
        f"BEARER  {FORGED}",
        "Basic dXNlcjpwYXNz",
        "Digest username=x",
    ],
)
def test_an_authorization_header_that_was_not_verified_is_removed_whatever_its_scheme(value: str) -> None:
    assert scrub([("Authorization", value), ("Accept", "*/*")]) == ([("Accept", "*/*")], "")


@pytest.mark.parametrize("value", [f"Bearer {TOKEN}", f"bearer   {TOKEN}"])
def test_the_verified_bearer_header_stays(value: str) -> None:
    assert scrub([("Authorization", value)], kept=("header", TOKEN))[0] == [("Authorization", value)]


def test_a_bearer_header_with_another_token_than_the_verified_one_is_removed() -> None:
    assert scrub([("Authorization", f"Bearer {FORGED}")], kept=("cookie:session", TOKEN))[0] == []
    assert scrub([("Authorization", f"Bearer {FORGED}")], kept=("header", TOKEN))[0] == []


def test_passthrough_schemes_reach_the_app_in_their_strict_form_only() -> None:
    forms = TokenForms(ALL, ("Basic",))
    assert scrub([("Authorization", "basic dXNlcjpwYXNz")], forms=forms)[0] == [("Authorization", "basic dXNlcjpwYXNz")]
    assert scrub([("Authorization", "Basic\tdXNlcjpwYXNz")], forms=forms)[0] == []
    assert scrub([("Authorization", f"Token {FORGED}")], forms=forms)[0] == []


@pytest.mark.parametrize("name", ["X-Api-Token", "x-api-token", "X_Api_Token", "x_api-token", "X-API_TOKEN"])
def test_a_token_header_and_its_underscore_twins_are_removed_unless_verified(name: str) -> None:
    assert scrub([(name, FORGED)]) == ([], "")
    kept = ("header:X-Api-Token", TOKEN)
    out = scrub([(name, TOKEN), ("X_Api_Token", FORGED)], kept=kept)[0]
    assert out == ([(name, TOKEN)] if "_" not in name else [])


@pytest.mark.parametrize(
    "cookie",
    [
        f"session={FORGED}",
        f"session ={FORGED}",
        f" session = {FORGED}",
        f'session="{FORGED}"',
        f"Session={FORGED}",
        f"SESSION={FORGED}",
        f"%73ession={FORGED}",
        f"session[]={FORGED}",
        f"session[0]={FORGED}",
        f"theme=dark session={FORGED}",
        f"theme=dark,session={FORGED}",
        f"theme=dark\tsession={FORGED}",
        "session",
    ],
)
def test_every_reading_of_the_token_cookie_is_removed_and_other_cookies_stay(cookie: str) -> None:
    headers, _ = scrub([("Cookie", f"lang=en; {cookie}; a=b")])
    assert headers == [("Cookie", "lang=en; a=b")]


def test_the_verified_cookie_stays_and_a_second_reading_beside_it_goes() -> None:
    kept = ("cookie:session", TOKEN)
    assert scrub([("Cookie", f"session={TOKEN}; lang=en")], kept=kept)[0] == [("Cookie", f"session={TOKEN}; lang=en")]
    out = scrub([("Cookie", f"session={TOKEN}; x=1 session={FORGED}; Session={FORGED}")], kept=kept)[0]
    assert out == [("Cookie", f"session={TOKEN}")]
    assert scrub([("Cookie", f'session="{TOKEN}"')], kept=kept)[0] == [("Cookie", f'session="{TOKEN}"')]


def test_several_cookie_headers_reach_the_app_as_one() -> None:
    out = scrub([("Cookie", "a=1"), ("Cookie", f"session={FORGED}"), ("Cookie", "b=2")])[0]
    assert out == [("Cookie", "a=1; b=2")]


def test_cookies_are_left_alone_when_no_cookie_is_a_token_source() -> None:
    forms = TokenForms(("header",), ())
    assert scrub([("Cookie", f"session={FORGED}")], forms=forms)[0] == [("Cookie", f"session={FORGED}")]


@pytest.mark.parametrize(
    "param",
    [
        f"access_token={FORGED}",
        f"ACCESS_TOKEN={FORGED}",
        f"Access_Token={FORGED}",
        f"access%5Ftoken={FORGED}",
        f"access%5ftoken={FORGED}",
        f"%61ccess_token={FORGED}",
        f"access.token={FORGED}",
        f"access+token={FORGED}",
        f"access%20token={FORGED}",
        f"access_token[]={FORGED}",
        f"access_token[0]={FORGED}",
        f"access_token[x]={FORGED}",
        f"access_token%5B%5D={FORGED}",
        f"access[token={FORGED}",
        f"token={FORGED}",
        f"TOKEN={FORGED}",
        "access_token",
        "access_token=",
    ],
)
def test_every_reading_of_a_token_parameter_is_removed(param: str) -> None:
    assert scrub([], f"a=1&{param}&b=2")[1] == "a=1&b=2"
    assert scrub([], param)[1] == ""


def test_semicolon_separated_parameters_are_judged_one_by_one() -> None:
    assert scrub([], f"a=1;access_token={FORGED}")[1] == "a=1"
    assert scrub([], f"a=1;access_token={FORGED};b=2&c=3")[1] == "a=1;b=2&c=3"
    assert scrub([], "a=1;_method=DELETE")[1] == "a=1;_method=DELETE"


def test_the_verified_query_token_stays_and_nothing_else_changes() -> None:
    q = f"x=%20y&token={TOKEN}&z"
    assert scrub([], q, kept=("query:token", TOKEN))[1] == q
    assert scrub([], f"token={TOKEN}&access_token={FORGED}", kept=("query:token", TOKEN))[1] == f"token={TOKEN}"
    assert scrub([], f"token={TOKEN}", kept=("header", TOKEN))[1] == ""
    assert scrub([], "a=1&&b=%26")[1] == "a=1&&b=%26"


def test_names_fold_like_the_most_lenient_reader() -> None:
    assert fold_param("Access%5FToken[]") == "access_token"
    assert fold_param("access token") == "access_token"
    assert fold_param("access[token") == "access_token"
    assert fold_param("access[token]") == "access"


@pytest.mark.parametrize(
    ("value", "scheme"),
    [("Bearer x", "bearer"), ("Basic x", "basic"), ("Bearer\tx", None), ("Bearer\xa0x", None), ("Basic", "basic")],
)
def test_the_auth_scheme_is_read_strictly(value: str, scheme: str | None) -> None:
    assert auth_scheme(value) == scheme
