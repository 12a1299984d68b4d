"""Route rules as configured: every mistake is caught at start, with the rule's position."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.config import ConfigError, load
from sidecar.policy import Rule, covers

BASE: dict[str, Any] = {
    "providers": [
        {"name": "main", "issuer": "https://i", "audiences": ["a"], "jwks_url": "https://i/j"},
        {
            "name": "partners",
            "issuer": "https://p",
            "audiences": ["a"],
            "jwks_url": "https://p/j",
            "token_sources": ["cookie:session"],
        },
    ]
}


def rules(*rs: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {**BASE, "rules": list(rs), **extra}


@pytest.mark.parametrize(
    ("raw", "path", "words"),
    [
        (rules({"prefix": "/a", "providers": ["nobody"]}), "rules[0].providers", "unknown provider 'nobody'"),
        (rules({"pattern": "/a/**/b"}), "rules[0].pattern", "'**' may only be the last segment"),
        (rules({"pattern": "/a/b*"}), "rules[0].pattern", "'*' must be a whole segment"),
        (rules({"prefix": "/a/*"}), "rules[0].prefix", "use `pattern:`"),
        (rules({"prefix": "/a/../b"}), "rules[0].prefix", "dot segment"),
        (rules({"prefix": "/a", "exact": "/a"}), "rules[0]", "exactly one of exact, prefix or pattern"),
        (rules({"name": "x", "prefix": "/a"}, {"name": "x", "prefix": "/b"}), "rules[1].name", "earlier rule"),
        (rules({"prefix": "/api"}, {"exact": "/api/orders", "scopes": ["x"]}), "rules[1]", "unreachable"),
        (rules({"prefix": "/"}, {"prefix": "/x"}), "rules[1]", "unreachable"),
        (rules({"pattern": "/api/*/orders"}, {"exact": "/api/v1/orders"}), "rules[1]", "unreachable"),
        (
            rules({"prefix": "/a", "methods": ["GET", "POST"]}, {"prefix": "/a/b", "methods": ["GET"]}),
            "rules[1]",
            "matched first by rules[0]",
        ),
        (rules({"prefix": "/a", "public": True, "scopes": ["x"]}), "rules[0]", "cannot also require"),
        (rules({"prefix": "/a", "methods": ["FETCH"]}), "rules[0].methods", "unknown method"),
        (rules({"prefix": "/a", "claims": {"role": {"any": 1}}}), "rules[0].claims.role", "one_of"),
        (rules({"prefix": "/a", "colour": "red"}), "rules[0].colour", "unknown key"),
        (rules({"prefix": "/a", "claim_headers": {"X-User": "sub"}}), "rules[0].claim_headers.X-User", "prefix"),
        (rules({"prefix": "/public/x"}, public_paths=["/public"]), "rules[0]", "public_paths entry '/public'"),
        (rules(unmatched="maybe"), "unmatched", "token, public, deny"),
        (
            {**BASE, "providers": [{**BASE["providers"][0], "token_sources": ["cookie"]}]},
            "providers[0].token_sources[0]",
            "cookie:NAME",
        ),
        (
            {**BASE, "decision": {"listen": "127.0.0.1:1", "trusted_sources": ["10.0.0.0/33"]}},
            "decision.trusted_sources[0]",
            "not an IP network",
        ),
    ],
)
def test_a_bad_rule_is_a_config_error_with_its_position(raw: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(raw)
    assert e.value.path == path
    assert words in e.value.problem


def test_rules_that_only_overlap_are_not_called_unreachable() -> None:
    cfg = load(
        rules(
            {"name": "admin-get", "prefix": "/admin", "methods": ["GET"], "scopes": ["admin:read"]},
            {"name": "admin", "prefix": "/admin", "scopes": ["admin"]},
            {"name": "orders", "pattern": "/api/*/orders/**"},
            {"name": "api", "prefix": "/api"},
            {"name": "health", "exact": "/healthz", "public": True},
        )
    )
    assert [r.name for r in cfg.rules] == ["admin-get", "admin", "orders", "api", "health"]


def test_the_effective_config_round_trips_with_rules() -> None:
    cfg = load(
        rules(
            {
                "name": "a",
                "prefix": "/a",
                "methods": ["GET"],
                "scopes": ["x"],
                "claims": {"t": "acme", "r": {"one_of": ["a", "b"]}, "e": {"present": True}},
            },
            {
                "name": "b",
                "exact": "/b",
                "clients": ["web"],
                "claim_headers": {"X-Auth-T": "t"},
                "strip_authorization": True,
            },
            public_paths=["/pub"],
            unmatched="deny",
        )
    )
    assert load(cfg.effective()) == cfg


def test_covers_is_conservative() -> None:
    a = Rule(name="a", kind="pattern", path="/x/*")
    b = Rule(name="b", kind="prefix", path="/x/y")
    assert not covers(a, b)  # a pattern never claims to cover a prefix
    assert covers(Rule(name="c", kind="prefix", path="/x"), Rule(name="d", kind="pattern", path="/x/*/z"))
