"""`sidecar demo`: a dev issuer, an echo app and the sidecar in front of it, all on loopback.

Prints curl lines that show the main behaviours, then serves until Ctrl-C (or SIGTERM).
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import socket

from aiohttp import web

from sidecar.app import build_state, run, run_until_signal
from sidecar.config import load
from sidecar.devtools.echo import echo_app
from sidecar.devtools.issuer import DevIssuer
from sidecar.responses import setup_logging

ORIGIN = "http://localhost:3000"
LEEWAY, GRACE = 60, 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _start(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


def curl_lines(url: str, admin: str, issuer: str) -> list[tuple[str, str]]:
    """Each line mints its token when it runs (from the dev issuer's /token.txt), so it keeps working."""
    q = shlex.quote

    def bearer(query: str) -> str:
        return f'-H "Authorization: Bearer $(curl -s {q(issuer + "/token.txt?" + query)})"'

    return [
        (
            "valid token -> 200, the echo shows Authorization arrived",
            f"curl -s {q(url + '/api/hello')} {bearer('sub=alice&ttl=3600')}",
        ),
        (
            "token expired an hour ago (beyond leeway + grace) -> 401 with reason 'expired'",
            f"curl -si {q(url + '/api/hello')} {bearer('sub=bob&ttl=-3600')}",
        ),
        (
            f"token 2 min past exp, inside leeway {LEEWAY}s + grace {GRACE}s -> 200 with X-Auth-Token-Expired-Seconds",
            f"curl -s {q(url + '/api/hello')} {bearer(f'sub=carol&ttl=-{LEEWAY + 60}')}",
        ),
        ("no token -> 401 missing_token", f"curl -si {q(url + '/api/hello')}"),
        (
            "CORS preflight from an allowed origin -> 204, no token needed",
            f"curl -si -X OPTIONS {q(url + '/api/hello')} -H {q('Origin: ' + ORIGIN)} "
            f"-H 'Access-Control-Request-Method: GET' -H 'Access-Control-Request-Headers: authorization'",
        ),
        ("public path -> 200 without a token", f"curl -s {q(url + '/public/info')}"),
        (
            "readiness, then the auth metrics, on the admin port",
            f"curl -s {q(admin + '/readyz')}; echo; curl -s {q(admin + '/metrics')} | grep ^sidecar_auth",
        ),
    ]


async def _demo(port: int) -> None:
    issuer = DevIssuer(audience="demo-api")
    issuer_runner, issuer_port = await _start(issuer.app())
    issuer.issuer = f"http://127.0.0.1:{issuer_port}"
    echo_runner, echo_port = await _start(echo_app())
    port = port or free_port()
    admin_port = free_port()
    cfg = load(
        {
            "listen": f"127.0.0.1:{port}",
            "admin_listen": f"127.0.0.1:{admin_port}",
            "upstream": f"http://127.0.0.1:{echo_port}",
            "providers": [
                {
                    "issuer": issuer.issuer,
                    "audiences": ["demo-api"],
                    "discovery": True,
                    "algorithms": ["RS256"],
                }
            ],
            "leeway": LEEWAY,
            "expired_grace": GRACE,
            "public_paths": ["/public"],
            "claim_headers": {"X-Auth-Subject": "sub"},
            "cors": {"origins": [ORIGIN]},
            "log_level": "warning",
        }
    )
    state = build_state(cfg)
    serving = asyncio.create_task(run_until_signal(state))
    for _ in range(200):
        if state.ready():
            break
        await asyncio.sleep(0.05)
    url, admin = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
    print(f"dev issuer  {issuer.issuer}  (keys at /jwks.json, a token at /token.txt?sub=me)")
    print(f"echo app    http://127.0.0.1:{echo_port}")
    print(f"sidecar     {url}  -> echo app   (admin {admin})")
    print()
    for title, line in curl_lines(url, admin, issuer.issuer):
        print(f"# {title}\n{line}\n")
    print("# Ctrl-C stops the demo.", flush=True)
    try:
        await serving
    finally:
        await echo_runner.cleanup()
        await issuer_runner.cleanup()


def run_demo(port: int = 0) -> int:
    setup_logging("warning")
    with contextlib.suppress(KeyboardInterrupt):
        run(_demo(port))
    return 0
