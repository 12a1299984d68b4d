"""Several workers on one port: each serves, metrics are summed, admin actions reach every worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sidecar.devtools.issuer import DevIssuer
from sidecar.workers import cpu_limit
from tests.conftest import Upstream, sidecar_args
from tests.support import ROOT, SidecarProcess, request, scrape


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

        r = request(
            sc.admin, method="POST", path=f"/admin/keys/default/{old.kid}/revoke", headers={"X-Sidecar-Admin": "1"}
        )
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


SUPERVISOR = """
import os, signal, sys, tempfile, time
from pathlib import Path
from sidecar.responses import setup_logging
from sidecar.workers import run_workers

log = Path(sys.argv[1])
mode = sys.argv[2]
setup_logging("info")


def note(what):
    with open(log, "a") as f:
        f.write(f"{what} {os.getpid()}\\n")


def wait_for_sigterm():
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        time.sleep(0.1)


def keys(started):
    note("keys")
    started()
    wait_for_sigterm()


def worker(started):
    note("worker")
    if mode == "dies_at_start":
        return 3
    started()
    if log.read_text().count("worker") < 4:
        return 3  # dies after serving: restarted, however often
    wait_for_sigterm()


sys.exit(run_workers(1, tempfile.mkdtemp(), worker, keys, pause=0.05, max_pause=0.2, attempts=3))
"""


def _supervise(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / "children.log"
    proc = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, str(log), mode], cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.PIPE
    )
    return proc, log


def test_a_worker_that_dies_before_it_serves_is_retried_with_backoff_then_given_up_on(tmp_path: Path) -> None:
    proc, log = _supervise(tmp_path, "dies_at_start")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    lines = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    retries = [line for line in lines if line["msg"] == "worker died; restarting it"]
    assert [r["pause"] for r in retries] == [0.05, 0.1]  # doubling
    assert all(r["during_start_up"] for r in retries)
    gave_up = [line for line in lines if line["msg"] == "a child keeps dying before it serves; giving up"]
    assert len(gave_up) == 1 and gave_up[0]["slot"] == "worker 0" and gave_up[0]["attempts"] == 3
    started = log.read_text().split("\n")
    assert sum(line.startswith("worker") for line in started) == 3
    keys_pid = int(next(line for line in started if line.startswith("keys")).split()[1])
    with pytest.raises(ProcessLookupError):  # the keys process was stopped and reaped too
        os.kill(keys_pid, 0)


def test_a_worker_that_dies_after_serving_is_always_restarted(tmp_path: Path) -> None:
    proc, log = _supervise(tmp_path, "dies_after_serving")
    deadline = time.monotonic() + 20
    while (not log.exists() or log.read_text().count("worker") < 4) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert proc.poll() is None  # 3 deaths after serving, more than `attempts` allows at start-up: no giving up
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert "giving up" not in err.decode()
