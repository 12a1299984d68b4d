"""Path normalisation: one reading of a path or none; public paths match whole segments."""

from __future__ import annotations

import pytest

from sidecar.rules import PublicPaths, encode, normalise


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


def test_public_prefixes_match_whole_segments_only() -> None:
    pub = PublicPaths(("/public", "/health/"))
    assert pub.match("/public") and pub.match("/public/x") and pub.match("/health") and pub.match("/health/live")
    assert not pub.match("/publicity") and not pub.match("/PUBLIC/x") and not pub.match(None)
    assert not PublicPaths(()).match("/public")


def test_the_canonical_form_is_re_encoded_for_the_app() -> None:
    assert encode("/café/a b") == "/caf%C3%A9/a%20b"
    assert encode("/a:b@c/d,e") == "/a:b@c/d,e"
