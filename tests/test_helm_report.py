"""The chart tells enforced failures from reported ones (report mode, docs/policies.md)."""

from __future__ import annotations

import json
import re

from tests.test_helm import CI_DIR, by_kind, load_values, one, render


def test_alerts_on_refusals_never_read_the_reported_counter_and_one_info_alert_does() -> None:
    docs = render(load_values(CI_DIR / "monitoring-values.yaml"))
    alerts = {r["alert"]: r for r in one(docs, "PrometheusRule")["spec"]["groups"][0]["rules"]}
    reported = alerts.pop("JwtSidecarReportedFailures")
    assert reported["labels"]["severity"] == "info"
    assert "sidecar_auth_reported_total" in reported["expr"]
    assert re.search(r"> 1\s*$", reported["expr"])  # reportedPerMinute from values.yaml
    assert 'job="shop-jwt-sidecar-metrics"' in reported["expr"]
    assert "{{ $labels.reason }}" in reported["annotations"]["description"]
    assert not [name for name, r in alerts.items() if "sidecar_auth_reported_total" in r["expr"]]


def test_the_dashboard_shows_reported_failures_apart_from_refusals() -> None:
    docs = render(load_values(CI_DIR / "monitoring-values.yaml"))
    cm = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["labels"].get("grafana_dashboard") == "1")
    panels = {p["title"]: p for p in json.loads(cm["data"]["jwt-sidecar.json"])["panels"]}
    reported = panels["Reported failures by reason (report mode: forwarded)"]
    assert ["sidecar_auth_reported_total" in t["expr"] for t in reported["targets"]] == [True]
    refused = panels["Auth failures by reason"]
    assert all("sidecar_auth_reported_total" not in t["expr"] for t in refused["targets"])
    legends = {t["legendFormat"] for t in panels["Verified vs rejected"]["targets"]}
    assert {"rejected", "reported (forwarded)"} <= legends
    ids = [p["id"] for p in json.loads(cm["data"]["jwt-sidecar.json"])["panels"]]
    assert len(ids) == len(set(ids))
