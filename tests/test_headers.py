"""Which client headers never reach the app: hop-by-hop, the sidecar's identity namespace, other auth
proxies' identity headers and method-override headers, in any case and `_` spelling."""

from __future__ import annotations

from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from sidecar.config import FOREIGN_IDENTITY_HEADERS, METHOD_OVERRIDE_HEADERS, ConfigError, load
from sidecar.headers import HeaderPolicy, NameList

POLICY = HeaderPolicy("X-Auth-", FOREIGN_IDENTITY_HEADERS)


def forwarded(pairs: list[tuple[str, str]], policy: HeaderPolicy = POLICY) -> list[tuple[str, str]]:
    return list(policy.forwardable(CIMultiDictProxy(CIMultiDict(pairs))).items())


def spellings(name: str) -> list[str]:
    return [name, name.lower(), name.upper(), name.replace("-", "_"), name.lower().replace("-", "_")]


FOREIGN = [
    "X-Forwarded-User",
    "X-Forwarded-Email",
    "X-Forwarded-Groups",
    "X-Forwarded-Preferred-Username",
    "X-Forwarded-Access-Token",
    "X-Auth-Request-User",
    "X-Auth-Request-Email",
    "X-Auth-Request-Groups",
    "X-Auth-Request-Preferred-Username",
    "X-Auth-Request-Access-Token",
    "Remote-User",
    "Remote-Groups",
    "Remote-Email",
    "Remote-Name",
    "X-Remote-User",
    "X-Remote-Group",
    "X-Remote-Extra-Scopes",
    "X-Authenticated-User",
    "X-Authenticated-Userid",
    "X-Authenticated-Groups",
    "X-Consumer-Username",
    "X-Pomerium-Jwt-Assertion",
    "X-Pomerium-Claim-Email",
    "X-Goog-Authenticated-User-Email",
    "X-Goog-Iap-Jwt-Assertion",
    "X-Amzn-Oidc-Identity",
    "X-Amzn-Oidc-Data",
    "Cf-Access-Jwt-Assertion",
    "Cf-Access-Authenticated-User-Email",
    "X-MS-CLIENT-PRINCIPAL",
    "X-MS-CLIENT-PRINCIPAL-NAME",
    "X-MS-TOKEN-AAD-ACCESS-TOKEN",
    "X-Vouch-User",
    "X-Authentik-Username",
    "X-Forwarded-Client-Cert",
    "X-SSL-Client-DN",
    "X-Client-Cert",
]


@pytest.mark.parametrize("name", [s for n in FOREIGN for s in spellings(n)])
def test_other_auth_proxies_identity_headers_never_reach_the_app(name: str) -> None:
    assert forwarded([(name, "admin"), ("Accept", "*/*")]) == [("Accept", "*/*")]


@pytest.mark.parametrize("name", [s for n in METHOD_OVERRIDE_HEADERS for s in spellings(n)])
def test_method_override_headers_reach_the_app_they_are_judged_instead(name: str) -> None:
    assert forwarded([(name, "DELETE")]) == [(name, "DELETE")]


@pytest.mark.parametrize(
    "name", ["Proxy-Authorization", "Proxy_Authorization", "proxy_authorization", "Keep_Alive", "TE"]
)
def test_hop_by_hop_headers_and_their_underscore_twins_never_reach_the_app(name: str) -> None:
    assert forwarded([(name, "Basic eA=="), ("Accept", "*/*")]) == [("Accept", "*/*")]


@pytest.mark.parametrize("name", ["X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Request-Id", "Accept"])
def test_ordinary_headers_pass(name: str) -> None:
    assert forwarded([(name, "v")]) == [(name, "v")]


def test_the_list_is_configurable_with_prefixes() -> None:
    policy = HeaderPolicy("X-Auth-", ("X-Tenant", "X-Corp-*"))
    assert forwarded([("x_tenant", "a"), ("X-CORP-ROLE", "b"), ("X-Forwarded-User", "c")], policy) == [
        ("X-Forwarded-User", "c")
    ]
    names = NameList(("X-Corp-*", "Remote-User"))
    assert "x_corp_anything" in names and "REMOTE_USER" in names and "X-Corporate" not in names


def test_a_configured_token_header_is_left_to_the_token_rules() -> None:
    policy = HeaderPolicy("X-Auth-", ("X-Id-Token",), exempt=("X-Id-Token",))
    assert forwarded([("X-Id-Token", "t"), ("X_Id_Token", "u")], policy) == [("X-Id-Token", "t")]


def raw(**over: Any) -> dict[str, Any]:
    return {"providers": [{"issuer": "https://idp", "audiences": ["a"], "jwks_url": "https://idp/jwks"}], **over}


def test_config_defaults_and_overrides() -> None:
    cfg = load(raw())
    assert "X-Auth-Request-*" in cfg.foreign_identity_headers and cfg.method_override_params == ("_method",)
    assert cfg.authorization_passthrough == ()
    cfg = load(
        raw(foreign_identity_headers=["X-Tenant"], method_override_headers=[], authorization_passthrough=["Basic"])
    )
    assert cfg.foreign_identity_headers == ("X-Tenant",) and cfg.method_override_headers == ()
    assert cfg.authorization_passthrough == ("Basic",)


@pytest.mark.parametrize(
    ("over", "path"),
    [
        ({"foreign_identity_headers": ["X Bad"]}, "foreign_identity_headers[0]"),
        ({"foreign_identity_headers": ["X*"]}, "foreign_identity_headers[0]"),
        ({"foreign_identity_headers": ["X-*-User"]}, "foreign_identity_headers[0]"),
        ({"foreign_identity_headers": ["Authorization"]}, "foreign_identity_headers[0]"),
        ({"method_override_headers": ["ok", "Cookie"]}, "method_override_headers[1]"),
        ({"method_override_params": ["a&b"]}, "method_override_params[0]"),
        ({"authorization_passthrough": ["Bearer"]}, "authorization_passthrough[0]"),
        ({"authorization_passthrough": ["Ba sic"]}, "authorization_passthrough[0]"),
    ],
)
def test_bad_lists_are_config_errors_naming_the_entry(over: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(raw(**over))
    assert e.value.path == path
