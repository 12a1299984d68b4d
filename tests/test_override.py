"""Every method a framework could act on instead of the request's own, read from headers and parameters."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from sidecar import errors
from sidecar.config import METHOD_OVERRIDE_HEADERS
from sidecar.override import MethodOverride

READER = MethodOverride(METHOD_OVERRIDE_HEADERS, ("_method",))


def methods(pairs: list[tuple[str, str]] = [], query: str = "", fields: tuple[str, ...] = ()) -> frozenset[str]:  # noqa: B006
    return READER.methods(CIMultiDictProxy(CIMultiDict(pairs)), query, fields)


@pytest.mark.parametrize(
    "name",
    [
        "X-HTTP-Method-Override",
        "x-http-method-override",
        "X_HTTP_Method_Override",
        "X-HTTP-Method",
        "x_http_method",
        "X-Method-Override",
        "X_METHOD_OVERRIDE",
    ],
)
def test_override_headers_in_any_case_and_spelling_name_a_method(name: str) -> None:
    assert methods([(name, " delete ")]) == {"DELETE"}


@pytest.mark.parametrize(
    "query",
    [
        "_method=DELETE",
        "_METHOD=delete",
        "%5Fmethod=DELETE",
        "_method[]=DELETE",
        "a=1;_method=DELETE",
        "a=1&_method=delete&b=2",
        "_method=DELETE%2C",
    ],
)
def test_override_parameters_in_every_reading_name_a_method(query: str) -> None:
    assert methods(query=query) == {"DELETE"}


def test_every_named_method_is_collected_and_too_many_are_refused() -> None:
    assert methods([("X-HTTP-Method-Override", "PUT, DELETE")], "_method=PATCH", ("patch",)) == {
        "PUT",
        "DELETE",
        "PATCH",
    }
    assert methods([("Accept", "DELETE")], "method=DELETE") == frozenset()
    with pytest.raises(errors.BadRequest):
        methods([("X-HTTP-Method", ",".join(f"M{i}" for i in range(9)))])
