"""SIGTERM on a real sidecar under steady load: not ready at once, in-flight requests finish, exit 0."""

from __future__ import annotations

import http.client
import signal
import threading
import time

from sidecar.devtools.issuer import DevIssuer
from tests.conftest import Upstream, sidecar_args
from tests.support import SidecarProcess, request


def test_sigterm_under_load_loses_no_request_in_flight_and_exits_0_with_two_workers(
    issuer: DevIssuer, upstream: Upstream
) -> None:
    sc = SidecarProcess(sidecar_args(issuer, upstream, "--log-level", "warning", "--workers", "2")).start()
    token = issuer.mint(ttl=600)
    outcomes: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", sc.port, timeout=10)
            try:
                conn.request("GET", "/work?echo_sleep=0.4", headers={"Authorization": f"Bearer {token}"})
            except OSError:
                with lock:
                    outcomes.append("refused")  # the listener is closed: never accepted, nothing lost
                conn.close()
                time.sleep(0.02)
                continue
            try:
                status = conn.getresponse().status
                with lock:
                    outcomes.append(str(status))
            except (OSError, http.client.HTTPException):
                with lock:
                    outcomes.append("lost")  # accepted, then dropped: this is what must never happen
            finally:
                conn.close()

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    sc.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    time.sleep(0.1)
    assert request(sc.admin, path="/readyz").status == 503  # not ready at once, while draining
    returncode = sc.proc.wait(15)  # type: ignore[union-attr]
    stop.set()
    for t in threads:
        t.join(15)
    sc.stop()
    assert returncode == 0
    assert "lost" not in outcomes, outcomes
    assert outcomes.count("200") >= 8
    assert set(outcomes) <= {"200", "refused"}
