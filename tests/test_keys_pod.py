"""One key state per pod: 2 and 3 real workers, a real JWKS server that counts its requests, and a clock
the test moves for the whole pod at once (`SIDECAR_TEST_CLOCK_FILE`, test-only)."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sidecar.devtools.issuer import DevIssuer, new_key
from tests.conftest import Upstream, sidecar_args
from tests.support import ROOT, SidecarProcess, request, scrape

REFRESH, MAX_STALE, COOLDOWN = 300, 3600, 2.0


class PodClock:
    """The offset every process of the pod adds to its clocks; replaced atomically, as OffsetClock expects."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "clock-offset"
        self.offset = 0.0
        self._write()

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(repr(self.offset))
        os.replace(tmp, self.path)

    def advance(self, seconds: float) -> None:
        self.offset += seconds
        self._write()

    def now(self) -> float:
        return time.time() + self.offset


def start_pod(
    issuer: DevIssuer,
    upstream: Upstream,
    clock: PodClock,
    workers: int,
    *extra: str,
    wait: str = "/readyz",
    url_source: bool = True,
) -> SidecarProcess:
    args = sidecar_args(
        issuer,
        upstream,
        "--workers",
        str(workers),
        "--jwks-refresh",
        str(REFRESH),
        "--jwks-max-stale",
        str(MAX_STALE),
        "--jwks-refetch-cooldown",
        str(COOLDOWN),
        "--log-level",
        "debug",  # each worker says when it serves (at info, the pod says it once)
        *extra,
    )
    if not url_source:
        at = args.index("--jwks-url")
        del args[at : at + 2]
    return SidecarProcess(args, env={"SIDECAR_TEST_CLOCK_FILE": str(clock.path)}).start(wait=wait)


@pytest.fixture
def clock(tmp_path: Path) -> PodClock:
    return PodClock(tmp_path)


@pytest.fixture
def pods() -> Iterator[list[SidecarProcess]]:
    started: list[SidecarProcess] = []
    yield started
    for sc in started:
        assert sc.stop() == 0, sc.logs()[-3000:]


def status(sc: SidecarProcess, token: str) -> tuple[int, str | None]:
    """One request on a new connection: the kernel spreads connections over the workers."""
    r = request(sc.url, path="/api", headers={"Authorization": f"Bearer {token}"})
    return r.status, None if r.status == 200 else r.json().get("reason")


def statuses(sc: SidecarProcess, token: str, n: int = 24) -> set[tuple[int, str | None]]:
    return {status(sc, token) for _ in range(n)}


def ready_codes(sc: SidecarProcess, n: int = 12) -> set[int]:
    return {request(sc.admin, path="/readyz").status for _ in range(n)}


def children(sc: SidecarProcess, role: str) -> dict[str, int]:
    """The live pid of each slot of a role ("worker" or "keys"), from the supervisor's log."""
    out: dict[str, int] = {}
    for line in sc.log_lines():
        if line.get("msg") == "child started" and line.get("role") == role:
            out[str(line["slot"])] = int(line["pid"])
    return out


