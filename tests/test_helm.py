"""The Helm chart in helm/: renders, validates against Kubernetes schemas, and agrees with the sidecar.

Offline: the chart is rendered in-process with helm-python-sdk (Helm's Go SDK through ctypes, no
`helm` binary, no cluster). Built-in kinds are checked with kubernetes-validate in strict mode;
ServiceMonitor / PrometheusRule are CRDs that kubernetes-validate has no schema for, so they are
checked against the small shape schemas in this file instead (CRD_SHAPES).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate import utils as kv_utils
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm"
CI_DIR = CHART / "ci"
CI_FILES = sorted(CI_DIR.glob("*-values.yaml"))
REQUIRED_CI = {"standalone", "embedded", "native-sidecar", "monitoring", "minimal"}
RELEASE, NAMESPACE = "shop", "shop"
# The floor for native sidecars (restartPolicy on init containers) and the newest schemas shipped.
KUBE_VERSIONS = ("1.29.0", kv_utils.latest_version())
EXPECTED_ALERTS = {
    "JwtSidecarHighExpirationRate",
    "JwtSidecarBulkExpiration",
    "JwtSidecarClockSkew",
    "JwtSidecarJwksFetchFailing",
    "JwtSidecarJwksStale",
    "JwtSidecarJwksNearMaxStale",
    "JwtSidecarKeysUnavailable",
    "JwtSidecarAuthSuccessRateLow",
    "JwtSidecarGraceUsageHigh",
    "JwtSidecarValidationLatencyHigh",
    "JwtSidecarUnknownKid",
}


# --- rendering helpers ---------------------------------------------------------------------------------


def load_values(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text()) or {}
    assert isinstance(data, dict), path
    return data


def render_chart(chart_dir: Path, values: dict[str, Any] | None) -> dict[str, str]:
    with helm.Chart.load(chart_dir) as chart:
        return chart.render(values=values, name=RELEASE, namespace=NAMESPACE)


def split_docs(rendered: dict[str, str]) -> list[dict[str, Any]]:
    docs = []
    for name, text in sorted(rendered.items()):
        if name.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append(doc)
    return docs


def render(values: dict[str, Any] | None) -> list[dict[str, Any]]:
    return split_docs(render_chart(CHART, values))


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "Deployment")["spec"]["template"]["spec"]


def sidecar_container(spec: dict[str, Any]) -> dict[str, Any]:
    found = [
        c for c in (spec.get("containers") or []) + (spec.get("initContainers") or []) if c["name"] == "jwt-sidecar"
    ]
    assert len(found) == 1
    return found[0]


def config_of(docs: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    cms = [d for d in by_kind(docs, "ConfigMap") if "config.yaml" in d.get("data", {})]
    assert len(cms) == 1
    text = cms[0]["data"]["config.yaml"]
    return text, yaml.safe_load(text)


@pytest.fixture(scope="module")
def rendered_ci() -> dict[str, list[dict[str, Any]]]:
    return {p.name: render(load_values(p)) for p in CI_FILES}


@pytest.fixture(scope="module")
def minimal_values() -> dict[str, Any]:
    return load_values(CI_DIR / "minimal-values.yaml")


# --- Kubernetes validation -----------------------------------------------------------------------------

_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 253},
        "namespace": {"type": "string", "minLength": 1},
        "labels": _LABELS,
        "annotations": _LABELS,
    },
    "additionalProperties": False,
}
_DURATION = {"type": "string", "pattern": "^(([0-9]+)(y|w|d|h|m|s|ms))+$"}
# Hand-written subsets of the prometheus-operator CRDs (monitoring.coreos.com/v1), strict on the
# fields this chart uses.
CRD_SHAPES: dict[str, dict[str, Any]] = {
    "ServiceMonitor": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "ServiceMonitor"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["selector", "endpoints"],
                "additionalProperties": False,
                "properties": {
                    "namespaceSelector": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "matchNames": {"type": "array", "items": {"type": "string"}},
                            "any": {"type": "boolean"},
                        },
                    },
                    "selector": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["matchLabels"],
                        "properties": {"matchLabels": _LABELS},
                    },
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["port"],
                            "additionalProperties": False,
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string", "pattern": "^/"},
                                "scheme": {"enum": ["http", "https"]},
                                "interval": _DURATION,
                                "scrapeTimeout": _DURATION,
                                "relabelings": {"type": "array", "items": {"type": "object"}},
                                "metricRelabelings": {"type": "array", "items": {"type": "object"}},
                            },
                        },
                    },
                },
            },
        },
    },
    "PrometheusRule": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "PrometheusRule"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["groups"],
                "additionalProperties": False,
                "properties": {
                    "groups": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["name", "rules"],
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string", "minLength": 1},
                                "interval": _DURATION,
                                "rules": {
                                    "type": "array",
                                    "minItems": 1,
                                    "items": {
                                        "type": "object",
                                        "required": ["alert", "expr"],
                                        "additionalProperties": False,
                                        "properties": {
                                            "alert": {
                                                "type": "string",
                                                "pattern": "^[A-Za-z_][A-Za-z0-9_]*$",
                                            },
                                            "expr": {"type": "string", "minLength": 1},
                                            "for": _DURATION,
                                            "labels": {
                                                "type": "object",
                                                "required": ["severity"],
                                                "properties": {"severity": {"enum": ["info", "warning", "critical"]}},
                                                "additionalProperties": {"type": "string"},
                                            },
                                            "annotations": {
                                                "type": "object",
                                                "required": ["summary"],
                                                "additionalProperties": {"type": "string"},
                                            },
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def validate_manifest(doc: dict[str, Any]) -> None:
    if doc["apiVersion"].startswith("monitoring.coreos.com/"):
        assert doc["kind"] in CRD_SHAPES, f"no shape check for CRD kind {doc['kind']}"
        jsonschema.Draft7Validator(CRD_SHAPES[doc["kind"]]).validate(doc)
        return
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


# --- chart basics --------------------------------------------------------------------------------------


def test_chart_metadata_and_image_tag_in_step() -> None:
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2"
    assert meta["name"] == "jwt-sidecar"
    values = load_values(CHART / "values.yaml")
    assert str(values["sidecar"]["image"]["tag"]) == str(meta["appVersion"])
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)


def test_every_required_ci_values_file_exists() -> None:
    names = {p.name.removesuffix("-values.yaml") for p in CI_FILES}
    assert names >= REQUIRED_CI


@pytest.mark.parametrize("values_file", CI_FILES, ids=lambda p: p.name)
def test_helm_lint_is_clean(values_file: Path) -> None:
    report = helm.lint(CHART, load_values(values_file), strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


@pytest.mark.parametrize("values_file", CI_FILES, ids=lambda p: p.name)
def test_rendered_manifests_are_valid_kubernetes(values_file: Path) -> None:
    docs = render(load_values(values_file))
    assert docs
    for doc in docs:
        validate_manifest(doc)
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "jwt-sidecar"
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


def test_objects_per_values_file(rendered_ci: dict[str, list[dict[str, Any]]]) -> None:
    def kinds(name: str) -> list[str]:
        return sorted(d["kind"] for d in rendered_ci[name])

    assert kinds("minimal-values.yaml") == ["ConfigMap", "Deployment", "Service", "ServiceAccount"]
    assert kinds("embedded-values.yaml") == ["ConfigMap"]
    assert kinds("standalone-values.yaml") == [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    ]
    assert kinds("monitoring-values.yaml") == [
        "ConfigMap",
        "ConfigMap",
        "Deployment",
        "PrometheusRule",
        "Service",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ]
    assert kinds("embedded-monitoring-values.yaml") == ["ConfigMap", "ConfigMap", "PrometheusRule"]
    # HPA owns the replica count
    assert "replicas" not in one(rendered_ci["standalone-values.yaml"], "Deployment")["spec"]


# --- values.schema.json rejects bad values -------------------------------------------------------------

PROVIDER = {
    "issuer": "https://idp.example.com/",
    "audiences": ["api"],
    "jwks_url": "https://idp.example.com/jwks",
}
BAD_VALUES = {
    "wrong type: replicaCount string": ({"replicaCount": "three"}, "/replicaCount"),
    "wrong type: sidecar.port string": ({"sidecar": {"port": "8000"}}, "/sidecar/port"),
    "wrong type: leeway list": ({"sidecar": {"config": {"leeway": [1]}}}, "/sidecar/config/leeway"),
    "bad duration string": (
        {"sidecar": {"config": {"limits": {"drain_timeout": "20 seconds"}}}},
        "/sidecar/config/limits/drain_timeout",
    ),
    "unknown key at top level": ({"replicas": 3}, "'replicas' not allowed"),
    "unknown key in app": ({"app": {"imag": {}}}, "'imag' not allowed"),
    "unknown key in metrics": ({"metrics": {"serviceMonitor": {"enable": True}}}, "'enable' not allowed"),
    "unknown key in sidecar config": (
        {"sidecar": {"config": {"providers": [PROVIDER], "leway": 5}}},
        "'leway' not allowed",
    ),
    "unknown key in sidecar config section": (
        {"sidecar": {"config": {"jwks": {"refresh_interval": 60}}}},
        "'refresh_interval' not allowed",
    ),
    "unknown key in a provider": (
        {"sidecar": {"config": {"providers": [{**PROVIDER, "jwks_uri": "https://x"}]}}},
        "'jwks_uri' not allowed",
    ),
    "bad enum: mode": ({"mode": "daemonset"}, "/mode"),
    "bad enum: admin_actions": (
        {"sidecar": {"config": {"admin_actions": "always"}}},
        "/sidecar/config/admin_actions",
    ),
    "bad enum: log_level": ({"sidecar": {"config": {"log_level": "verbose"}}}, "/sidecar/config/log_level"),
    "bad enum: symmetric algorithm": (
        {"sidecar": {"config": {"providers": [{**PROVIDER, "algorithms": ["HS256"]}]}}},
        "/sidecar/config/providers/0/algorithms",
    ),
    "provider without issuer": ({"sidecar": {"config": {"providers": [{"audiences": ["api"]}]}}}, "issuer"),
    "no providers": ({"sidecar": {"config": {"providers": []}}}, "/sidecar/config/providers"),
    "bad enum: pullPolicy": (
        {"sidecar": {"image": {"pullPolicy": "Sometimes"}}},
        "/sidecar/image/pullPolicy",
    ),
    "unknown key in a route rule": (
        {"sidecar": {"config": {"rules": [{"prefix": "/admin", "scope": ["admin"]}]}}},
        "/sidecar/config/rules/0",
    ),
    "bad enum: unmatched": ({"sidecar": {"config": {"unmatched": "allow"}}}, "/sidecar/config/unmatched"),
    "bad token source": (
        {"sidecar": {"config": {"providers": [{**PROVIDER, "token_sources": ["cookie"]}]}}},
        "/sidecar/config/providers/0/token_sources/0",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_schema_rejects_bad_values(case: str, minimal_values: dict[str, Any]) -> None:
    override, expected = BAD_VALUES[case]
    with pytest.raises(helm.HelmValuesError) as err:
        render(deep_merge(minimal_values, override))
    assert expected in str(err.value)


def test_schema_accepts_every_ci_file_and_the_defaults_need_providers() -> None:
    with helm.Chart.load(CHART) as chart:
        for path in CI_FILES:
            chart.validate_schema(load_values(path))
        with pytest.raises(helm.HelmValuesError, match="providers"):
            chart.validate_schema({})


# --- the rendered config is the sidecar's own config ---------------------------------------------------


def _repo_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("SIDECAR_CONFIG", None)
    return env


@pytest.mark.parametrize("values_file", CI_FILES, ids=lambda p: p.name)
def test_rendered_config_passes_sidecar_check_config(values_file: Path, tmp_path: Path) -> None:
    values = load_values(values_file)
    text, cfg = config_of(render(values))
    path = tmp_path / "config.yaml"
    path.write_text(text)
    proc = subprocess.run(
        [sys.executable, "-m", "sidecar", "check-config", str(path)],
        cwd=ROOT,
        env=_repo_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    effective = yaml.safe_load(proc.stdout)
    merged = deep_merge(load_values(CHART / "values.yaml"), values)
    assert effective["listen"] == f"0.0.0.0:{merged['sidecar']['port']}"
    assert effective["admin_listen"] == f"0.0.0.0:{merged['sidecar']['adminPort']}"
    assert effective["upstream"] == f"http://127.0.0.1:{merged['app']['port']}"
    # every key the user wrote reaches the file unchanged
    for key, value in merged["sidecar"]["config"].items():
        assert cfg[key] == value


def test_a_bad_config_is_caught_by_check_config(tmp_path: Path, minimal_values: dict[str, Any]) -> None:
    """Cross-field rules (one key source per provider) are left to the sidecar; prove it catches them."""
    values = deep_merge(minimal_values, {"sidecar": {"config": {"providers": [{**PROVIDER, "discovery": True}]}}})
    text, _ = config_of(render(values))
    path = tmp_path / "config.yaml"
    path.write_text(text)
    proc = subprocess.run(
        [sys.executable, "-m", "sidecar", "check-config", str(path)],
        cwd=ROOT,
        env=_repo_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert "config error: providers[0]" in proc.stderr


def test_listen_port_must_agree_with_container_port(minimal_values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmError, match=r"sidecar\.config\.listen"):
        render(deep_merge(minimal_values, {"sidecar": {"config": {"listen": "0.0.0.0:9000"}}}))
    docs = render(deep_merge(minimal_values, {"sidecar": {"port": 9000, "config": {"listen": "0.0.0.0:9000"}}}))
    assert config_of(docs)[1]["listen"] == "0.0.0.0:9000"


def test_app_port_cannot_collide_with_sidecar_ports(minimal_values: dict[str, Any]) -> None:
    for port in (8000, 9901):
        with pytest.raises(helm.HelmError, match="must differ"):
            render(deep_merge(minimal_values, {"app": {"port": port}}))


def test_standalone_requires_the_app_image() -> None:
    with pytest.raises(helm.HelmError, match=r"app\.image\.repository is required"):
        render({"sidecar": {"config": {"providers": [PROVIDER]}}})


# --- the pod -------------------------------------------------------------------------------------------


def decision_port(docs: list[dict[str, Any]]) -> int | None:
    listen = (yaml.safe_load(config_of(docs)[0]) or {}).get("decision", {}).get("listen")
    return int(listen.rsplit(":", 1)[1]) if listen else None


def test_service_targets_the_sidecar_never_the_app(rendered_ci: dict[str, list[dict[str, Any]]]) -> None:
    for name, docs in rendered_ci.items():
        decide = decision_port(docs)
        for svc in by_kind(docs, "Service"):
            targets = {p["targetPort"] for p in svc["spec"]["ports"]}
            assert targets <= {"sidecar-http", "sidecar-admin", "sidecar-decide"}, name
        if by_kind(docs, "Deployment"):
            spec = pod_spec(docs)
            ports = {p["name"]: p["containerPort"] for p in sidecar_container(spec)["ports"]}
            expected = {"sidecar-http": 8000, "sidecar-admin": 9901} | ({"sidecar-decide": decide} if decide else {})
            assert ports == expected
            main = [
                s
                for s in by_kind(docs, "Service")
                if s["metadata"]["labels"].get("app.kubernetes.io/component") == "proxy"
            ]
            # the decision endpoint is a port of its own on the same Service, for the gateway
            assert [p["targetPort"] for p in main[0]["spec"]["ports"]] == ["sidecar-http"] + (
                ["sidecar-decide"] if decide else []
            )


def test_sidecar_security_probes_and_volumes(rendered_ci: dict[str, list[dict[str, Any]]]) -> None:
    for name, docs in rendered_ci.items():
        if not by_kind(docs, "Deployment"):
            continue
        spec = pod_spec(docs)
        c = sidecar_container(spec)
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001, name
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "sidecar-admin"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "sidecar-admin"}
        assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "sidecar-admin"}
        assert c["resources"]["requests"] and c["resources"]["limits"]
        assert c["args"][:3] == ["run", "--config", "/etc/sidecar/config.yaml"]
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]
        assert volumes[mounts["/etc/sidecar"]]["configMap"]["name"] == f"{RELEASE}-jwt-sidecar-config"


def test_termination_grace_follows_drain_timeout(
    rendered_ci: dict[str, list[dict[str, Any]]], minimal_values: dict[str, Any]
) -> None:
    grace = {
        n: pod_spec(d)["terminationGracePeriodSeconds"] for n, d in rendered_ci.items() if by_kind(d, "Deployment")
    }
    assert grace["minimal-values.yaml"] == 20 + 10  # sidecar default drain_timeout + default margin
    assert grace["standalone-values.yaml"] == 45 + 15  # "45s" + terminationGraceMarginSeconds 15
    assert grace["native-sidecar-values.yaml"] == 30 + 10  # a plain number of seconds
    for drain, expected in (("2m", 130), ("1500ms", 12), (7.2, 18)):
        docs = render(deep_merge(minimal_values, {"sidecar": {"config": {"limits": {"drain_timeout": drain}}}}))
        assert pod_spec(docs)["terminationGracePeriodSeconds"] == expected
    docs = render(deep_merge(minimal_values, {"sidecar": {"terminationGracePeriodSeconds": 90}}))
    assert pod_spec(docs)["terminationGracePeriodSeconds"] == 90


def test_native_sidecar_is_a_restartable_init_container(rendered_ci: dict[str, list[dict[str, Any]]]) -> None:
    spec = pod_spec(rendered_ci["native-sidecar-values.yaml"])
    assert [c["name"] for c in spec["containers"]] == ["app"]
    assert [c["name"] for c in spec["initContainers"]] == ["migrate", "jwt-sidecar"]
    assert spec["initContainers"][1]["restartPolicy"] == "Always"
    regular = pod_spec(rendered_ci["minimal-values.yaml"])
    assert "initContainers" not in regular
    assert [c["name"] for c in regular["containers"]] == ["jwt-sidecar", "app"]
    assert "restartPolicy" not in regular["containers"][0]


def test_checksum_annotation_tracks_the_config(minimal_values: dict[str, Any]) -> None:
    """With live reload off (with it on, tests/test_helm_reload.py: no checksum, no rollout)."""

    def checksum(docs: list[dict[str, Any]]) -> str:
        return one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    off = {"sidecar": {"config": {"reload": False}}}
    for path in CI_FILES:
        docs = render(deep_merge(load_values(path), off))
        if by_kind(docs, "Deployment"):
            text, _ = config_of(docs)
            assert checksum(docs) == hashlib.sha256(text.rstrip("\n").encode()).hexdigest(), path.name
    changed = render(deep_merge(minimal_values, {"sidecar": {"config": {"leeway": "10s", "reload": False}}}))
    assert checksum(changed) != checksum(render(deep_merge(minimal_values, off)))


def test_secrets_only_by_reference(rendered_ci: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered_ci["standalone-values.yaml"]
    assert not by_kind(docs, "Secret")
    spec = pod_spec(docs)
    app = next(c for c in spec["containers"] if c["name"] == "orders")
    assert app["env"] == [
        {"name": "DATABASE_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "orders-db", "key": "password"}}}
    ]
    assert app["envFrom"] == [{"secretRef": {"name": "orders-api-secrets"}}]
    assert sidecar_container(spec)["envFrom"] == [{"secretRef": {"name": "sidecar-overrides", "optional": True}}]
    assert "password" not in config_of(docs)[0].lower()


def test_network_policy_never_opens_the_app_port(rendered_ci: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered_ci["standalone-values.yaml"]
    np = one(docs, "NetworkPolicy")
    ports = {p["port"] for rule in np["spec"]["ingress"] for p in rule["ports"]}
    assert ports == {8000, 9901, decision_port(docs)}  # the sidecar's listeners, never the app's 9000
    assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert np["spec"]["podSelector"]["matchLabels"] == one(docs, "Deployment")["spec"]["selector"]["matchLabels"]


def test_pdb_and_hpa_target_the_deployment(rendered_ci: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered_ci["standalone-values.yaml"]
    dep = one(docs, "Deployment")
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 2
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": dep["metadata"]["name"],
    }
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu", "memory"}


# --- embedded mode: a parent chart includes the named templates ----------------------------------------


def test_embedded_templates_in_a_parent_chart(tmp_path: Path) -> None:
    parent = tmp_path / "my-app"
    shutil.copytree(CHART / "examples" / "my-app", parent)
    shutil.copytree(CHART, parent / "charts" / "jwt-sidecar", ignore=shutil.ignore_patterns("examples"))
    parent_values = load_values(parent / "values.yaml")
    for native in (True, False):
        values = deep_merge(parent_values, {"jwt-sidecar": {"sidecar": {"nativeSidecar": native}}})
        docs = split_docs(render_chart(parent, values))
        for doc in docs:
            validate_manifest(doc)
        assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Deployment", "Service"]
        _, cfg = config_of(docs)
        assert cfg["upstream"] == "http://127.0.0.1:8080"
        dep = one(docs, "Deployment")
        spec = dep["spec"]["template"]["spec"]
        side = sidecar_container(spec)
        if native:
            assert [c["name"] for c in spec["initContainers"]] == ["jwt-sidecar"]
            assert side["restartPolicy"] == "Always"
            assert [c["name"] for c in spec["containers"]] == ["my-app"]
        else:
            assert not spec.get("initContainers")
            assert [c["name"] for c in spec["containers"]] == ["jwt-sidecar", "my-app"]
        cm_name = next(d for d in docs if d["kind"] == "ConfigMap")["metadata"]["name"]
        assert {"name": "jwt-sidecar-config", "configMap": {"name": cm_name}} in spec["volumes"]
        assert spec["terminationGracePeriodSeconds"] == 25 + 10
        annotations = dep["spec"]["template"]["metadata"]["annotations"]
        assert annotations["jwt-sidecar/config-reload"] == "live"  # live reload: no checksum, no rollout
        assert "checksum/jwt-sidecar-config" not in annotations
        svc = one(docs, "Service")
        assert svc["spec"]["ports"][0]["targetPort"] == "sidecar-http"


# --- monitoring: every metric named exists -------------------------------------------------------------

_PROMQL_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (Grafana $variables allowed)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"'(?:[^'\\]|\\.)*'", "''", e)
    e = re.sub(r"\{[^{}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # range selectors
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\boffset\s+\S+", " ", e)
    e = re.sub(r"\$\w+", " ", e)
    e = re.sub(r"(?<![\w:])\d+(\.\d+)?([eE][+-]?\d+)?", " ", e)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        if e[m.end() :].lstrip().startswith("("):  # a function or an aggregation
            continue
        if m.group(0).lower() in _PROMQL_KEYWORDS:
            continue
        names.add(m.group(0))
    return names


def test_promql_metric_names_extractor() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (namespace, le) (rate(sidecar_validation_duration_seconds_bucket"
        '{job=~"$job",x="a{b}"}[$__rate_interval]))) > 1e3 and on (pod) time() - sidecar_ready offset 5m '
        "unless sum(x_total) by (reason)"
    )
    assert promql_metric_names(expr) == {
        "sidecar_validation_duration_seconds_bucket",
        "sidecar_ready",
        "x_total",
    }


def exposed_names(exposition: str) -> tuple[set[str], dict[str, str]]:
    """(names a query may use, family -> type) from a Prometheus text exposition."""
    names: set[str] = set()
    types: dict[str, str] = {}
    for fam in text_string_to_metric_families(exposition):
        types[fam.name] = fam.type
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_sum", "_count"),
            "summary": ("_sum", "_count", ""),
        }.get(fam.type, ("",))
        names.update(fam.name + s for s in suffixes)
        names.update(s.name for s in fam.samples)
    return names, types


def check_names(used: set[str], exposition: str, where: str) -> None:
    names, types = exposed_names(exposition)
    for name in sorted(used):
        assert name.startswith("sidecar_"), f"{where}: {name} is not a sidecar metric"
        assert name in names, f"{where}: {name} is not exported by the sidecar"
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and name.removesuffix(suffix) in types:
                assert types[name.removesuffix(suffix)] in ("histogram", "summary"), name


def alert_and_dashboard_exprs(docs: list[dict[str, Any]]) -> dict[str, str]:
    exprs = {}
    for rule in (r for g in one(docs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]):
        exprs[f"alert {rule['alert']}"] = rule["expr"]
    dash_cm = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["labels"].get("grafana_dashboard") == "1")
    dashboard = json.loads(dash_cm["data"]["jwt-sidecar.json"])
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            exprs[f"panel {panel['title']} {target['refId']}"] = target["expr"]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            exprs[f"variable {var['name']}"] = re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", var["definition"])
    return exprs


def static_exposition() -> str:
    from sidecar.metrics import Metrics

    m = Metrics()
    m.provider("default")
    return generate_latest(m.registry).decode()


def test_alerts_and_dashboard_content(rendered_ci: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered_ci["monitoring-values.yaml"]
    rule = one(docs, "PrometheusRule")
    alerts = {r["alert"]: r for r in rule["spec"]["groups"][0]["rules"]}
    assert set(alerts) >= EXPECTED_ALERTS
    assert alerts["JwtSidecarClockSkew"]["expr"].rstrip().endswith("> 20")  # threshold from values
    assert "> 16200" in alerts["JwtSidecarJwksNearMaxStale"]["expr"]  # 75 % of jwks.max_stale 6h
    assert "< 0.95" in alerts["JwtSidecarAuthSuccessRateLow"]["expr"]
    assert all(r["labels"]["team"] == "identity" for n, r in alerts.items() if n in EXPECTED_ALERTS)
    # Prometheus templating survives Helm templating
    assert all("{{ $labels." in r["annotations"]["description"] for n, r in alerts.items() if n in EXPECTED_ALERTS)
    assert 'job="shop-jwt-sidecar-metrics"' in alerts["JwtSidecarBulkExpiration"]["expr"]
    dash_cm = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["labels"].get("grafana_dashboard") == "1")
    assert dash_cm["metadata"]["labels"]["grafana_folder"] == "identity"
    titles = {p["title"] for p in json.loads(dash_cm["data"]["jwt-sidecar.json"])["panels"]}
    for wanted in (
        "Auth failures by reason",
        "Success rate",
        "Expired-grace usage",
        "Key set age",
        "Key rotation (time since last change)",
        "Clock skew",
        "Validation latency",
    ):
        assert wanted in titles
    sm = one(docs, "ServiceMonitor")
    metrics_svc = next(s for s in by_kind(docs, "Service") if s["metadata"]["name"].endswith("-metrics"))
    assert sm["spec"]["endpoints"][0]["port"] == metrics_svc["spec"]["ports"][0]["name"] == "admin"
    assert metrics_svc["spec"]["ports"][0]["targetPort"] == "sidecar-admin"
    for k, v in sm["spec"]["selector"]["matchLabels"].items():
        assert metrics_svc["metadata"]["labels"][k] == v
    main_svc = next(s for s in by_kind(docs, "Service") if not s["metadata"]["name"].endswith("-metrics"))
    assert main_svc["metadata"]["labels"]["app.kubernetes.io/component"] != "metrics"


def test_alert_and_dashboard_metrics_are_declared_in_metrics_py(
    rendered_ci: dict[str, list[dict[str, Any]]],
) -> None:
    """Against sidecar/metrics.py's registry (no process needed)."""
    exposition = static_exposition()
    for name in ("monitoring-values.yaml", "embedded-monitoring-values.yaml"):
        for where, expr in alert_and_dashboard_exprs(rendered_ci[name]).items():
            used = promql_metric_names(expr)
            assert used, f"{where}: no metric found in {expr!r}"
            check_names(used, exposition, f"{name} {where}")


