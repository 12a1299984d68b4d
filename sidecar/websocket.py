"""WebSocket upgrades: authenticated like any other request, then proxied both ways.

With `websocket_close_on_expiry` (the default) a session ends when its token does (exp + leeway + grace,
on the injected clock): the check runs before every message in either direction and on a watchdog, and
both sides get close code 1008 (policy violation) with the reason "token expired".
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict
from yarl import URL

from sidecar import errors
from sidecar.clock import Clock
from sidecar.metrics import Metrics

# The handshake headers are the client library's own on the upstream leg.
_HANDSHAKE = frozenset(
    {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-protocol"}
)
POLICY_VIOLATION = 1008
_WATCHDOG = 1.0


class _Expired(Exception):
    pass


async def proxy_websocket(
    request: web.Request,
    session: aiohttp.ClientSession,
    url: str,
    headers: CIMultiDict[str],
    expires_at: float | None,
    clock: Clock,
    metrics: Metrics,
) -> web.StreamResponse:
    protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    forwarded = CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in _HANDSHAKE)
    try:
        upstream = await session.ws_connect(
            URL(url, encoded=True), headers=forwarded, protocols=protocols, max_msg_size=0
        )
    except aiohttp.WSServerHandshakeError as e:
        metrics.websockets.labels("refused_by_app").inc()
        return web.Response(status=e.status if 400 <= e.status < 600 else 502, text="the app refused the WebSocket")
    except (aiohttp.ClientError, OSError, TimeoutError):
        metrics.upstream_errors.labels("upstream_unavailable").inc()
        raise errors.UpstreamUnavailable("the app refused the WebSocket connection") from None

    def check() -> None:
        if expires_at is not None and clock.now() >= expires_at:
            raise _Expired

    client = web.WebSocketResponse(protocols=[upstream.protocol] if upstream.protocol else ())
    await client.prepare(request)

    async def pump(
        src: aiohttp.ClientWebSocketResponse | web.WebSocketResponse,
        dst: aiohttp.ClientWebSocketResponse | web.WebSocketResponse,
    ) -> None:
        async for msg in src:
            check()
            if msg.type == WSMsgType.TEXT:
                await dst.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await dst.send_bytes(msg.data)
            else:
                break

    async def watchdog() -> None:
        while True:
            check()
            remaining = _WATCHDOG if expires_at is None else min(_WATCHDOG, max(0.05, expires_at - clock.now()))
            await asyncio.sleep(remaining)

    tasks = {
        asyncio.ensure_future(pump(client, upstream)): "client_closed",
        asyncio.ensure_future(pump(upstream, client)): "app_closed",
        asyncio.ensure_future(watchdog()): "token_expired",
    }
    end = "client_closed"
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        first = done.pop()
        end = tasks[first]
        if isinstance(first.exception(), _Expired):
            end = "token_expired"
        elif first.exception() is not None:
            end = "error"
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        code, message = (POLICY_VIOLATION, b"token expired") if end == "token_expired" else (1000, b"")
        await upstream.close(code=code, message=message)
        await client.close(code=code, message=message)
        metrics.websockets.labels(end).inc()
    return client