def wait_for(what: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def listening(sc: SidecarProcess, pids: set[int]) -> bool:
    """Whether every given worker has logged that it listens."""
    up = {line.get("pid") for line in sc.log_lines() if line.get("msg") in ("listening", "worker serving")}
    return pids <= up


def replace_workers(sc: SidecarProcess, slots: list[str]) -> None:
    """SIGKILL these workers and wait until their replacements listen."""
    before = children(sc, "worker")
    for slot in slots:
        os.kill(before[slot], signal.SIGKILL)
    wait_for(lambda: all(children(sc, "worker")[slot] != before[slot] for slot in slots))
    wait_for(lambda: listening(sc, {children(sc, "worker")[slot] for slot in slots}))


def advance_to_max_stale(sc: SidecarProcess, clock: PodClock, margin: float) -> None:
    """Move the pod's clock to `margin` seconds before the key set's refresh + max_stale ends."""
    age = request(sc.admin, path="/admin/keys").json()[0]["age_seconds"]
    clock.advance(REFRESH + MAX_STALE - age - margin)


@pytest.mark.parametrize("workers", [2, 3])
def test_the_pod_fetches_once_at_start_and_once_per_refresh_interval(
    fresh_issuer: DevIssuer, upstream: Upstream, clock: PodClock, pods: list[SidecarProcess], workers: int
) -> None:
    sc = start_pod(fresh_issuer, upstream, clock, workers)
    pods.append(sc)
    assert statuses(sc, fresh_issuer.mint(now=clock.now())) == {(200, None)}
    assert fresh_issuer.jwks_fetches == 1
    clock.advance(REFRESH)  # due for every worker at once: still one fetch for the pod
    wait_for(lambda: fresh_issuer.jwks_fetches >= 2)
    time.sleep(1.0)
    assert fresh_issuer.jwks_fetches == 2
    clock.advance(REFRESH / 2)
    time.sleep(1.0)
    assert fresh_issuer.jwks_fetches == 2
    families = scrape(sc.admin)
    assert families['sidecar_jwks_fetches_total{provider="default",result="success"}'] == 2


@pytest.mark.parametrize("workers", [2, 3])
def test_a_random_kid_flood_costs_at_most_one_fetch_per_cooldown_for_the_whole_pod(
    fresh_issuer: DevIssuer, upstream: Upstream, clock: PodClock, pods: list[SidecarProcess], workers: int
) -> None:
    sc = start_pod(fresh_issuer, upstream, clock, workers)
    pods.append(sc)
    attacker = new_key("RS256")
    forged = []
    for _ in range(60):  # minted before the flood, so the flood is only requests
        attacker.kid = uuid.uuid4().hex
        forged.append(fresh_issuer.mint(key=attacker, now=clock.now()))
    answers: list[tuple[int, str | None]] = []
    lock = threading.Lock()
    duration = 4.0
    start = time.monotonic()

    def flood(offset: int) -> None:
        i = offset
        while time.monotonic() - start < duration:
            answer = status(sc, forged[i % len(forged)])
            i += 1
            with lock:
                answers.append(answer)

    threads = [threading.Thread(target=flood, args=(k * 15,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    elapsed = time.monotonic() - start
    assert len(answers) >= 20 and set(answers) == {(401, "unknown_kid")}
    refetches = fresh_issuer.jwks_fetches - 1
    assert 1 <= refetches <= 1 + elapsed / COOLDOWN, (refetches, elapsed)
    time.sleep(COOLDOWN + 1)  # the deferred refetch the flood's last suppressed kid left behind, and no more
    assert fresh_issuer.jwks_fetches - 1 <= 2 + elapsed / COOLDOWN
    families = scrape(sc.admin)
    fetched = families['sidecar_jwks_unknown_kid_refetches_total{outcome="fetched",provider="default"}']
    suppressed = families['sidecar_jwks_unknown_kid_refetches_total{outcome="suppressed",provider="default"}']
    assert fetched == fresh_issuer.jwks_fetches - 1
    assert len(answers) - 4 * fetched <= suppressed <= len(answers)  # a request either joined a fetch or was suppressed


@pytest.mark.parametrize("workers", [2, 3])
def test_a_rotated_kid_costs_one_fetch_whichever_workers_see_it(
    fresh_issuer: DevIssuer, upstream: Upstream, clock: PodClock, pods: list[SidecarProcess], workers: int
) -> None:
    sc = start_pod(fresh_issuer, upstream, clock, workers)
    pods.append(sc)
    fresh_issuer.rotate()
    tokens = [fresh_issuer.mint(sub=f"u{i}", now=clock.now()) for i in range(24)]
    results: list[tuple[int, str | None]] = []
    threads = [threading.Thread(target=lambda t=t: results.append(status(sc, t))) for t in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [(200, None)] * len(tokens), (results, sc.logs()[-4000:])
    assert statuses(sc, fresh_issuer.mint(now=clock.now())) == {(200, None)}
    assert fresh_issuer.jwks_fetches == 2  # the start-up fetch and one refetch, for every worker


def test_an_outage_turns_every_worker_to_503_at_the_same_moment_at_max_stale(
    fresh_issuer: DevIssuer, upstream: Upstream, clock: PodClock, pods: list[SidecarProcess]
) -> None:
    sc = start_pod(fresh_issuer, upstream, clock, 3)
    pods.append(sc)
    fresh_issuer.outage = "500"
    clock.advance(REFRESH + 1)
    wait_for(lambda: fresh_issuer.jwks_fetches >= 2)  # the failed refresh
    token = fresh_issuer.mint(now=clock.now(), ttl=2 * MAX_STALE)
    assert statuses(sc, token) == {(200, None)}

    # A worker restarted during the outage keeps the pod's fetch time: it cannot fetch, and it is not
    # fresher (or staler) than the others.
    replace_workers(sc, ["worker 1"])

    advance_to_max_stale(sc, clock, margin=10)  # just inside refresh + max_stale after the last success
    assert statuses(sc, token, 30) == {(200, None)}
    assert ready_codes(sc) == {200}
    listings = {json.dumps(request(sc.admin, path="/admin/keys").json()[0]["keys"]) for _ in range(10)}
    assert len(listings) == 1  # every worker lists the same keys

    clock.advance(12)  # just past it: every worker at once
    assert statuses(sc, token, 30) == {(503, "keys_unavailable")}
    assert ready_codes(sc) == {503}
    stale = scrape(sc.admin)['sidecar_jwks_stale_seconds{provider="default"}']
    assert MAX_STALE < stale < MAX_STALE + 30

    fresh_issuer.outage = "off"
    clock.advance(COOLDOWN + 5)  # the retry is due
    wait_for(lambda: ready_codes(sc, 6) == {200})
    assert statuses(sc, fresh_issuer.mint(now=clock.now())) == {(200, None)}


def test_a_killed_worker_is_replaced_by_one_that_serves_at_once_without_a_fetch(
    fresh_issuer: DevIssuer, upstream: Upstream, clock: PodClock, pods: list[SidecarProcess]
) -> None:
    sc = start_pod(fresh_issuer, upstream, clock, 2)
    pods.append(sc)
    fresh_issuer.outage = "500"  # a worker that had to fetch would have no keys
    token = fresh_issuer.mint(now=clock.now())
    for _ in range(2):
        replace_workers(sc, ["worker 0", "worker 1"])
        assert statuses(sc, token) == {(200, None)}  # every worker is a new one
        assert ready_codes(sc) == {200}
    assert fresh_issuer.jwks_fetches == 1


def test_a_killed_keys_process_is_restarted_and_the_workers_keep_the_set_meanwhile(
    fresh_issuer: DevIssuer, upstream: Upstream, clock: PodClock, pods: list[SidecarProcess]
) -> None:
    old = fresh_issuer.signing
    sc = start_pod(fresh_issuer, upstream, clock, 2)
    pods.append(sc)
    keys = children(sc, "keys")["keys"]
    os.kill(keys, signal.SIGSTOP)  # hung: the workers keep answering from the set they have
    try:
        assert statuses(sc, fresh_issuer.mint(now=clock.now())) == {(200, None)}
    finally:
        os.kill(keys, signal.SIGKILL)
    wait_for(lambda: children(sc, "keys")["keys"] != keys)
    time.sleep(1.0)
    assert fresh_issuer.jwks_fetches == 1  # the restarted fetcher took over the set: no fetch
    assert statuses(sc, fresh_issuer.mint(now=clock.now())) == {(200, None)}

    # It also took over the schedule and the fetch time: the outage still ends at the same max_stale.
    fresh_issuer.outage = "500"
    advance_to_max_stale(sc, clock, margin=10)
    os.kill(children(sc, "keys")["keys"], signal.SIGKILL)
    assert statuses(sc, fresh_issuer.mint(key=old, now=clock.now())) == {(200, None)}
    clock.advance(12)
    assert statuses(sc, fresh_issuer.mint(key=old, now=clock.now())) == {(503, "keys_unavailable")}
    fresh_issuer.outage = "off"
    wait_for(lambda: ready_codes(sc, 6) == {200}, timeout=15)

    # A rotation asked for by both workers after the restart still costs one fetch.
    fetched = fresh_issuer.jwks_fetches
    fresh_issuer.rotate()
    assert statuses(sc, fresh_issuer.mint(now=clock.now())) == {(200, None)}
    assert fresh_issuer.jwks_fetches == fetched + 1


@pytest.mark.parametrize("workers", [2, 3])
def test_admin_refresh_fetches_once_and_revoke_reaches_every_worker(
    fresh_issuer: DevIssuer, upstream: Upstream, clock: PodClock, pods: list[SidecarProcess], workers: int
) -> None:
    fresh_issuer.rotate()
    old = fresh_issuer.keys[0]
    sc = start_pod(fresh_issuer, upstream, clock, workers)
    pods.append(sc)
    r = request(sc.admin, method="POST", path="/admin/keys/default/refresh", headers={"X-Sidecar-Admin": "1"})
    assert r.status == 200 and r.json()["refreshed"] is True
    assert fresh_issuer.jwks_fetches == 2
    token = fresh_issuer.mint(key=old, now=clock.now())
    assert statuses(sc, token) == {(200, None)}  # now cached in every worker
    r = request(sc.admin, method="POST", path=f"/admin/keys/default/{old.kid}/revoke", headers={"X-Sidecar-Admin": "1"})
    assert r.status == 200 and r.json()["was_trusted"] is True
    time.sleep(1.0)
    assert statuses(sc, token) == {(401, "unknown_kid")}
    for _ in range(6):
        kids = [k["kid"] for k in request(sc.admin, path="/admin/keys").json()[0]["keys"]]
        assert kids == [fresh_issuer.signing.kid]
    assert fresh_issuer.jwks_fetches == 3  # the revoked kid is unknown now: one refetch for the pod, not per worker


def readme_metrics() -> list[tuple[str, str]]:
    """The metrics table's rows, wherever the reference lives (README.md, or docs/ once it moves there)."""
    text = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))])
    return re.findall(r"^\| `(sidecar_\w+)` \| (counter|gauge|histogram) \|", text, re.M)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("source", ["file", "url_down"])
def test_every_metric_in_the_readme_has_a_sample_from_start_up(
    fresh_issuer: DevIssuer,
    upstream: Upstream,
    clock: PodClock,
    pods: list[SidecarProcess],
    tmp_path: Path,
    workers: int,
    source: str,
) -> None:
    config = tmp_path / "sidecar.yaml"
    config.write_text("route_metrics: true\n")
    extra = ["--config", str(config)]
    if source == "file":
        jwks = tmp_path / "jwks.json"
        jwks.write_text(json.dumps(fresh_issuer.jwks()))
        extra += ["--jwks-file", str(jwks)]
    else:
        fresh_issuer.outage = "500"  # no fetch succeeds: the series must exist anyway
    sc = start_pod(fresh_issuer, upstream, clock, workers, *extra, wait="/healthz", url_source=source != "file")
    pods.append(sc)
    time.sleep(0.5)
    text = request(sc.admin, path="/metrics").body.decode()
    samples = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    documented = set(readme_metrics())
    assert len(documented) >= 25
    for name, kind in documented:
        wanted = name + "_count" if kind == "histogram" else name
        assert wanted in samples, (name, workers, source)
    assert 'sidecar_clock_skew_seconds{provider="default"}' in text
