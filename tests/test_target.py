"""Decision-mode targets: judged only when decoding, raw, case-insensitive and HEAD-as-GET readings agree."""

from __future__ import annotations

import pytest

from sidecar.config import load
from sidecar.errors import AmbiguousTarget
from sidecar.rules import RuleSet
from sidecar.target import Readings

CFG = load(
    {
        "providers": [{"issuer": "https://idp.example", "audiences": ["api"], "jwks_url": "https://idp.example/j"}],
        "public_paths": ["/public"],
        "rules": [
            {"name": "admin", "prefix": "/admin", "scopes": ["admin"]},
            {"name": "upper", "exact": "/Login", "public": True},
            {"name": "export", "pattern": "/export/*", "methods": ["GET"], "scopes": ["export"]},
            {"name": "listing", "exact": "/files:list", "public": True},
        ],
    }
)
READINGS = Readings(RuleSet(CFG), RuleSet(CFG, fold_case=True))


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        ("/public/x", "/public/x", ""),
        ("/public/", "/public/", ""),
        ("/", "/", ""),
        ("/public/caf%C3%A9?q=%2e", "/public/café", "q=%2e"),
        ("/public/a%20b", "/public/a b", ""),
        ("/admin/a%40b", "/admin/a@b", ""),
        ("/Login", "/Login", ""),
        ("/export/x", "/export/x", ""),
        ("/orders?x=1&y=%00", "/orders", "x=1&y=%00"),
    ],
)
def test_a_target_every_router_reads_alike_is_decoded_once(target: str, path: str, query: str) -> None:
    assert READINGS.single("GET", target) == (path, query)


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "/admin#x"),
        ("GET", "/admin/%2e%2e/public"),
        ("GET", "/admin/%2E."),
        ("GET", "/public%2fx"),
        ("GET", "/public%5cx"),
        ("GET", "/public\\x"),
        ("GET", "/public%252e"),
        ("GET", "/public;x"),
        ("GET", "/public%3bx"),
        ("GET", "/public%3fx"),
        ("GET", "/public%23x"),
        ("GET", "/public/%00"),
        ("GET", "/public/%1f"),
        ("GET", "/public/%7F"),
        ("GET", "/public/%zz"),
        ("GET", "/public/%"),
        ("GET", "/public/%c0%ae"),
        ("GET", "/public/%ff"),
        ("GET", "/%70ublic"),
        ("GET", "/public/./x"),
        ("GET", "/public/../admin"),
        ("GET", "/public//x"),
        ("GET", "//public"),
        ("GET", "/public/\x00"),
        ("GET", "/public/ x"),
        ("GET", "/public/é"),
        ("GET", "/public/%EF%BC%8E%EF%BC%8E"),
        ("GET", "/%EF%BD%81dmin"),
        ("GET", "/public/e%CC%81"),
        ("GET", "http://h/public"),
        ("GET", "*"),
        ("GET", ""),
        ("GET", "/ADMIN"),
        ("GET", "/login"),
        ("GET", "/Public"),
        ("HEAD", "/export/x"),
    ],
)
def test_a_target_routers_could_read_two_ways_is_refused(method: str, target: str) -> None:
    with pytest.raises(AmbiguousTarget):
        READINGS.single(method, target)


def test_an_escape_that_changes_the_rule_between_raw_and_decoded_is_refused() -> None:
    # decoded, `/files%3Alist` is the public rule; a router matching the encoded form (Express) sees no rule
    assert READINGS.single("GET", "/files:list") == ("/files:list", "")
    for target in ("/files%3Alist", "/files%3alist", "/FILES%3Alist"):
        with pytest.raises(AmbiguousTarget):
            READINGS.single("GET", target)
    assert READINGS.single("GET", "/files%3Aother") == ("/files:other", "")  # no rule either way
