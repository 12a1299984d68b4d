"""The chart's kubernetesIssuer option: a provider for this cluster's service-account tokens.

Rendered offline like tests/test_helm.py (helm-python-sdk, kubernetes-validate strict). What matters: the
sidecar gets its own short-lived projected token and the cluster CA, the app container gets neither, the
rendered config passes `check-config`, and the RBAC binding appears only when asked for.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.test_helm import (
    CHART,
    CI_DIR,
    NAMESPACE,
    _repo_env,
    by_kind,
    config_of,
    deep_merge,
    load_values,
    one,
    pod_spec,
    render,
    render_chart,
    sidecar_container,
    split_docs,
    validate_manifest,
)

DIR = "/var/run/secrets/jwt-sidecar/kubernetes"
K8S_ONLY = {
    "app": {"image": {"repository": "ghcr.io/example/orders-api", "tag": "1.4.2"}},
    "kubernetesIssuer": {"enabled": True, "audiences": ["orders-api"]},
}


def _check_config(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "check-config", str(path)],
        cwd=CHART.parent,
        env=_repo_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_kubernetes_issuer_alone_renders_a_provider_the_sidecar_accepts(tmp_path: Path) -> None:
    docs = render(K8S_ONLY)
    for doc in docs:
        validate_manifest(doc)
    text, cfg = config_of(docs)
    assert cfg["providers"] == [
        {
            "name": "kubernetes",
            "issuer": "https://kubernetes.default.svc.cluster.local",
            "audiences": ["orders-api"],
            "jwks_url": "https://kubernetes.default.svc/openid/v1/jwks",
            "ca_file": f"{DIR}/ca.crt",
            "jwks_auth": {"bearer_token_file": f"{DIR}/token"},
        }
    ]
    proc = _check_config(text, tmp_path)
    assert proc.returncode == 0, proc.stderr
    effective = yaml.safe_load(proc.stdout)["providers"][0]
    assert effective["jwks_auth"] == {"bearer_token_file": f"{DIR}/token"}
    assert effective["ca_file"] == f"{DIR}/ca.crt"


def test_only_the_sidecar_container_gets_the_token_and_the_ca() -> None:
    docs = render(K8S_ONLY)
    spec = pod_spec(docs)
    # The automounted token stays off: the app container must never hold a credential for the API server.
    assert spec["automountServiceAccountToken"] is False
    volume = next(v for v in spec["volumes"] if v["name"] == "jwt-sidecar-kubernetes-issuer")
    sources = volume["projected"]["sources"]
    assert {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}} in sources
    assert {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}} in sources
    side = sidecar_container(spec)
    assert {"name": "jwt-sidecar-kubernetes-issuer", "mountPath": DIR, "readOnly": True} in side["volumeMounts"]
    for c in spec["containers"]:
        if c["name"] != "jwt-sidecar":
            assert all(m["name"] != "jwt-sidecar-kubernetes-issuer" for m in c.get("volumeMounts", []))


def test_the_fetch_token_audience_and_lifetime_are_configurable() -> None:
    values = deep_merge(
        K8S_ONLY,
        {"kubernetesIssuer": {"fetchToken": {"audience": "https://kubernetes.default.svc", "expirationSeconds": 600}}},
    )
    volume = next(v for v in pod_spec(render(values))["volumes"] if v["name"] == "jwt-sidecar-kubernetes-issuer")
    assert volume["projected"]["sources"][0] == {
        "serviceAccountToken": {"path": "token", "expirationSeconds": 600, "audience": "https://kubernetes.default.svc"}
    }


def test_kubernetes_issuer_is_added_beside_configured_providers_with_its_own_issuer(tmp_path: Path) -> None:
    minimal = load_values(CI_DIR / "minimal-values.yaml")
    values = deep_merge(
        minimal,
        {
            "kubernetesIssuer": {
                "enabled": True,
                "audiences": ["a", "b"],
                "name": "cluster",
                "issuer": "https://oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE",
            }
        },
    )
    text, cfg = config_of(render(values))
    assert [p.get("name") for p in cfg["providers"]] == [None, "cluster"]
    assert cfg["providers"][1]["issuer"].startswith("https://oidc.eks.")
    assert cfg["providers"][1]["audiences"] == ["a", "b"]
    assert _check_config(text, tmp_path).returncode == 0


def test_the_rbac_binding_is_rendered_only_when_asked_for() -> None:
    assert not by_kind(render(K8S_ONLY), "ClusterRoleBinding")
    docs = render(deep_merge(K8S_ONLY, {"kubernetesIssuer": {"rbac": {"create": True}}}))
    crb = one(docs, "ClusterRoleBinding")
    validate_manifest(crb)
    assert crb["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "system:service-account-issuer-discovery",
    }
    sa = one(docs, "ServiceAccount")["metadata"]["name"]
    assert crb["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == sa


def test_helm_lint_is_clean_with_kubernetes_issuer() -> None:
    values = deep_merge(K8S_ONLY, {"kubernetesIssuer": {"rbac": {"create": True}}})
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
    assert not report["errors"] and not [m for m in report["messages"] if m["severity"] >= 2], report


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"kubernetesIssuer": {"enabled": True}}, "audiences"),
        ({"kubernetesIssuer": {"enabled": True, "audiences": []}}, "audiences"),
        (
            {"kubernetesIssuer": {"enabled": True, "audiences": ["x"], "issuer": "http://k8s"}},
            "/kubernetesIssuer/issuer",
        ),
        (
            {"kubernetesIssuer": {"enabled": True, "audiences": ["x"], "fetchToken": {"expirationSeconds": 60}}},
            "expirationSeconds",
        ),
        ({"kubernetesIssuer": {"enable": True}}, "'enable' not allowed"),
        ({"kubernetesIssuer": {"enabled": False, "audiences": ["x"]}}, "providers"),
    ],
)
def test_schema_rejects_bad_kubernetes_issuer_values(override: dict[str, Any], expected: str) -> None:
    values = deep_merge({"app": K8S_ONLY["app"]}, override)
    with pytest.raises(helm.HelmValuesError) as err:
        render(values)
    assert expected in str(err.value)


def test_key_source_options_are_accepted_in_configured_providers(tmp_path: Path) -> None:
    provider = {
        "issuer": "https://idp.corp.internal/",
        "audiences": ["api"],
        "jwks_url": "https://idp.corp.internal/jwks",
        "ca_file": "/etc/idp-ca/ca.pem",
        "jwks_auth": {"bearer_token_file": "/var/run/secrets/idp/token"},
    }
    values = deep_merge(load_values(CI_DIR / "minimal-values.yaml"), {"sidecar": {"config": {"providers": [provider]}}})
    text, cfg = config_of(render(values))
    assert cfg["providers"] == [provider]
    assert _check_config(text, tmp_path).returncode == 0


def test_embedded_mode_carries_the_volume_and_mount_into_the_parent_chart(tmp_path: Path) -> None:
    parent = tmp_path / "my-app"
    shutil.copytree(CHART / "examples" / "my-app", parent)
    shutil.copytree(CHART, parent / "charts" / "jwt-sidecar", ignore=shutil.ignore_patterns("examples"))
    values = deep_merge(
        load_values(parent / "values.yaml"),
        {"jwt-sidecar": {"kubernetesIssuer": {"enabled": True, "audiences": ["orders-api"], "rbac": {"create": True}}}},
    )
    docs = split_docs(render_chart(parent, values))
    for doc in docs:
        validate_manifest(doc)
    # The parent chart owns the service account: no binding is rendered for it.
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Deployment", "Service"]
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert any(v["name"] == "jwt-sidecar-kubernetes-issuer" for v in spec["volumes"])
    side = sidecar_container(spec)
    assert any(m["mountPath"] == DIR for m in side["volumeMounts"])
    _, cfg = config_of(docs)
    assert cfg["providers"][-1]["name"] == "kubernetes"


def test_the_worked_example_in_docs_renders_and_passes_check_config(tmp_path: Path) -> None:
    doc = (CHART.parent / "docs" / "interop.md").read_text()
    block = doc.split("# values-orders.yaml\n", 1)[1].split("```", 1)[0]
    docs = render(yaml.safe_load(block))
    for d in docs:
        validate_manifest(d)
    text, cfg = config_of(docs)
    assert [p["name"] for p in cfg["providers"]] == ["kubernetes"]
    proc = _check_config(text, tmp_path)
    assert proc.returncode == 0, proc.stderr
