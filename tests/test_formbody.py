"""Form bodies read in flight: token fields are refused and `_method` values collected, whatever the chunking."""

from __future__ import annotations

import asyncio

import pytest

from sidecar import errors
from sidecar.config import METHOD_OVERRIDE_HEADERS
from sidecar.formbody import MAX_NAME, FormScan, form_kind
from sidecar.override import MethodOverride

OVERRIDE = MethodOverride(METHOD_OVERRIDE_HEADERS, ("_method",))
TOKENS = frozenset({"access_token", "token"})
URLENCODED = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data; boundary=XyZ"


def scan(content_type: str, body: bytes, step: int) -> frozenset[str]:
    judged: list[frozenset[str]] = []

    async def judge(methods: frozenset[str]) -> None:
        judged.append(methods)

    s = FormScan(content_type, TOKENS, OVERRIDE, judge)
    for i in range(0, len(body), step):
        s.feed(body[i : i + step])
    asyncio.run(s.finish())
    return judged[0] if judged else frozenset()


def part(disposition: str, content: bytes, nl: bytes = b"\r\n") -> bytes:
    return b"--XyZ" + nl + b"Content-Disposition: " + disposition.encode() + nl + nl + content + nl


def multipart(*parts: bytes) -> bytes:
    return b"preamble\r\n" + b"".join(parts) + b"--XyZ--\r\nepilogue"


STEPS = [1, 2, 5, 13, 64, 1 << 20]
TOKEN_BODIES = [
    (URLENCODED, b"a=1&access_token=abc"),
    (URLENCODED, b"access%5Ftoken=abc"),
    (URLENCODED, b"a=1;ACCESS_TOKEN=abc"),
    (URLENCODED, b"access_token[]=abc&b=2"),
    (URLENCODED, b"access.token=abc"),
    (URLENCODED, b"token=abc"),
    (URLENCODED, b"access_token"),
    (MULTIPART, multipart(part('form-data; name="access_token"', b"abc"))),
    (MULTIPART, multipart(part("form-data; name=access_token", b"abc"))),
    (MULTIPART, multipart(part('form-data; NAME="Access_Token"', b"abc"))),
    (MULTIPART, multipart(part("form-data; name*=UTF-8''access%5Ftoken", b"abc"))),
    (MULTIPART, multipart(part('form-data; name="x"; name="access_token"', b"abc"))),
    (MULTIPART, multipart(part('form-data; name="a"', b"1"), part('form-data; name="token"', b"abc", nl=b"\n"))),
    ('Multipart/Form-Data; BOUNDARY="XyZ"', multipart(part('form-data; name="access_token[]"', b"abc"))),
]


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize(("ctype", "body"), TOKEN_BODIES)
def test_a_token_field_in_a_form_body_is_refused(ctype: str, body: bytes, step: int) -> None:
    with pytest.raises(errors.BadRequest):
        scan(ctype, body, step)


OVERRIDE_BODIES = [
    (URLENCODED, b"a=1&_method=delete&b=2"),
    (URLENCODED, b"_method=DELETE"),
    (URLENCODED, b"%5Fmethod=+delete+"),
    (URLENCODED, b"x=1;_METHOD=Delete"),
    (MULTIPART, multipart(part('form-data; name="_method"', b"delete"))),
    (
        MULTIPART,
        multipart(
            part('form-data; name="f"; filename="a.txt"', b"x" * 5000), part("form-data; name=_method", b"DELETE")
        ),
    ),
    (MULTIPART, multipart(part('form-data; name="_method"', b"delete", nl=b"\n"))),
]


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize(("ctype", "body"), OVERRIDE_BODIES)
def test_an_override_field_in_a_form_body_is_judged(ctype: str, body: bytes, step: int) -> None:
    assert scan(ctype, body, step) == {"DELETE"}


@pytest.mark.parametrize("step", STEPS)
def test_ordinary_forms_and_file_names_are_left_alone(step: int) -> None:
    body = multipart(
        part('form-data; name="tokenizer"; filename="access_token"', b"access_token=1&_method=DELETE"),
        part('form-data; name="my_token"', b"x"),
    )
    assert scan(MULTIPART, body, step) == frozenset()
    assert scan(URLENCODED, b"my_token=1&method=DELETE&_methods=x", step) == frozenset()


def test_only_form_content_types_are_read() -> None:
    assert form_kind("application/x-www-form-urlencoded; charset=utf-8") == "application/x-www-form-urlencoded"
    assert form_kind("MULTIPART/FORM-DATA; boundary=x") == "multipart/form-data"
    assert form_kind("application/json") is None and form_kind("") is None


def test_memory_is_bounded_by_the_name_cap() -> None:
    with pytest.raises(errors.BadRequest):
        scan(URLENCODED, b"a" * (MAX_NAME + 1), 100)
    assert scan(URLENCODED, b"a=" + b"v" * 100_000, 4096) == frozenset()


def test_the_media_type_ends_where_php_and_rack_end_it() -> None:
    assert form_kind("application/x-www-form-urlencoded, text/plain") == "application/x-www-form-urlencoded"
    assert form_kind(" multipart/form-data boundary=x") == "multipart/form-data"


def test_a_multipart_type_with_two_boundaries_is_refused() -> None:
    async def judge(methods: frozenset[str]) -> None:
        pass

    with pytest.raises(errors.BadRequest):
        FormScan('multipart/form-data; boundary=a; boundary="b"', TOKENS, OVERRIDE, judge)
    FormScan("multipart/form-data; boundary=a; BOUNDARY=a", TOKENS, OVERRIDE, judge)
