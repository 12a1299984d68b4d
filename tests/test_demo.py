"""`sidecar demo` prints curl lines that work as printed."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_demo_prints_curl_lines_that_work() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 30
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if line.startswith("# Ctrl-C") or not line:
                break
        curls = [line.strip() for line in lines if line.startswith("curl ")]
        assert len(curls) == 7, "".join(lines)

        def run(cmd: str) -> str:
            return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=20).stdout

        # the lines mint their tokens when they run, so they keep working long after the demo started
        assert not any("eyJ" in c for c in curls) and sum("/token.txt?" in c for c in curls) == 3
        valid, expired, grace, missing, preflight, public, admin = (run(c) for c in curls)
        assert '"Authorization", "Bearer ' in valid and '"X-Auth-Subject", "alice"' in valid
        assert "HTTP/1.1 401" in expired and '"reason": "expired"' in expired
        assert "X-Auth-Token-Expired-Seconds" in grace
        assert "HTTP/1.1 401" in missing and 'WWW-Authenticate: Bearer realm="sidecar"' in missing
        assert "HTTP/1.1 204" in preflight and "Access-Control-Allow-Origin: http://localhost:3000" in preflight
        assert '"path": "/public/info"' in public
        assert '"ready": true' in admin and 'sidecar_auth_failures_total{reason="expired"} 1.0' in admin
        assert "}\nsidecar_auth" in admin, admin  # readyz's answer ends its own line
    finally:
        proc.terminate()
        proc.wait(10)
