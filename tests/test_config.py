"""Config is parsed once, into frozen objects; every problem names its exact key path."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.config import ASYMMETRIC_ALGS, Config, ConfigError, load

ROOT = Path(__file__).resolve().parent.parent
BASE: dict[str, Any] = {"providers": [{"issuer": "https://iss", "audiences": ["api"], "jwks_url": "https://iss/jwks"}]}


def with_(**over: Any) -> dict[str, Any]:
    return {**BASE, **over}


def provider(**over: Any) -> dict[str, Any]:
    return {"providers": [{**BASE["providers"][0], **over}]}


def test_defaults_are_the_documented_safe_ones() -> None:
    cfg = load(BASE)
    p = cfg.providers[0]
    assert p.algorithms == ASYMMETRIC_ALGS and p.required_claims == ("exp",)
    assert cfg.leeway == 60 and cfg.expired_grace == 0
    assert cfg.jwks.refresh == 300 and cfg.jwks.max_stale == 86400 and cfg.jwks.refetch_cooldown == 30
    assert cfg.jwks.key_retention == 86400
    assert cfg.strip_authorization is False and cfg.admin_actions == "loopback"


def test_config_objects_are_frozen() -> None:
    cfg = load(BASE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.leeway = 0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("raw", "path", "words"),
    [
        ({}, "providers", "at least one provider"),
        (with_(lewaay=5), "lewaay", "unknown key"),
        (provider(algorithms=["HS256"]), "providers[0].algorithms[0]", "symmetric algorithms are refused"),
        (provider(algorithms=["none"]), "providers[0].algorithms[0]", "'none' is never accepted"),
        (provider(algorithms=["RS257"]), "providers[0].algorithms[0]", "unknown algorithm"),
        (provider(issuer=None), "providers[0].issuer", "expected a string"),
        (provider(audiences=[]), "providers[0].audiences", "at least one"),
        (provider(jwks_file="/x"), "providers[0]", "exactly one key source"),
        (provider(jwks_url="ftp://x"), "providers[0].jwks_url", "absolute http or https URL"),
        (provider(colour="red"), "providers[0].colour", "unknown key"),
        (with_(leeway="soon"), "leeway", "duration"),
        (with_(leeway=True), "leeway", "duration"),
        (with_(leeway=-1), "leeway", "at least 0"),
        (with_(jwks={"refresh": 0}), "jwks.refresh", "at least 1"),
        (with_(jwks={"min_refresh": "2h"}), "jwks.min_refresh", "must not exceed"),
        (with_(jwks={"max_stale": "1y"}), "jwks.max_stale", "duration"),
        (with_(limits={"max_token_bytes": 100}), "limits.max_token_bytes", "at least 256"),
        (with_(limits={"max_token_bytes": 20000}), "limits.max_token_bytes", "must not exceed"),
        (with_(listen="8000"), "listen", "HOST:PORT"),
        (with_(upstream="http://app:8080/base"), "upstream", "scheme://host:port only"),
        (with_(claim_headers={"X-User": "sub"}), "claim_headers.X-User", "identity_header_prefix"),
        (
            with_(claim_headers={"X-Auth Bad": "sub"}),
            "claim_headers.X-Auth Bad",
            "not a valid HTTP header name",
        ),
        (with_(claim_headers=["X-Auth-Sub"]), "claim_headers[0]", "NAME=CLAIM"),
        (with_(public_paths=["/a/../b"]), "public_paths[0]", "plain absolute path"),
        (with_(public_paths=["public"]), "public_paths[0]", "plain absolute path"),
        (
            with_(cors={"origins": ["*"], "allow_credentials": True}),
            "cors.allow_credentials",
            "cannot be true",
        ),
        (with_(cors={"origins": ["localhost:3000"]}), "cors.origins[0]", "not an origin"),
        (with_(admin_actions="sometimes"), "admin_actions", "one of off, loopback, on"),
        (
            with_(providers=[BASE["providers"][0], BASE["providers"][0]]),
            "providers[1].issuer",
            "already used",
        ),
        (with_(providers="x"), "providers", "list"),
    ],
)
def test_a_bad_config_names_the_exact_key_and_problem(raw: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(raw)
    assert e.value.path == path
    assert words in e.value.problem


def test_durations_accept_numbers_and_units() -> None:
    cfg = load(with_(leeway="1m", expired_grace=90, jwks={"max_stale": "2d", "fetch_timeout": "1500ms"}))
    assert (cfg.leeway, cfg.expired_grace, cfg.jwks.max_stale, cfg.jwks.fetch_timeout) == (
        60,
        90,
        172800,
        1.5,
    )


def test_effective_config_round_trips() -> None:
    cfg = load(yaml_file(ROOT / "config" / "full.yaml"))
    assert load(cfg.effective()) == cfg


def yaml_file(path: Path) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_config_is_valid(path: Path) -> None:
    assert isinstance(load(yaml_file(path)), Config)


def test_the_chart_schema_and_the_docs_key_table_are_the_models_own() -> None:
    from sidecar.config import schema

    chart = json.loads(schema.CHART_SCHEMA.read_text())
    assert chart["properties"]["sidecar"]["properties"]["config"]["$ref"] == "#/definitions/Config"
    for name, definition in schema.config_definitions().items():
        if name == "Config":  # relaxed for kubernetesIssuer, and required again by the root if/then
            definition = schema.for_chart(definition)
            assert chart["then"]["properties"]["sidecar"]["properties"]["config"]["required"] == ["providers"]
        assert chart["definitions"][name] == definition, f"{name}: run python -m sidecar.config.schema --write"
    assert schema.config_table() in schema.CONFIG_DOC.read_text(), "run python -m sidecar.config.schema --write"


def test_the_exported_schema_accepts_every_shipped_config_and_refuses_what_the_model_refuses() -> None:
    import jsonschema

    from sidecar.config import schema

    validator = jsonschema.Draft7Validator({"definitions": schema.config_definitions(), "$ref": "#/definitions/Config"})
    for path in sorted((ROOT / "config").glob("*.yaml")):
        validator.validate(yaml.safe_load(path.read_text()))
    for bad in (with_(lewaay=5), provider(algorithms=["HS256"]), with_(admin_actions="sometimes"), {}):
        assert not validator.is_valid(bad), bad
        with pytest.raises(ConfigError):
            load(bad)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as e:
        load(with_(leeway="soon", lewaay=1, jwks={"refresh": 0}, limits={"max_token_bytes": 1}))
    assert {p for p, _ in e.value.problems} == {"leeway", "lewaay", "jwks.refresh", "limits.max_token_bytes"}


def test_a_key_source_file_must_hold_a_usable_key_set(tmp_path: Path) -> None:
    f = tmp_path / "jwks.json"
    f.write_text('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}')
    with pytest.raises(ConfigError) as e:
        load(provider(jwks_url=None, jwks_file=str(f)))
    assert e.value.path == "providers[0].jwks_file" and "no usable key" in e.value.problem


def test_the_full_example_names_every_key() -> None:
    from sidecar.config import Cors, Decision, Jwks, Limits, Provider
    from sidecar.config.model import fields_of

    text = (ROOT / "config" / "full.yaml").read_text()
    for cls in (Config, Provider, Cors, Jwks, Limits, Decision):
        for key in fields_of(cls):
            assert re.search(rf"^[#\s]*(- )?{key}:", text, re.M), (
                f"{cls.__name__}.{key} is missing from config/full.yaml"
            )
