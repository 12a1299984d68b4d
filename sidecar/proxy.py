"""Forwarding a checked request to the app over one pooled keep-alive client, bodies streamed both ways."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from sidecar import errors
from sidecar.headers import HOP_BY_HOP
from sidecar.metrics import Metrics

_CHUNK = 65536
_NO_AUTO = ("Accept-Encoding", "User-Agent", "Content-Type")


def upstream_session(connect_timeout: float, read_timeout: float) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30, ttl_dns_cache=60),
        timeout=aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=read_timeout),
        auto_decompress=False,  # the app's bytes reach the client unchanged
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=_NO_AUTO,
    )


async def _limited(request: web.Request, limit: int) -> object:
    seen = 0
    async for chunk in request.content.iter_chunked(_CHUNK):
        seen += len(chunk)
        if limit and seen > limit:
            raise errors.BodyTooLarge(f"body exceeds {limit} bytes")
        yield chunk


async def forward(
    request: web.Request,
    session: aiohttp.ClientSession,
    base: str,
    path_qs: str,
    headers: CIMultiDict[str],
    extra: tuple[tuple[str, str], ...],
    max_body: int,
    metrics: Metrics,
) -> web.StreamResponse:
    if max_body and request.content_length is not None and request.content_length > max_body:
        raise errors.BodyTooLarge(f"Content-Length {request.content_length} exceeds {max_body} bytes")
    body = _limited(request, max_body) if request.body_exists else None
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with session.request(
            request.method, URL(base + path_qs, encoded=True), headers=headers, data=body,
            allow_redirects=False, compress=None, chunked=None,
        ) as resp:
            metrics.upstream_seconds.observe(loop.time() - started)
            out = web.StreamResponse(status=resp.status, reason=resp.reason)
            conn_named = {t.strip().lower() for v in resp.headers.getall("Connection", ()) for t in v.split(",")}
            for name, value in resp.headers.items():
                low = name.lower()
                if low not in HOP_BY_HOP and low not in conn_named:
                    out.headers.add(name, value)
            for name, value in extra:
                out.headers.add(name, value)
            if "Content-Length" not in resp.headers and request.method != "HEAD":
                out.enable_chunked_encoding()
            await out.prepare(request)
            try:
                async for chunk in resp.content.iter_chunked(_CHUNK):
                    await out.write(chunk)
                await out.write_eof()
            except (aiohttp.ClientError, OSError, TimeoutError):
                # Headers are sent: the only honest signal left is to cut the client's connection.
                metrics.upstream_errors.labels("upstream_unavailable").inc()
                if request.transport is not None:
                    request.transport.close()
            return out
    except errors.BodyTooLarge:
        raise
    except (TimeoutError, aiohttp.ServerTimeoutError):
        metrics.upstream_errors.labels("upstream_timeout").inc()
        raise errors.UpstreamTimeout() from None
    except aiohttp.ClientPayloadError:
        metrics.upstream_errors.labels("upstream_unavailable").inc()
        raise errors.UpstreamUnavailable("the app broke off its response") from None
    except (aiohttp.ClientError, OSError) as e:
        if request.transport is None or request.transport.is_closing():
            raise ConnectionResetError("client went away") from None
        metrics.upstream_errors.labels("upstream_unavailable").inc()
        raise errors.UpstreamUnavailable(f"the app is unreachable ({e.__class__.__name__})") from None