# --- the same against a running sidecar ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def running_sidecar(tmp_path: Path) -> Iterator[int]:
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update({"kid": "test-key-1", "use": "sig", "alg": "RS256"})
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk]}))
    listen, admin, upstream = free_port(), free_port(), free_port()
    log = (tmp_path / "sidecar.log").open("w+")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sidecar",
            "run",
            "--jwks-file",
            str(jwks),
            "--issuer",
            "https://issuer.test",
            "--audience",
            "api",
            "--upstream",
            f"http://127.0.0.1:{upstream}",
            "--listen",
            f"127.0.0.1:{listen}",
            "--admin-listen",
            f"127.0.0.1:{admin}",
        ],
        cwd=ROOT,
        env=_repo_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield admin
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        log.close()


def test_alert_and_dashboard_metrics_are_exported_by_a_running_sidecar(
    running_sidecar: int, rendered_ci: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{running_sidecar}/metrics"
    deadline = time.monotonic() + 15
    exposition = None
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                exposition = resp.read().decode()
                break
        except (urllib.error.URLError, ConnectionError, OSError) as e:
            last_error = e
            time.sleep(0.2)
    log = (tmp_path / "sidecar.log").read_text()
    assert exposition is not None, f"GET {url} never answered ({last_error}); sidecar output:\n{log[-3000:]}"
    for name in ("monitoring-values.yaml", "embedded-monitoring-values.yaml"):
        for where, expr in alert_and_dashboard_exprs(rendered_ci[name]).items():
            check_names(promql_metric_names(expr), exposition, f"{name} {where}")
