"""aiohttp listeners with connection limits: a `RequestHandler` that shows every head to a `ConnGuard`
before aiohttp's parser buffers it, and closes connections whose client is too slow.

aiohttp checks header sizes only per field (and the sidecar's own checks run after parsing), so without
this one request of many large headers costs hundreds of megabytes before it is refused. Here the parser
is fed a head only up to the limit; the rest of the read is dropped with the connection.

Timing costs one `loop.time()` per read and a timer handle per connection that is moved lazily: it fires
at the earliest deadline it was given and re-arms itself if the deadline moved later since.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler, _ErrInfo
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse
from aiohttp.web_server import Server

from sidecar.connlimits import HEADER_TIMEOUT, ConnGuard, ConnLimits, HeadRefused
from sidecar.conntimer import ConnTimer
from sidecar.errors import BadRequest, HeadersTooLarge, RequestLineTooLong
from sidecar.metrics import Metrics

log = logging.getLogger("sidecar.conn")

# A refused head is a rejected request: its reason (errors.py), by the status it gets.
REJECTED = {400: BadRequest.reason, 414: RequestLineTooLong.reason, 431: HeadersTooLarge.reason}

_CRLF2 = b"\r\n\r\n"

OnClose = Callable[[str, int | None], None]  # (reason, status answered or None)


def answer(status: int, reason: str, description: str) -> bytes:
    body = json.dumps({"status": status, "reason": reason, "description": description}).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class GuardedHandler(RequestHandler):
    __slots__ = ("_body_payload", "_guard", "_guarding", "_held", "_on_close", "_timer")

    def __init__(self, manager: Server, limits: ConnLimits, on_close: OnClose, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = ConnGuard(limits, self._loop.time())
        self._on_close = on_close
        self._timer = ConnTimer(self._loop, self._expire)
        self._held = b""  # bytes read but not yet shown to the parser (its message queue is full)
        self._guarding = True  # off once the connection is upgraded (WebSocket): its frames are not HTTP
        self._body_payload: Any = None  # the payload of a body of unknown length being read

    # --- lifecycle ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._timer.cancel()
        super().connection_lost(exc)

    def log_access(self, request: BaseRequest, response: StreamResponse, time: float | None) -> None:
        # aiohttp calls this once per request when the response is written (or the write failed): the one
        # synchronous hook at that moment, so the idle clock starts without an extra coroutine per request.
        super().log_access(request, response, time)
        if self._guarding:
            self._guard.response_done(self._loop.time())
        elif self._payload_parser is None and not self._force_close:
            # An upgrade the app refused: aiohttp would go on parsing what followed it unguarded. Close.
            self.close()

    # --- bytes -------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if not self._guarding or self._upgraded or self._payload_parser is not None:
            super().data_received(data)
            return
        if self._force_close or self._close:
            return
        if self._held:
            data, self._held = self._held + data, b""
        if not data:  # aiohttp asks to re-parse what it buffered: our buffer is _held
            super().data_received(data)
            return
        g = self._guard
        if g.whole_head(data) and len(self._messages) < self._max_msg_queue_size:
            # The usual read: one whole head inside every limit, nothing after it, no body.
            count = self._request_count
            super().data_received(data)
            if self._request_count == count + 1 and not self._upgraded:
                msg, payload = self._messages[-1]
                if payload.is_eof() and not isinstance(msg, _ErrInfo):
                    g.opened()
                    return  # no timer work: _expire works the deadline out from the state when it fires
            now = self._loop.time()
            self._parsed(count, count, now)
        else:
            now = self._loop.time()
            self._read(data, now)
        if self._upgraded:
            self._stop_guarding()
            return
        if not (self._close or self._force_close):
            g.settle(now)
            self._arm()

    def _read(self, data: bytes, now: float) -> None:
        """Show the read to the guard head by head, body by body, feeding the parser what passes."""
        g = self._guard
        pos, n = 0, len(data)
        base = self._request_count  # requests parsed from this read have not been started: see _only_error
        while pos < n:
            if len(self._messages) >= self._max_msg_queue_size:
                # The queue of pipelined requests is full: keep the rest until it drains (aiohttp pauses
                # reading and calls data_received(b"") when it has room again).
                self._held = data[pos:]
                return
            if g.in_body:
                take = g.body(n - pos, now)
                count = self._request_count
                super().data_received(data if take == n else data[pos : pos + take])
                pos += take
                if self._request_count != count and isinstance(self._messages[-1][0], _ErrInfo):
                    g.body_done()
                    self._only_error(base)
                    return
                if g.in_body and self._body_payload is not None and self._body_payload.is_eof():
                    g.body_done()  # a chunked body ended inside this read
                    self._body_payload = None
                    if self._request_count != count or not data.endswith(_CRLF2):
                        # The parser went on into the next request unguarded: serve this one and close.
                        self.close()
                        return
                continue
            try:
                end = g.head(data, pos)
            except HeadRefused as r:
                self._refuse(r)
                return
            stop = n if end < 0 else end
            count = self._request_count
            super().data_received(data if (pos == 0 and stop == n) else data[pos:stop])
            pos = stop
            if end < 0:
                if g.head_in_progress:
                    g.head_pending(now)
                if self._force_close or self._close or self._upgraded:
                    return
                continue
            if not self._parsed(count, base, now):
                return

    def _parsed(self, count: int, base: int, now: float) -> bool:
        """A head ended and was fed: book its request and its body. False: read nothing more."""
        if self._force_close or self._close or self._upgraded:
            return False
        if self._request_count == count:
            # Our reading says the head ended; the parser's does not. One reading only: refuse.
            self._refuse(HeadRefused(400, "bad_request", "the request head does not parse"))
            return False
        g = self._guard
        msg, payload = self._messages[-1]
        if isinstance(msg, _ErrInfo):
            g.request(None, now)
            self._only_error(base)
            return False  # aiohttp answers 400 and closes
        if payload.is_eof():
            g.request(None, now)
        elif msg.chunked or "Content-Length" not in msg.headers:
            self._body_payload = payload
            g.request(-1, now)
        else:
            g.request(int(msg.headers["Content-Length"]), now)
        return True

    def _only_error(self, base: int) -> None:
        """The parser refused bytes of this read after requests that came earlier in it. Fed the read at
        once, as aiohttp does, it would have given only the 400 ("data after Connection: close", a body
        that breaks its framing): drop those requests too, none of them may reach the app."""
        for _ in range(self._request_count - base - 1):
            if len(self._messages) < 2:
                break
            del self._messages[-2]
        self.close()  # aiohttp closes after the 400; read nothing more meanwhile

    # --- answers and closes --------------------------------------------------------------------------

    def _refuse(self, r: HeadRefused) -> None:
        self._on_close(r.reason, r.status)
        log.debug("connection refused", extra={"reason": r.reason, "status": r.status})
        if self._request_in_progress or self._messages:
            self.close()  # an earlier pipelined request is being answered: finish it, then close
        else:
            self._write_and_close(answer(r.status, REJECTED[r.status], r.description))

    def _write_and_close(self, answer: bytes) -> None:
        """Answer, half-close, and drain what the client still sends for a moment before closing: closing
        with unread bytes makes the kernel send a reset, which can destroy the answer before it is read."""
        t = self.transport
        if t is None:
            return
        t.write(answer)
        self.close()  # from here on aiohttp drops what arrives
        if t.can_write_eof():
            t.write_eof()
        self._timer.linger(self.force_close)

    def _stop_guarding(self) -> None:
        self._guarding = False
        self._timer.cancel()

    def _arm(self) -> None:
        if self.transport is None or self._close:
            return
        self._timer.arm(self._guard)

    def _expire(self) -> None:
        if not self._guarding or self._force_close or self._close or self.transport is None:
            return
        now = self._loop.time()
        self._guard.settle(now)
        busy = self._request_in_progress or bool(self._messages)
        reason = self._guard.expired(now, self._reading_paused, busy)
        if reason is None:
            self._arm()
            return
        self._on_close(reason, None)
        log.debug("connection timed out", extra={"reason": reason})
        if reason == HEADER_TIMEOUT and not self._request_in_progress and not self._messages:
            self._write_and_close(answer(408, reason, "the request head did not arrive in time"))
        else:
            self.force_close()  # a handler reading the body sees the connection reset


class GuardedServer(Server):
    def __init__(self, limits: ConnLimits, on_close: OnClose, plain: Server) -> None:
        super().__init__(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=plain._loop,
            **plain._kwargs,
        )
        self._limits = limits
        self._on_close = on_close

    def __call__(self) -> RequestHandler:
        return GuardedHandler(self, self._limits, self._on_close, loop=self._loop, **self._kwargs)


class GuardedRunner(web.AppRunner):
    """`web.AppRunner` whose connections are guarded by `limits`; `on_close` counts what the guard closes."""

    def __init__(self, app: web.Application, limits: ConnLimits, on_close: OnClose, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._limits = limits
        self._on_close = on_close

    async def _make_server(self) -> Server:
        return GuardedServer(self._limits, self._on_close, await super()._make_server())


def counting(m: Metrics) -> OnClose:
    """Count each close by reason; a refused head is also a rejected request (its reason in errors.py)."""

    def on_close(reason: str, status: int | None) -> None:
        m.connections_closed.labels(reason).inc()
        if status is not None:
            m.requests_rejected.labels(REJECTED[status]).inc()

    return on_close
