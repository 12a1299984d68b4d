"""Dev stack for the load tests: the dev issuer and the echo app in one asyncio process, on free loopback ports.

It mints every token set the scenarios need with the *same* DevIssuer instance that serves the JWKS the
sidecar trusts, writes each set to `<out-dir>/<name>.json` (a JSON array of strings, loaded by k6 with
SharedArray), then prints one JSON line with the URLs and serves until SIGTERM/SIGINT.

Rotation and outages are driven over the issuer's own HTTP endpoints (POST /rotate, POST /outage), and
fresh tokens signed with the current key come from its GET /token.

    python loadtest/stack.py --out-dir /tmp/tokens [--cold 5000] [--leeway 60] [--grace 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # a fresh clone without `pip install -e .` still finds the package
    sys.path.insert(0, str(ROOT))

from sidecar.devtools.echo import echo_app  # noqa: E402
from sidecar.devtools.issuer import DevIssuer, new_key  # noqa: E402

AUDIENCE = "demo-api"


async def _serve(app: web.Application, port: int = 0) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, int(runner.addresses[0][1])


def token_sets(issuer: DevIssuer, args: argparse.Namespace) -> dict[str, list[str]]:
    """Every class of token a scenario sends, keyed by the `expected` tag it is sent under."""
    now = time.time()
    n = args.valid
    kid = issuer.signing.kid
    foreign = new_key("RS256")  # a key the IdP never published
    sets: dict[str, list[str]] = {
        # accepted: long-lived so a soak does not outlive them
        "ok": [issuer.mint(sub=f"user-{i}", ttl=args.ttl, now=now) for i in range(n)],
        # expired beyond leeway + grace (an hour ago, or more when the grace window is longer)
        "expired": [
            issuer.mint(sub=f"expired-{i}", ttl=-(args.leeway + args.grace + 3600), now=now) for i in range(n)
        ],
        # expired just past leeway: accepted inside expired_grace for (grace - 30) more seconds
        "in_grace": [issuer.mint(sub=f"grace-{i}", ttl=-(args.leeway + 30), now=now) for i in range(n)],
        # the published kid, signed by another key
        "bad_signature": [
            issuer.mint(sub=f"forged-{i}", ttl=args.ttl, now=now, key=foreign, headers={"kid": kid})
            for i in range(n)
        ],
        # a kid the JWKS never had (each one can trigger a rate-limited refetch)
        "unknown_kid": [
            issuer.mint(sub=f"unknown-{i}", ttl=args.ttl, now=now, key=foreign, headers={"kid": f"nope-{i}"})
            for i in range(n)
        ],
        "wrong_aud": [issuer.mint(sub=f"aud-{i}", ttl=args.ttl, now=now, aud="some-other-api") for i in range(n)],
        "wrong_iss": [
            issuer.mint(sub=f"iss-{i}", ttl=args.ttl, now=now, iss="http://127.0.0.1:1/not-the-issuer")
            for i in range(n)
        ],
        "not_yet_valid": [
            issuer.mint(sub=f"nbf-{i}", ttl=args.ttl, now=now, nbf=int(now + args.ttl / 2)) for i in range(n)
        ],
        # HS256 with the published kid: refused before any key is used
        "unsupported_alg": [
            jwt.encode(
                {"iss": issuer.issuer, "aud": issuer.audience, "sub": f"hs-{i}", "exp": int(now + args.ttl)},
                "a-shared-secret-that-must-never-work-here", algorithm="HS256", headers={"kid": kid},
            )
            for i in range(n)
        ],
        # token68-clean strings that are not a JWS
        "malformed": [f"not-a-jwt-{i}" for i in range(n)] + ["a.b.c", "eyJhbGciOiJSUzI1NiJ9.e30"],
        # signed by the published key but without `exp` (bench.py's gate: a proxy must refuse it)
        "no_exp": [issuer.mint(sub=f"noexp-{i}", ttl=args.ttl, now=now, exp=None) for i in range(n)],
        # one unique valid token per request (the token cache never helps)
        "cold": [issuer.mint(sub=f"cold-{i}", ttl=args.ttl, now=now) for i in range(args.cold)],
    }
    return sets


async def main_async(args: argparse.Namespace) -> None:
    issuer = DevIssuer(audience=args.audience)
    issuer_runner, issuer_port = await _serve(issuer.app())
    issuer.issuer = f"http://127.0.0.1:{issuer_port}"
    echo_runner, echo_port = await _serve(echo_app())

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    sets = token_sets(issuer, args)
    for name, tokens in sets.items():
        tmp = out / f".{name}.json.tmp"
        tmp.write_text(json.dumps(tokens))
        tmp.replace(out / f"{name}.json")
    info: dict[str, Any] = {
        "pid": os.getpid(),
        "issuer": issuer.issuer,
        "jwks_url": f"{issuer.issuer}/jwks.json",
        "echo_url": f"http://127.0.0.1:{echo_port}",
        "audience": issuer.audience,
        "kid": issuer.signing.kid,
        "tokens_dir": str(out.resolve()),
        "minted_at": int(started),
        "mint_seconds": round(time.time() - started, 2),
        "counts": {k: len(v) for k, v in sets.items()},
    }
    line = json.dumps(info)
    if args.info:
        tmp = Path(args.info + ".tmp")
        tmp.write_text(line + "\n")
        tmp.replace(args.info)
    print(line, flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    deadline = args.max_lifetime
    try:
        await asyncio.wait_for(stop.wait(), timeout=deadline if deadline > 0 else None)
    except TimeoutError:
        print(f"stack: max lifetime {deadline}s reached, stopping", file=sys.stderr, flush=True)
    await echo_runner.cleanup()
    await issuer_runner.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(description="dev issuer + echo app for the k6 load tests")
    p.add_argument("--out-dir", required=True, help="where the token sets are written")
    p.add_argument("--info", help="also write the JSON info line to this file")
    p.add_argument("--audience", default=AUDIENCE)
    p.add_argument("--valid", type=int, default=100, help="tokens per reused set (default 100)")
    p.add_argument("--cold", type=int, default=100, help="unique valid tokens for cold scenarios (default 100)")
    p.add_argument("--ttl", type=int, default=86400, help="lifetime of valid tokens, seconds (default 1 day)")
    p.add_argument("--leeway", type=int, default=60, help="the sidecar's --leeway, seconds")
    p.add_argument("--grace", type=int, default=300, help="the sidecar's --expired-grace, seconds")
    p.add_argument("--max-lifetime", type=float, default=6 * 3600,
                   help="stop by itself after this many seconds even if nobody signals it (0 = never)")
    p.add_argument("--uvloop", action="store_true", help="serve with uvloop, as the sidecar does")
    args = p.parse_args()
    if args.uvloop:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
