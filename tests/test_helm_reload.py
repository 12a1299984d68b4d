"""The chart with live reload: a config change leaves the pod template alone (no rollout); with
`sidecar.config.reload: false` the checksum annotation rolls the pods, as before."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.test_helm import (
    CHART,
    CI_DIR,
    CI_FILES,
    config_of,
    deep_merge,
    load_values,
    one,
    render,
    render_chart,
    split_docs,
    validate_manifest,
)


def template_annotations(docs: list[dict[str, Any]]) -> dict[str, str]:
    annotations: dict[str, str] = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    return annotations


def template(docs: list[dict[str, Any]]) -> Any:
    return one(docs, "Deployment")["spec"]["template"]


@pytest.fixture(scope="module")
def minimal() -> dict[str, Any]:
    return load_values(CI_DIR / "minimal-values.yaml")


def test_with_reload_a_config_change_leaves_the_pod_template_unchanged(minimal: dict[str, Any]) -> None:
    before = render(minimal)
    after = render(deep_merge(minimal, {"sidecar": {"config": {"leeway": "10s", "expired_grace": "5m"}}}))
    assert config_of(before)[1] != config_of(after)[1]  # the ConfigMap changes...
    assert template(before) == template(after)  # ...the pods do not roll
    annotations = template_annotations(after)
    assert annotations["jwt-sidecar/config-reload"] == "live"
    assert not [k for k in annotations if k.startswith("checksum/")]
    for doc in after:
        validate_manifest(doc)


@pytest.mark.parametrize("off", [False, "false", "off"])
def test_with_reload_off_the_checksum_rolls_the_pods(minimal: dict[str, Any], off: Any) -> None:
    values = deep_merge(minimal, {"sidecar": {"config": {"reload": off}}})
    docs = render(values)
    text, cfg = config_of(docs)
    assert str(cfg["reload"]).lower() in ("false", "off")
    annotations = template_annotations(docs)
    assert annotations["checksum/config"] == hashlib.sha256(text.rstrip("\n").encode()).hexdigest()
    assert "jwt-sidecar/config-reload" not in annotations
    changed = render(deep_merge(values, {"sidecar": {"config": {"leeway": "10s"}}}))
    assert template_annotations(changed)["checksum/config"] != annotations["checksum/config"]


def test_every_ci_file_renders_in_both_modes(minimal: dict[str, Any]) -> None:
    for path in CI_FILES:
        for reload in (True, False):
            docs = render(deep_merge(load_values(path), {"sidecar": {"config": {"reload": reload}}}))
            for doc in docs:
                validate_manifest(doc)
            if any(d["kind"] == "Deployment" for d in docs):
                annotations = template_annotations(docs)
                assert ("checksum/config" in annotations) is not reload, path.name


def test_embedded_mode_annotation_follows_reload(tmp_path: Path) -> None:
    parent = tmp_path / "my-app"
    shutil.copytree(CHART / "examples" / "my-app", parent)
    shutil.copytree(CHART, parent / "charts" / "jwt-sidecar", ignore=shutil.ignore_patterns("examples"))
    values = load_values(parent / "values.yaml")
    off = deep_merge(values, {"jwt-sidecar": {"sidecar": {"config": {"reload": False}}}})
    docs = split_docs(render_chart(parent, off))
    text, _ = config_of(docs)
    annotations = template_annotations(docs)
    assert annotations["checksum/jwt-sidecar-config"] == hashlib.sha256(text.rstrip("\n").encode()).hexdigest()
    live = template_annotations(split_docs(render_chart(parent, values)))
    assert live == {
        **{k: v for k, v in annotations.items() if k != "checksum/jwt-sidecar-config"},
        "jwt-sidecar/config-reload": "live",
    }


def test_the_monitoring_rules_alert_on_a_refused_reload() -> None:
    docs = render(load_values(CI_DIR / "monitoring-values.yaml"))
    rules = [r for d in docs if d["kind"] == "PrometheusRule" for g in d["spec"]["groups"] for r in g["rules"]]
    alert = next(r for r in rules if r.get("alert") == "JwtSidecarConfigReloadRefused")
    assert 'sidecar_config_reloads_total{result="error"' in alert["expr"]
    assert "{{ $labels.namespace }}" in alert["annotations"]["description"]
