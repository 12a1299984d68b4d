"""Small helpers for run.sh and bench.py: free ports, scenario defaults, readiness, the human report.

    runtool.py free-ports N                   N free loopback ports, space-separated
    runtool.py env SCENARIO                   shell `export` lines: defaults.json overridden by the environment
    runtool.py seconds 1m30s                  90
    runtool.py field FILE KEY                 one value from a JSON object file
    runtool.py wait-ready URL TIMEOUT [PID]   poll URL until 200 (fails early if PID dies)
    runtool.py report SCENARIO SUMMARY RSS    the short report (stdout) from k6's --summary-export + RSS samples
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULTS = HERE / "defaults.json"


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):  # hold them all until every one is chosen, so the N are distinct
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(int(s.getsockname()[1]))
    finally:
        for s in socks:
            s.close()
    return ports


def seconds(d: str) -> float:
    s = d.strip()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", s)
    if not parts or "".join(a + b for a, b in parts) != s:
        raise ValueError(f"not a duration: {d!r}")
    unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(a) * unit[b] for a, b in parts)


def scenario_env(scenario: str) -> dict[str, str]:
    defaults = json.loads(DEFAULTS.read_text()).get(scenario, {})
    out = {k: str(v) for k, v in defaults.items()}
    for k in list(out):
        if os.environ.get(k):
            out[k] = os.environ[k]
    return out


def get(url: str, timeout: float = 2) -> int:
    host, _, path = url.split("//", 1)[1].partition("/")
    conn = http.client.HTTPConnection(host, timeout=timeout)
    try:
        conn.request("GET", "/" + path)
        return conn.getresponse().status
    finally:
        conn.close()


def wait_ready(url: str, timeout: float, pid: int | None) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid is not None:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                print(f"process {pid} exited before {url} was ready", file=sys.stderr)
                return 1
        try:
            if get(url) == 200:
                return 0
        except OSError:
            pass
        time.sleep(0.1)
    print(f"{url} not ready after {timeout:g}s", file=sys.stderr)
    return 1


# --- report -----------------------------------------------------------------------------------------


def _ms(v: Any) -> str:
    return "-" if v is None else f"{v:.1f}"


def _rss(path: str) -> tuple[int, int, int, int] | None:
    """(first, max, last, samples) in KiB from `epoch rss_kib` lines."""
    try:
        values = [int(line.split()[1]) for line in Path(path).read_text().splitlines() if len(line.split()) == 2]
    except (OSError, ValueError):
        return None
    values = [v for v in values if v > 0]
    if not values:
        return None
    return values[0], max(values), values[-1], len(values)


def report(scenario: str, summary_path: str, rss_path: str) -> str:
    data = json.loads(Path(summary_path).read_text())
    m: dict[str, dict[str, Any]] = data.get("metrics", {})
    lines = [f"scenario: {scenario}"]
    env = {k: v for k, v in scenario_env(scenario).items()}
    if env:
        lines.append("settings: " + " ".join(f"{k}={v}" for k, v in sorted(env.items())))
    reqs = m.get("http_reqs", {})
    dur = m.get("http_req_duration", {})
    lines.append(
        f"requests: {reqs.get('count', 0)} total, {reqs.get('rate', 0):.1f}/s"
        f" (iterations {m.get('iterations', {}).get('count', 0)},"
        f" dropped {m.get('dropped_iterations', {}).get('count', 0)})"
    )
    lines.append(
        f"latency all (ms): p50 {_ms(dur.get('med'))}  p95 {_ms(dur.get('p(95)'))}  p99 {_ms(dur.get('p(99)'))}"
        f"  max {_ms(dur.get('max'))}"
    )
    classes = sorted({k.split("{expected:", 1)[1].rstrip("}") for k in m if "{expected:" in k})
    if classes:
        lines.append("")
        lines.append(f"{'class':<20}{'requests':>10}{'failed':>9}{'checks':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}")
        for c in classes:
            n = m.get(f"http_reqs{{expected:{c}}}", {}).get("count", "-")
            failed = m.get(f"http_req_failed{{expected:{c}}}")
            checks = m.get(f"checks{{expected:{c}}}")
            d = m.get(f"http_req_duration{{expected:{c}}}", {})
            f_txt = "-" if failed is None else str(failed.get("passes", 0))  # a Rate's passes = failed requests
            c_txt = "-" if checks is None else f"{100 * checks.get('value', 0):.1f}%"
            lines.append(
                f"{c:<20}{n!s:>10}{f_txt:>9}{c_txt:>9}{_ms(d.get('med')):>9}{_ms(d.get('p(95)')):>9}{_ms(d.get('p(99)')):>9}"
            )
    custom = [k for k in m if k in ("new_key_requests", "rotation_confirmed", "rotation_failed", "outage_observed",
                                     "recovery_observed", "not_ready_during_outage", "cold_exhausted")]
    if custom:
        lines.append("")
        lines.append("scenario counters: " + ", ".join(f"{k}={m[k].get('count', 0)}" for k in sorted(custom)))
    rss = _rss(rss_path)
    lines.append("")
    if rss:
        first, peak, last, n = rss
        lines.append(f"sidecar RSS (MiB): start {first / 1024:.1f}  max {peak / 1024:.1f}  end {last / 1024:.1f}"
                     f"  ({n} samples)")
    else:
        lines.append("sidecar RSS: no samples")
    crossed = []
    for name, metric in sorted(m.items()):
        for rule, bad in (metric.get("thresholds") or {}).items():
            if bad:
                crossed.append(f"{name} {rule}")
    lines.append("")
    if crossed:
        lines.append(f"thresholds: {len(crossed)} CROSSED")
        lines.extend(f"  FAILED {c}" for c in crossed)
    else:
        n_rules = sum(len(metric.get("thresholds") or {}) for metric in m.values())
        lines.append(f"thresholds: all {n_rules} hold")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[0], argv[1:]
    if cmd == "free-ports":
        print(" ".join(str(p) for p in free_ports(int(args[0]))))
    elif cmd == "env":
        for k, v in scenario_env(args[0]).items():
            print(f"export {k}={shlex.quote(v)}")
    elif cmd == "seconds":
        print(int(seconds(args[0])))
    elif cmd == "field":
        print(json.loads(Path(args[0]).read_text())[args[1]])
    elif cmd == "wait-ready":
        return wait_ready(args[0], float(args[1]), int(args[2]) if len(args) > 2 else None)
    elif cmd == "report":
        print(report(args[0], args[1], args[2]), end="")
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
