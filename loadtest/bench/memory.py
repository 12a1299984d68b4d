"""Memory with a full verified-token cache: RSS of one sidecar worker after N distinct valid tokens.

    python loadtest/bench/memory.py [--tokens 100000] [--cache 100000]

A dev issuer (ES256, so minting 100k tokens takes seconds) and an echo app run in this process; the sidecar
runs as `sidecar run --workers 1`, pinned to CPU 0 when taskset exists. Every token is sent once over 32
keep-alive connections; the script prints RSS before and after, the cache's entry count from /metrics,
and fails (exit 1) past --max-rss MB or when the cache holds more than its bound. Loopback only, bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sidecar.devtools.echo import echo_app  # noqa: E402
from sidecar.devtools.issuer import DevIssuer, new_key  # noqa: E402
from tests.support import ThreadedServer, free_port, scrape  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def send_all(url: str, tokens: list[str]) -> int:
    failed = 0
    queue: asyncio.Queue[str] = asyncio.Queue()
    for t in tokens:
        queue.put_nowait(t)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as session:

        async def worker() -> None:
            nonlocal failed
            while not queue.empty():
                token = queue.get_nowait()
                async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
                    await r.read()
                    failed += r.status != 200

        await asyncio.gather(*(worker() for _ in range(32)))
    return failed


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=100_000)
    ap.add_argument("--cache", type=int, default=100_000)
    ap.add_argument("--max-rss", type=float, default=80.0)
    a = ap.parse_args()
    issuer = DevIssuer(audience="demo-api", alg="ES256")
    issuer.keys = [new_key("ES256")]
    issuer.signing = issuer.keys[0]
    iss_server = ThreadedServer(issuer.app())
    issuer.issuer = iss_server.url
    echo = ThreadedServer(echo_app())
    port, admin = free_port(), free_port()
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    config = Path(tempfile.mkdtemp()) / "cache.yaml"
    config.write_text(f"token_cache_size: {a.cache}\n")
    proc = subprocess.Popen(
        [
            *pin,
            sys.executable,
            "-m",
            "sidecar",
            "run",
            "--workers",
            "1",
            "--log-level",
            "warning",
            "--listen",
            f"127.0.0.1:{port}",
            "--admin-listen",
            f"127.0.0.1:{admin}",
            "--upstream",
            echo.url,
            "--jwks-url",
            f"{issuer.issuer}/jwks.json",
            "--issuer",
            issuer.issuer,
            "--audience",
            "demo-api",
            "--claim-header",
            "X-Auth-Subject=sub",
            "--config",
            str(config),
        ],
        cwd=ROOT,
    )
    try:
        time.sleep(1.5)
        before = rss_mb(proc.pid)
        started = time.monotonic()
        now = time.time()
        tokens = [issuer.mint(sub=f"user-{i:07d}@example.com", now=now, ttl=3600) for i in range(a.tokens)]
        minted = time.monotonic() - started
        started = time.monotonic()
        failed = asyncio.run(send_all(f"http://127.0.0.1:{port}/mem", tokens))
        sent = time.monotonic() - started
        after = rss_mb(proc.pid)
        entries = scrape(f"http://127.0.0.1:{admin}").get("sidecar_token_cache_entries", -1)
        print(
            f"tokens {a.tokens} (minted in {minted:.1f}s, sent in {sent:.1f}s, {failed} failed); "
            f"cache bound {a.cache}, entries {entries:.0f}"
        )
        print(f"sidecar RSS: {before:.1f} MB at start, {after:.1f} MB after ({after - before:+.1f} MB)")
        ok = failed == 0 and after <= a.max_rss and entries <= a.cache
        print("PASS" if ok else f"FAIL (limit {a.max_rss} MB, bound {a.cache})")
        return 0 if ok else 1
    finally:
        proc.terminate()
        proc.wait(20)
        echo.stop()
        iss_server.stop()


if __name__ == "__main__":
    sys.exit(main())
