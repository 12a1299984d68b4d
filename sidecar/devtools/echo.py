"""An echo app: answers every request with what reached it (method, raw path, headers, body size)."""

from __future__ import annotations

import asyncio
import hashlib
import json

from aiohttp import web

RECORD = web.AppKey("record", list)


async def websocket_echo(request: web.Request) -> web.StreamResponse:
    """First message: what reached the app (path and headers); then every message echoed back."""
    ws = web.WebSocketResponse(protocols=("echo",))
    await ws.prepare(request)
    await ws.send_json({"path": request.raw_path, "headers": [[k, v] for k, v in request.headers.items()]})
    async for msg in ws:
        if msg.type == web.WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == web.WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def echo(request: web.Request) -> web.StreamResponse:
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return await websocket_echo(request)
    q = request.query
    if "echo_sleep" in q:
        await asyncio.sleep(float(q["echo_sleep"]))
    body = await request.read()
    record = request.app.get(RECORD)
    if record is not None:
        record.append(
            {
                "method": request.method,
                "path": request.raw_path,
                "headers": list(request.headers.items()),
                "body": body,
            }
        )
    if "echo_bytes" in q:
        resp = web.StreamResponse(status=200)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        n = int(q["echo_bytes"])
        while n > 0:
            await resp.write(b"x" * min(n, 65536))
            n -= 65536
        await resp.write_eof()
        return resp
    data = {
        "method": request.method,
        "path": request.raw_path,
        "headers": [[k, v] for k, v in request.headers.items()],
        "body_bytes": len(body),
        "body_sha_prefix": hashlib.sha256(body).hexdigest()[:16],
    }
    return web.Response(status=int(q.get("echo_status", 200)), text=json.dumps(data), content_type="application/json")


def echo_app(record: list[dict[str, object]] | None = None) -> web.Application:
    """`record`, when given, receives every request that reached the app (tests read it)."""
    app = web.Application(client_max_size=1 << 30)
    if record is not None:
        app[RECORD] = record
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def main() -> None:  # pragma: no cover - manual use
    import argparse

    p = argparse.ArgumentParser(description="echo app")
    p.add_argument("--port", type=int, default=8080)
    a = p.parse_args()
    web.run_app(echo_app(), host="127.0.0.1", port=a.port, access_log=None)


if __name__ == "__main__":  # pragma: no cover
    main()
