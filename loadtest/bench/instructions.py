"""Machine instructions per warm proxied request through the lean engine, counted by valgrind's callgrind.

Throughput and CPU time on a shared two-core machine drift by 5-10 % between runs; an instruction count does
not (the same count twice for the same code, whatever else the machine does), so it shows a change of 1 %.
It is what this file measures: the real engine objects (ClientConn, UpstreamConn, the pool, the decision),
in one process, with in-memory transports on both sides, so no kernel and no load generator take part.
A warm request: the same RS256 token (a cache hit) and a 20-byte answer from the app with five header fields.
The request is wrk's in the side-by-side bench (`GET /` with Host and Authorization), or with `--request
browser` what a browser's API call sends: a query string and thirteen fields (User-Agent, Accept-*, Cookie,
Origin, Referer, a request id, traceparent...), which shows what each field costs.

    python loadtest/bench/instructions.py            # needs valgrind (Debian: apt-get install valgrind)
    python loadtest/bench/instructions.py --request browser
    python loadtest/bench/instructions.py --run 100  # the requests alone, without valgrind (a smoke test)

The count is the difference of two runs (2,500 and 500 requests, each after the same warm-up), divided by
2,000: start-up, warm-up and exit cancel out. Background tasks (key refresh, gauges) are cancelled before
the counted requests, since under valgrind a second of their timers is 50 times fewer requests.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import uvloop

_ANSWER = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 03 Dec 2026 15:40:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 20\r\nConnection: keep-alive\r\n\r\nhello from upstream\n"
)
_WARM = 300
_BROWSER = (
    "GET /api/v1/orders?page=2&size=20 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36\r\n"
    "Accept: application/json, text/plain, */*\r\nAccept-Language: en-US,en;q=0.9\r\n"
    "Accept-Encoding: gzip, deflate, br, zstd\r\nAuthorization: Bearer {token}\r\n"
    "Referer: https://app.example.com/orders\r\nOrigin: https://app.example.com\r\n"
    "Cookie: session=3f9a1c; theme=dark\r\nX-Request-Id: 4f6c1e2a-9b1d-4c3e-8f7a-2d5e6b7c8d9e\r\n"
    "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nSec-Fetch-Mode: cors\r\n"
    "Sec-Fetch-Site: same-site\r\n\r\n"
)
_REQUESTS = {
    "bench": "GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAuthorization: Bearer {token}\r\n\r\n",
    "browser": _BROWSER,
}
_FEW, _MANY = 500, 2500


class Transport:
    """Enough of an asyncio transport for both ends of the engine: writes are kept, then dropped."""

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def writelines(self, data: list[bytes]) -> None:
        self.out.append(b"".join(data))

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass


_ISS, _AUD = "https://issuer.bench.local/", "bench-sidecar"


def keys_and_token(folder: Path) -> None:
    """One key and token for both counted runs (a key made in each would differ in cost: primes are random)."""
    from sidecar.devtools.issuer import DevIssuer

    issuer = DevIssuer(_ISS, _AUD)
    (folder / "jwks.json").write_text(json.dumps(issuer.jwks()))
    (folder / "token").write_text(issuer.mint(sub="bench", ttl=10**9))


async def requests(count: int, folder: Path, counting_run: bool, kind: str = "bench") -> None:
    from sidecar.app import build_state
    from sidecar.clock import SystemClock
    from sidecar.config import load
    from sidecar.connlimits import ConnLimits
    from sidecar.guard import counting
    from sidecar.http.server import ClientConn, LeanServer
    from sidecar.http.upstream import UpstreamConn

    iss, aud, keys = _ISS, _AUD, folder / "jwks.json"
    token = (folder / "token").read_text()
    request = _REQUESTS[kind].format(token=token).encode()
    raw = {
        "upstream": "http://127.0.0.1:9",
        "log_level": "warning",
        "providers": [{"issuer": iss, "audiences": [aud], "jwks_file": str(keys), "max_token_lifetime": 0}],
    }
    state = build_state(load(raw), SystemClock())
    server = await LeanServer.create(state, ConnLimits.from_config(state.cfg.limits), counting(state.metrics))
    while not state.ready():
        await asyncio.sleep(0.02)
    app, client = Transport(), Transport()
    pool = server.pool(server.state.cfg)
    upstream = UpstreamConn(pool)
    upstream.connection_made(app)
    pool.put(upstream, server.loop.time())
    conn = ClientConn(server)
    conn.connection_made(client)

    async def one() -> None:
        conn.data_received(request)
        upstream.data_received(_ANSWER)
        await asyncio.sleep(0)  # the loop round a real request costs too
        client.out.clear()
        app.out.clear()

    for _ in range(_WARM):
        await one()
    conn.data_received(request)
    upstream.data_received(_ANSWER)
    await asyncio.sleep(0)
    if not client.out or not client.out[-1].startswith(b"HTTP/1.1 200 "):
        raise SystemExit(f"the warm request was not answered 200: {client.out[-1:]!r}")
    for task in asyncio.all_tasks():
        if task is not asyncio.current_task():
            task.cancel()
    await asyncio.sleep(0.1)
    gc.collect()
    gc.freeze()
    for _ in range(count):
        await one()
    if counting_run:
        sys.stdout.flush()
        os._exit(0)  # no interpreter shutdown: its work would differ between the two runs
    await server.runner.cleanup()


def counted(count: int, folder: Path, kind: str) -> int:
    """Instructions of one run of `count` requests under callgrind."""
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/callgrind.out", sys.executable,
             __file__, "--run", str(count), "--keys", str(folder), "--request", kind],
            capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"}, check=True,
        )  # fmt: skip
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise SystemExit(f"callgrind reported no count:\n{out.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=int, metavar="N", help="serve N warm requests in process, without valgrind")
    parser.add_argument("--request", choices=sorted(_REQUESTS), default="bench", help="the request served (bench)")
    parser.add_argument("--keys", type=Path, help=argparse.SUPPRESS)  # the folder the counting runs share
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keys or Path(tmp)
        if args.keys is None:
            keys_and_token(folder)
        if args.run is not None:
            uvloop.run(requests(args.run, folder, args.keys is not None, args.request))
            return
        few, many = counted(_FEW, folder, args.request), counted(_MANY, folder, args.request)
    per = (many - few) / (_MANY - _FEW)
    print(f"{per:,.0f} instructions per warm request ({args.request}; lean engine, in process)")


if __name__ == "__main__":
    main()
