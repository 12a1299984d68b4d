"""Reference: a bare aiohttp pass-through proxy, no auth. The floor the sidecar's cost is measured against.

    python loadtest/bench/passthrough.py --port P --upstream http://127.0.0.1:U
"""

import argparse

import aiohttp
from aiohttp import web

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}


def make_app(upstream: str) -> web.Application:
    async def session_ctx(app: web.Application):  # one pooled keep-alive client, like the sidecar's
        app["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)
        yield
        await app["s"].close()

    async def handle(request: web.Request) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        body = await request.read() if request.body_exists else None
        async with request.app["s"].request(request.method, upstream + request.raw_path, headers=headers,
                                            data=body, allow_redirects=False) as r:
            out = {k: v for k, v in r.headers.items() if k.lower() not in HOP}
            return web.Response(status=r.status, headers=out, body=await r.read())

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True)
    a = p.parse_args()
    try:
        import uvloop  # the sidecar runs on uvloop too: same event loop, fair comparison

        uvloop.install()
    except ImportError:
        pass
    web.run_app(make_app(a.upstream), host="127.0.0.1", port=a.port, access_log=None, print=None)
