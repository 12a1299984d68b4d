"""Path normalisation: one reading of a path or none; public paths match whole segments."""

from __future__ import annotations

import pytest

from sidecar.config import load
from sidecar.rules import RuleSet, encode, normalise


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("/a/b", "/a/b"),
        ("/a/../b", "/b"),
        ("/a/./b/", "/a/b/"),
        ("//a//b", "/a/b"),
        ("/public/%2e%2e/admin", "/admin"),
        ("/public/%2E%2E/admin", "/admin"),
        ("/%70ublic/x", "/public/x"),
        ("/caf%C3%A9", "/café"),
        ("/a/..", "/"),
    ],
)
def test_a_path_with_one_reading_gets_its_canonical_form(raw: str, canonical: str) -> None:
    assert normalise(raw) == canonical


@pytest.mark.parametrize(
    "raw",
    [
        "/public%2f..%2fadmin",
        "/public/%252e%252e/admin",
        "/public/..%5cadmin",
        "/public\\..\\admin",
        "/public;/../admin",
        "/public/%00/x",
        "/..",
        "/a/../../b",
        "/%ff",
        "*",
        "http://evil/public",
    ],
)
def test_an_ambiguous_path_has_no_canonical_form(raw: str) -> None:
    assert normalise(raw) is None


BASE = {"providers": [{"issuer": "https://i", "audiences": ["a"], "jwks_url": "https://i/j"}]}


def test_public_prefixes_match_whole_segments_only() -> None:
    rules = RuleSet(load({**BASE, "public_paths": ["/public", "/health/"]}))

    def public(path: str | None) -> bool:
        return rules.route("GET", path).public

    assert public("/public") and public("/public/x") and public("/health") and public("/health/live")
    assert not public("/publicity") and not public("/PUBLIC/x") and not public(None)
    assert not RuleSet(load(BASE)).route("GET", "/public").public


def test_the_canonical_form_is_re_encoded_for_the_app() -> None:
    assert encode("/café/a b") == "/caf%C3%A9/a%20b"
    assert encode("/a:b@c/d,e") == "/a:b@c/d,e"
