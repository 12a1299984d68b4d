"""A refused CORS preflight says which part the policy does not allow: the origin, the method or a header."""

from __future__ import annotations

import pytest

from sidecar.devtools.issuer import DevIssuer
from tests.conftest import ORIGIN, MakeSidecar


@pytest.mark.parametrize(
    ("headers", "words"),
    [
        ({"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}, "origin 'https://evil.example'"),
        ({"Origin": ORIGIN, "Access-Control-Request-Method": "TRACE"}, "method 'TRACE'"),
        (
            {"Origin": ORIGIN, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "x-secret"},
            "header 'x-secret'",
        ),
    ],
    ids=["origin", "method", "header"],
)
async def test_a_refused_preflight_names_the_part_that_failed(
    make_sidecar: MakeSidecar, issuer: DevIssuer, headers: dict[str, str], words: str
) -> None:
    sc = await make_sidecar(issuer)
    r = await sc.client.options("/api", headers=headers)
    assert r.status == 403
    body = await r.json()
    assert body["reason"] == "cors_rejected"
    assert words in body["description"] and "is not allowed" in body["description"]
    assert sc.metric("sidecar_cors_preflights_total", result="rejected") == 1
