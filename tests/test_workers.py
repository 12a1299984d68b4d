"""Several workers on one port: each serves, metrics are summed, admin actions reach every worker."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from sidecar.devtools.issuer import DevIssuer
from sidecar.workers import cpu_limit
from tests.conftest import Upstream, sidecar_args
from tests.support import SidecarProcess, request, scrape


def test_two_workers_share_the_port_and_their_metrics_are_summed(fresh_issuer: DevIssuer, upstream: Upstream) -> None:
    fresh_issuer.rotate()  # two keys: one will be revoked
    old = fresh_issuer.keys[0]
    sc = SidecarProcess(sidecar_args(fresh_issuer, upstream, "--workers", "2", "--log-level", "warning")).start()
    try:
        # the pod's keys process fetched the keys once for both workers
        time.sleep(0.5)
        assert sc.metric("sidecar_jwks_fetches_total", provider="default", result="success") == 1
        assert fresh_issuer.jwks_fetches == 1
        tokens = [fresh_issuer.mint(key=old, sub=f"u{i}") for i in range(30)]
        for t in tokens:  # a new connection each: the kernel spreads them over both workers
            assert request(sc.url, path="/w", headers={"Authorization": f"Bearer {t}"}).status == 200
        assert sc.metric("sidecar_auth_success_total") == 30

        r = request(sc.admin, method="POST", path=f"/admin/keys/default/{old.kid}/revoke")
        assert r.status == 200 and r.json()["was_trusted"] is True
        time.sleep(1.0)  # every worker has the new key state within a second (in practice: milliseconds)
        for t in tokens[:10]:  # cached in either worker before: refused by both now
            assert request(sc.url, path="/w", headers={"Authorization": f"Bearer {t}"}).status == 401
        assert request(sc.url, path="/w", headers={"Authorization": f"Bearer {fresh_issuer.mint()}"}).status == 200
        families = scrape(sc.admin)
        assert families['sidecar_auth_failures_total{reason="unknown_kid"}'] == 10
    finally:
        assert sc.stop() == 0


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "150000 100000"}, 2),
        ({"cpu.max": "50000 100000"}, 1),
        ({"cpu.max": "max 100000"}, None),
        ({"cpu/cpu.cfs_quota_us": "100000", "cpu/cpu.cfs_period_us": "100000"}, 1),
        ({}, None),
    ],
)
def test_the_default_worker_count_follows_the_cgroup_cpu_quota(
    tmp_path: Path, files: dict[str, str], expected: int | None
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    allowed = len(os.sched_getaffinity(0))
    assert cpu_limit(tmp_path) == (min(expected, allowed) if expected else allowed)
