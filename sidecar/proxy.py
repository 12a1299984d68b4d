"""Forwarding a checked request to the app over one pooled keep-alive client, bodies streamed both ways."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from sidecar import errors
from sidecar.formbody import FormScan
from sidecar.headers import HOP_BY_HOP, connection_named
from sidecar.metrics import Metrics

_CHUNK = 65536
_BUFFERED = 65536  # responses up to this size (with a Content-Length) are sent in one piece
_NO_AUTO = ("Accept-Encoding", "User-Agent", "Content-Type")


def upstream_session(connect_timeout: float, read_timeout: float) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30, ttl_dns_cache=60),
        timeout=aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=read_timeout),
        auto_decompress=False,  # the app's bytes reach the client unchanged
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=_NO_AUTO,
    )


class _Body:
    """The request body as a stream, cut off past `limit` (0: none). aiohttp wraps what a body generator
    raises in a client error, so the breach is remembered here and turned into a 413 by `forward`."""

    __slots__ = ("exceeded", "limit", "refused", "request", "scan")

    def __init__(self, request: web.Request, limit: int, scan: FormScan | None = None) -> None:
        self.request, self.limit, self.exceeded = request, limit, False
        self.scan = scan
        self.refused: errors.Rejection | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        seen = 0
        scan = self.scan
        held: bytes | None = None  # a form body's last chunk waits until the whole form has been judged
        try:
            async for chunk in self.request.content.iter_chunked(_CHUNK):
                seen += len(chunk)
                if self.limit and seen > self.limit:
                    self.exceeded = True
                    raise errors.BodyTooLarge(f"body exceeds {self.limit} bytes")
                if scan is None:
                    yield chunk
                    continue
                scan.feed(chunk)
                if held is not None:
                    yield held
                held = chunk
            if scan is not None:
                await scan.finish()
                if held is not None:
                    yield held
        except errors.Rejection as r:
            self.refused = r
            raise


async def forward(
    request: web.Request,
    session: aiohttp.ClientSession,
    base: str,
    path_qs: str,
    headers: CIMultiDict[str],
    extra: tuple[tuple[str, str], ...],
    max_body: int,
    metrics: Metrics,
    scan: FormScan | None = None,
) -> web.StreamResponse:
    if max_body and request.content_length is not None and request.content_length > max_body:
        raise errors.BodyTooLarge(f"Content-Length {request.content_length} exceeds {max_body} bytes")
    body = _Body(request, max_body, scan) if request.body_exists else None
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with session.request(
            request.method,
            URL(base + path_qs, encoded=True),
            headers=headers,
            data=body.chunks() if body else None,
            allow_redirects=False,
            compress=None,
            chunked=None,
        ) as resp:
            metrics.upstream_seconds.observe(loop.time() - started)
            length = resp.content_length
            if length is not None and length <= _BUFFERED and request.method != "HEAD":
                # A small body of known length goes out in one write with its headers: measured cheaper
                # than a streamed response for the typical API answer.
                small = web.Response(status=resp.status, reason=resp.reason, body=await resp.read())
                _copy_headers(resp, small, extra, keep_length=False)
                return small
            out = web.StreamResponse(status=resp.status, reason=resp.reason)
            _copy_headers(resp, out, extra)
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
    except Exception as e:
        if body is not None and body.exceeded:
            raise errors.BodyTooLarge(f"body exceeds {max_body} bytes") from None
        if body is not None and body.refused is not None:
            raise body.refused from None
        raise _classify(e, request, metrics) from None


def _copy_headers(
    resp: aiohttp.ClientResponse, out: web.StreamResponse, extra: tuple[tuple[str, str], ...], keep_length: bool = True
) -> None:
    conn_named = connection_named(resp.headers)
    headers = out.headers
    for name, value in resp.headers.items():
        low = name.lower()
        if low not in HOP_BY_HOP and low not in conn_named and (keep_length or low != "content-length"):
            headers.add(name, value)
    for name, value in extra:
        headers.add(name, value)


def _classify(e: Exception, request: web.Request, metrics: Metrics) -> BaseException:
    """What a failed upstream exchange means for the client: 504, 502, or nothing (the client left)."""
    if isinstance(e, TimeoutError):  # aiohttp's ServerTimeoutError is one too
        metrics.upstream_errors.labels("upstream_timeout").inc()
        return errors.UpstreamTimeout()
    if not isinstance(e, aiohttp.ClientPayloadError) and (request.transport is None or request.transport.is_closing()):
        return ConnectionResetError("client went away")
    metrics.upstream_errors.labels("upstream_unavailable").inc()
    return errors.UpstreamUnavailable(f"the request to the app failed ({e.__class__.__name__})")
