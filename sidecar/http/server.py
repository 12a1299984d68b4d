"""The lean engine's client side: one protocol per connection, llhttp for the request heads and bodies.

A read goes through the connection guard (connlimits.py) head by head and body by body, as with the aiohttp
engine, so a head is refused at the limit before the parser holds more of it. A head that parses and frames
unambiguously (framing.py) becomes an `Exchange`, decided by gate.py, and forwarded over the pool
(upstream.py) with its body streamed. One request is served at a time; bytes of a pipelined next request
wait, unparsed, until the response is out. Anything that could leave the two ends of a connection reading
the stream differently (a body not read to its end, a refused framing, a failed response) closes it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final, cast

import httptools
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy, istr
from yarl import URL

from sidecar import errors
from sidecar.authorize import preflight
from sidecar.connlimits import HEADER_TIMEOUT, ConnGuard, ConnLimits, HeadRefused
from sidecar.conntimer import ConnTimer
from sidecar.gate import Admitted, admit, is_websocket
from sidecar.guard import REJECTED, OnClose, answer
from sidecar.headers import CONTENT_LENGTH, EXPECT, HOST, ORIGIN, Memo, field_name
from sidecar.http.framing import (
    CONNECTION_FIELDS,
    NO_BODY,
    Framing,
    FramingError,
    field_bit,
    framing,
    plain_head,
    refusal,
)
from sidecar.http.outbox import Outbox
from sidecar.http.tunnel import Tunnel
from sidecar.http.upstream import Cut, Outcome, Reply, UpstreamConn, UpstreamPool, drive
from sidecar.responses import refused, rejection_parts

if TYPE_CHECKING:
    from sidecar.config import Config
    from sidecar.state import Sidecar

log = logging.getLogger("sidecar.conn")

_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_HIGH: Final = 256 * 1024  # body bytes buffered from a client before its reading pauses
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_NO_QUERY: Final[MultiDictProxy[str]] = MultiDictProxy(MultiDict())


class Body:
    """A request body on its way from the client to the app."""

    __slots__ = ("_chunks", "_conn", "_done", "_error", "_size", "_waiter")

    def __init__(self, conn: ClientConn) -> None:
        self._chunks: collections.deque[bytes] = collections.deque()
        self._conn = conn
        self._size = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > _HIGH:
            self._conn.pause("body")
        self._wake()

    def finish(self) -> None:
        self._done = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def read(self) -> bytes:
        """The next bytes (all that arrived), or b"" at the body's end."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._done:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            self._waiter = None
        data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        self._conn.resume("body")
        return data


class Exchange:
    """One request, from its parsed head until its response is out. Has what a refusal's log line names."""

    __slots__ = (
        "arrived",
        "body",
        "complete",
        "early",
        "framing",
        "headers",
        "keep",
        "method",
        "names",
        "path",
        "query",
        "remote",
        "upgrade",
        "version",
    )

    def __init__(
        self,
        method: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        names: list[istr],
        version: str,
        keep: bool,
        fr: Framing,
    ) -> None:
        self.method, self.headers, self.version, self.keep = method, headers, version, keep
        self.names = names  # each field's name as sent, folded once for the multidict (`LeanServer.fields`)
        self.framing = fr
        self.path, _, self.query = target.partition("?")  # as sent: gate.admit reads the path
        self.arrived = 0.0  # the loop time of the read that completed the head
        self.remote: str | None = None
        self.body: Body | None = None
        self.complete = False  # the whole request message has been read
        self.early = b""  # WebSocket: bytes the client sent after its upgrade request, before the answer
        self.upgrade = False  # llhttp stops at this request: nothing after it is read as HTTP


class ClientConn(asyncio.Protocol):
    def __init__(self, server: LeanServer) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.peer: str | None = None
        self.local = ""
        self.guard = ConnGuard(server.limits, self.loop.time())
        self.tunnel: Tunnel | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._max_fields = server.limits.max_headers
        self._fields = server.fields
        self._names: list[istr] = []
        # the `field_bit`s of the head's fields, and of those that came again (framing.plain_head)
        self._seen = self._twice = 0
        self._parsed: Exchange | None = None  # a head llhttp finished, not yet taken up
        self._bad: Exception | None = None  # why that head is refused
        self._ex: Exchange | None = None  # the request being served
        self._overrun = False  # llhttp read on past a chunked body into a next message: serve, then close
        self._trailers = 0  # trailer lines of the current body
        self._held = b""  # bytes of pipelined requests, waiting for the current response
        self._closing = False  # no more requests on this connection
        self._pauses: set[str] = set()
        self._upstream: UpstreamConn | None = None
        self._timer = ConnTimer(self.loop, self._expire)

    # --- asyncio -----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else None
        local = transport.get_extra_info("sockname")
        if isinstance(local, tuple):
            host = str(local[0])
            self.local = f"[{host}]" if ":" in host else host
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.conns.add(self)
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        self.server.conns.discard(self)
        self._timer.cancel()
        if self.tunnel is not None:
            self.tunnel.lost(self)
        ex = self._ex
        if ex is not None and ex.body is not None:
            ex.body.fail(ConnectionResetError("the client went away"))
        if self._upstream is not None:
            self._upstream.close()  # its response can no longer be delivered, nor the connection reused

    def pause_writing(self) -> None:
        if self._upstream is not None:
            self._upstream.pause_reading()

    def resume_writing(self) -> None:
        if self._upstream is not None:
            self._upstream.resume_reading()

    def pause(self, why: str) -> None:
        if not self._pauses and self.transport is not None:
            self.transport.pause_reading()
        self._pauses.add(why)

    def resume(self, why: str) -> None:
        if why in self._pauses:
            self._pauses.discard(why)
            if not self._pauses and self.transport is not None:
                self.transport.resume_reading()

    def tunnel_to(self, tunnel: Tunnel | None) -> None:
        self.tunnel = tunnel

    @property
    def idle(self) -> bool:
        return self._ex is None and self.tunnel is None

    # --- bytes -------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.from_client(data)
            return
        if self._closing or self.transport is None:
            return
        now = self.loop.time()
        self._read(data, now)
        ex = self._ex
        if ex is not None and ex.complete:
            return  # a whole request being answered: `_done` settles the deadline (the timer settles first too)
        if self.transport is not None and not self._closing and self.tunnel is None:
            self.guard.settle(now)
            self._arm()

    def _read(self, data: bytes, now: float) -> None:
        g = self.guard
        pos, n = 0, len(data)
        while pos < n and not self._closing:
            ex = self._ex
            if ex is not None:
                rest = data[pos:] if pos else data
                if ex.upgrade:
                    ex.early += rest  # WebSocket frames sent before the upgrade is answered
                    if len(ex.early) > g.limits.max_head_bytes:
                        self.pause("early")
                    return
                if ex.complete:
                    self._hold(rest)
                    return
                take = g.body(n - pos, now)
                try:
                    self._parser.feed_data(data if take == n else data[pos : pos + take])
                except httptools.HttpParserError as e:
                    if ex.body is not None:
                        ex.body.fail(refusal(e))
                    self._closing = True
                    return
                pos += take
                if ex.complete and g.in_body:
                    g.body_done()  # a chunked body ended in this read
                if self._overrun:
                    self._closing = True  # the next request was read unguarded: not served
                    return
                continue
            try:
                end = g.head(data, pos, parser_counts=True)  # on_header stops at max_headers fields
            except HeadRefused as r:
                self._refuse(r.status, r.reason, r.description)
                return
            stop = n if end < 0 else end
            try:
                self._parser.feed_data(data if (pos == 0 and stop == n) else data[pos:stop])
            except httptools.HttpParserUpgrade:
                pass  # the head was fed alone: what follows it is read as `early` above
            except httptools.HttpParserError as e:
                # too many header lines is what the guard would have refused first, had it counted them
                over = g.lines_over(data, pos, stop) if end >= 0 else None
                if over is not None:
                    self._refuse(over.status, over.reason, over.description)
                else:
                    self._bad_head(self._bad or e)
                return
            pos = stop
            if end < 0:
                if g.head_in_progress:
                    g.head_pending(now)
                continue
            ex, self._parsed = self._parsed, None
            if ex is None or self._bad is not None:
                self._bad_head(self._bad or FramingError("the request head does not parse"))
                return
            fr = ex.framing
            g.request(fr.length if not fr.chunked else -1, now)
            if ex.complete and fr.chunked:
                g.body_done()
            self._ex = ex
            ex.arrived = now
            self._upstream = None
            self._trailers = 0
            drive(self._serve(ex).__await__())

    def _hold(self, data: bytes) -> None:
        self._held += data
        if len(self._held) > self.guard.limits.max_head_bytes:
            self.pause("held")

    # --- llhttp callbacks --------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._ex is not None:
            self._overrun = True

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._ex is not None and self._parsed is None:
            # a chunked body's trailers: read past the guard, so held to its limits here (and not forwarded)
            self._trailers += 1
            lim = self.guard.limits
            if len(name) + len(value) + 4 > lim.max_line_bytes or self._trailers > lim.max_headers:
                raise FramingError("trailers over the header limits")
            return
        self._headers.append((name, value))
        if len(self._headers) > self._max_fields:  # the guard left a whole head's count to this (lines_over)
            raise FramingError("too many header lines")
        spelled, bit = self._fields[name]
        self._names.append(spelled)
        if bit:
            self._twice |= self._seen & bit
            self._seen |= bit

    def on_headers_complete(self) -> None:
        if self._overrun:
            return
        p = self._parser
        headers, self._headers = self._headers, []
        url, self._url = self._url, b""
        names, self._names = self._names, []
        seen, twice = self._seen, self._twice
        self._seen = self._twice = 0
        version = p.get_http_version()
        method = p.get_method()
        if version == "1.1" and not seen & CONNECTION_FIELDS and method != b"CONNECT":
            # what llhttp answers for such a head, without asking it (a call each): no upgrade, and an
            # HTTP/1.1 connection stays open
            upgrade, keep = False, True
        else:
            upgrade = p.should_upgrade()
            keep = p.should_keep_alive() and not upgrade
        fr = NO_BODY
        if not plain_head(seen, twice, version):
            try:
                fr = framing(headers, version, True, upgrade)
            except FramingError as e:
                self._bad = e
        ex = Exchange(method.decode("ascii"), url.decode("latin-1"), headers, names, version, keep, fr)
        ex.upgrade = upgrade
        ex.remote = self.peer
        if fr.has_body:
            ex.body = Body(self)
        self._parsed = ex

    def on_body(self, body: bytes) -> None:
        ex = self._parsed or self._ex
        if ex is not None and ex.body is not None and not self._overrun:
            ex.body.feed(body)

    def on_message_complete(self) -> None:
        if self._overrun:
            return
        ex = self._parsed or self._ex
        if ex is not None:
            ex.complete = True
            if ex.body is not None:
                ex.body.finish()

    # --- one request ---------------------------------------------------------------------------------

    async def _serve(self, ex: Exchange) -> None:
        s = self.server.state
        m = s.metrics
        m.in_flight.inc()
        names, raw = ex.names, ex.headers
        headers = CIMultiDictProxy(CIMultiDict([(names[i], _field_value(raw[i][1])) for i in range(len(names))]))
        cors_extra = s.cors.actual(headers.get(ORIGIN)) if s.cors.enabled else ()
        ex.keep = ex.keep and not self.server.draining
        try:
            if s.cors.enabled and s.cors.is_preflight(ex.method, headers):
                self._answer(ex, 204, list(preflight(s, headers)), b"")
                return
            raw_query = ex.query
            query = URL("/?" + raw_query, encoded=True).query if raw_query else _NO_QUERY
            host = headers.get(HOST) or self.local  # HTTP/1.0 may omit it
            a = await admit(s, ex, ex.path, raw_query, headers, query, self.peer, "http", host, ex.framing.has_body)
            if ex.upgrade and is_websocket(ex.method, headers):
                await self._websocket(ex, a, s)
                return
            if ex.version == "1.1" and not ex.complete and headers.get(EXPECT, "").lower() == "100-continue":
                self._write(_CONTINUE)  # the app's own 100, if it sends one, is not relayed (upstream.py)
            await self._forward(ex, a, cors_extra, s)
        except errors.Rejection as r:
            if s.cfg.route_metrics and r.route:
                m.route_requests.labels(r.route, r.reason).inc()
            status, hdrs, body = rejection_parts(r, s.cfg.realm, refused(s, ex, r, cors_extra))
            self._answer(ex, status, hdrs, body)
        except (Cut, ConnectionError):
            self.abort()
        except Exception:
            log.exception("proxying failed")
            self.abort()
        finally:
            m.in_flight.dec()
            self._done(ex)

    async def _forward(self, ex: Exchange, a: Admitted, extra: tuple[tuple[str, str], ...], s: Sidecar) -> None:
        fr = ex.framing
        limit = s.cfg.limits.max_body_bytes
        if limit and fr.length is not None and fr.length > limit:
            raise errors.BodyTooLarge(f"Content-Length {fr.length} exceeds {limit} bytes")
        head = _request_head(ex.method, a.path_qs, a.headers, fr)
        assert self.transport is not None
        reply = Reply(self.transport, ex.method, ex.version == "1.0", ex.keep, extra)
        pool = self.server.pool(s.cfg)
        conn = pool.idle(ex.arrived) or await pool.acquire(fresh=True)  # the usual case without a coroutine
        while True:
            self._upstream = conn
            finished = conn.send(reply, head)
            whole = True
            try:
                if ex.body is not None:
                    whole = await _send_body(ex.body, conn, finished, a, limit, fr.chunked)
                await finished
            except errors.UpstreamUnavailable:
                if reply.head_sent:
                    conn.close()
                    raise Cut() from None
                if conn.reused and not conn.received and ex.body is None and ex.method in _IDEMPOTENT:
                    # a pooled connection the app had already closed: once more, on a new one
                    conn.close()
                    conn = await pool.acquire(fresh=True)
                    continue
                s.metrics.upstream_errors.labels("upstream_unavailable").inc()
                conn.close()
                raise
            except BaseException:
                conn.close()
                if reply.head_sent:
                    raise Cut() from None
                raise
            break
        s.metrics.upstream_seconds.observe(reply.head_at - reply.sent_at)
        ex.keep = reply.keep_alive and whole
        self._upstream = None
        conn.release(whole)

    async def _websocket(self, ex: Exchange, a: Admitted, s: Sidecar) -> None:
        """The upgrade goes to the app on a connection of its own; a 101 turns both into a tunnel."""
        a.headers["Connection"] = "Upgrade"
        a.headers["Upgrade"] = "websocket"
        assert self.transport is not None
        reply = Reply(self.transport, ex.method, ex.version == "1.0", False, (), websocket=True)
        conn = await self.server.pool(s.cfg).acquire(fresh=True)
        self._upstream = conn
        try:
            await conn.send(reply, _request_head(ex.method, a.path_qs, a.headers, NO_BODY))
        except errors.UpstreamFailure:
            conn.close()
            raise
        if reply.status != 101 or conn.upgraded is None:
            s.metrics.websockets.labels("refused_by_app").inc()
            self._upstream = None
            conn.release(False)
            return
        self._upstream = None
        self._timer.cancel()
        expires_at = a.expires_at if s.cfg.websocket_close_on_expiry else None
        self.server.outbox.flush()  # the 101 before any frame: the tunnel writes directly
        tunnel = Tunnel(self, conn, expires_at, s.clock, s.metrics, lambda: None)
        early, ex.early = ex.early, b""
        self.resume("early")
        if early:
            tunnel.from_client(early)
        if conn.upgraded:
            tunnel.from_app(conn.upgraded)

    # --- answers and the end of a request ------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.server.outbox.write(self.transport, data)

    def _answer(self, ex: Exchange, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        """The sidecar's own answer. A body it did not read to its end makes the connection close."""
        if not ex.complete:
            ex.keep = False
        lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"]
        lines.extend(f"{k}: {v}\r\n" for k, v in headers)
        if status != 204:
            lines.append(f"Content-Length: {len(body)}\r\n")
        lines.append("Connection: close\r\n\r\n" if not ex.keep else "\r\n")
        self._write("".join(lines).encode("latin-1") + (b"" if ex.method == "HEAD" else body))

    def _done(self, ex: Exchange) -> None:
        self._ex = None
        self._upstream = None
        if self.transport is None or self.tunnel is not None:
            return
        now = self.loop.time()
        self.guard.response_done(now)
        if not ex.keep or not ex.complete or self._closing or self.server.draining:
            self._close_gently()
            return
        self.resume("held")
        held, self._held = self._held, b""
        if held:
            self.data_received(held)
        elif not self._timer.fires_by(now + self.guard.limits.idle_timeout):
            # The deadline now is the idle timeout's (settle). A timer that fires by then works it out itself
            # when it fires (_expire settles first): the usual keep-alive request costs no deadline work.
            self.guard.settle(now)
            self._arm()

    def _bad_head(self, e: Exception) -> None:
        self.server.state.metrics.requests_rejected.labels(errors.BadRequest.reason).inc()
        log.debug("request refused", extra={"reason": "bad_request", "error": e.__class__.__name__})
        r = refusal(e)
        self._refuse(400, r.reason, r.description, counted=True)

    def _refuse(self, status: int, reason: str, description: str, counted: bool = False) -> None:
        """A head the guard or the parser refused: answered (unless a response is under way), then closed."""
        if not counted:
            self.server.on_close(reason, status)
        self._closing = True
        if self._ex is None:
            self._write(answer(status, REJECTED.get(status, reason), description))
            self._close_gently()

    def _close_gently(self) -> None:
        """Half-close and drain what the client still sends for a moment: closing with unread bytes makes the
        kernel send a reset, which can destroy the answer before it is read."""
        self._closing = True
        t = self.transport
        if t is None:
            return
        self.server.outbox.flush()  # the answer before the end of the stream
        if t.can_write_eof():
            t.write_eof()
        self._timer.linger(self.abort)

    def abort(self) -> None:
        if self.transport is not None:
            self.server.outbox.flush()
            self.transport.close()

    # --- time ----------------------------------------------------------------------------------------

    def _arm(self) -> None:
        if self.transport is not None and not self._closing:
            self._timer.arm(self.guard)

    def _expire(self) -> None:
        if self.transport is None or self._closing or self.tunnel is not None:
            return
        now = self.loop.time()
        self.guard.settle(now)
        busy = self._ex is not None
        reason = self.guard.expired(now, bool(self._pauses), busy)
        if reason is None:
            self._arm()
            return
        self.server.on_close(reason, None)
        log.debug("connection timed out", extra={"reason": reason})
        if reason == HEADER_TIMEOUT and not busy:
            self._write(answer(408, reason, "the request head did not arrive in time"))
            self._close_gently()
        else:
            self._closing = True
            self.abort()  # a request reading the body sees the connection reset


async def _send_body(body: Body, conn: UpstreamConn, finished: Outcome, a: Admitted, limit: int, chunked: bool) -> bool:
    """Stream a request body to the app; True if it went whole. A form's last bytes wait until the form has
    been judged, so the app never receives a complete request the sidecar refuses."""
    scan = a.scan
    seen = 0
    held = b""
    while not finished.ended:  # the app answered early: the rest of the body is not needed
        chunk = await body.read()
        if not chunk:
            break
        seen += len(chunk)
        if limit and seen > limit:
            raise errors.BodyTooLarge(f"body exceeds {limit} bytes")
        if scan is not None:
            scan.feed(chunk)
            chunk, held = held, chunk
            if not chunk:
                continue
        conn.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
        await conn.drain()
    else:
        return False
    if scan is not None:
        await scan.finish()
        if held:
            conn.write(b"%x\r\n%s\r\n" % (len(held), held) if chunked else held)
    if chunked:
        conn.write(b"0\r\n\r\n")
    return True


def _field_value(raw: bytes) -> str:
    """A field's value as text. llhttp drops the blanks before a value, not after it (RFC 9110 §5.5: neither is
    part of it). Bytes that are not UTF-8 are kept as surrogates (`surrogateescape`), and told apart only when
    a strict decoding fails: compiled, a strict one is the cheaper call, as is a look at the last byte."""
    if raw and (raw[-1] == 32 or raw[-1] == 9):
        raw = raw.rstrip(b" \t")
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw.decode("utf-8", "surrogateescape")


def _field(raw: bytes) -> tuple[istr, int]:
    """A request field's name, as the multidict of the request's fields holds it, and its `field_bit`."""
    return field_name(raw), field_bit(raw)


def _request_head(method: str, path_qs: str, headers: CIMultiDict[str], fr: Framing) -> bytes:
    """The head for the app, framed by the sidecar alone: the client's Content-Length (which `Connection`
    may even have named) is replaced by the length the body was read with."""
    headers.popall(CONTENT_LENGTH, None)
    # one list of pieces and one join: compiled, a `str.join` per field (by `map`) costs ~15 % more here, and
    # `parts += (name, ": ", value, "\r\n")` ~10 % more than four appends (a tuple, and a generic call)
    parts = [method, " ", path_qs, " HTTP/1.1\r\n"]
    for name, value in headers.items():
        parts.append(name)
        parts.append(": ")
        parts.append(value)
        parts.append("\r\n")
    if fr.chunked:
        parts.append("Transfer-Encoding: chunked\r\n")
    elif fr.length is not None:
        parts.append(f"Content-Length: {fr.length}\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("utf-8", "surrogateescape")


class LeanServer:
    """The proxy listener on the lean engine. Its aiohttp app (never served) holds the state a reload swaps,
    and its cleanup context owns the key channel and the gauges, as for the aiohttp engine."""

    def __init__(self, runner: web.AppRunner, key: web.AppKey[Sidecar], limits: ConnLimits, on_close: OnClose) -> None:
        self.runner = runner
        self.app = runner.app
        # the state in force: app[key] as well, which a reload (app.apply_config) swaps along with this one; a
        # request reads it here, a field, rather than through the app's mapping, a call into aiohttp's Python
        self.state: Sidecar = self.app[key]
        self.limits = limits
        self.on_close = on_close
        self.loop = asyncio.get_running_loop()
        self.conns: set[ClientConn] = set()
        self.draining = False
        self.fields: Memo[bytes, tuple[istr, int]] = Memo(_field)  # a request field's name as it was sent
        self.outbox = Outbox(self.loop)
        self._pool_cfg = self.state.cfg
        self._pool = self._new_pool()
        self.port = 0
        self._server: asyncio.Server | None = None

    def pool(self, cfg: Config) -> UpstreamPool:
        """The pool for the config a request runs under (its state's, read once at its start)."""
        if cfg is not self._pool_cfg:  # a reload: a changed upstream or timeout gets a new pool
            old, self._pool_cfg = self._pool_cfg, cfg
            if (cfg.upstream, cfg.limits) != (old.upstream, old.limits):
                self._pool.close()
                self._pool = self._new_pool()
        return self._pool

    def _new_pool(self) -> UpstreamPool:
        s = self.state
        lim = s.cfg.limits
        return UpstreamPool(s.cfg.upstream, lim.upstream_connect_timeout, lim.upstream_timeout, s.metrics, self.outbox)

    @classmethod
    async def create(cls, state: Sidecar, limits: ConnLimits, on_close: OnClose) -> LeanServer:
        """Set up (the key channel and the gauges start) without listening yet."""
        from sidecar.app import STATE, proxy_app  # the wiring imports this module

        runner = web.AppRunner(proxy_app(state), handle_signals=False)
        self = cls(runner, STATE, limits, on_close)
        runner.app[LEAN] = self  # where a reload finds it
        await runner.setup()
        return self

    async def listen(self, host: str, port: int, reuse_port: bool = False, backlog: int = 1024) -> None:
        self._server = await self.loop.create_server(
            lambda: ClientConn(self), host, port, reuse_address=True, reuse_port=reuse_port or None, backlog=backlog
        )
        # uvloop's `sockets` is a list where typeshed says tuple; a compiled build checks the declared type
        self.port = cast(Any, self._server).sockets[0].getsockname()[1]

    @classmethod
    async def start(
        cls,
        state: Sidecar,
        host: str,
        port: int,
        limits: ConnLimits,
        on_close: OnClose,
        reuse_port: bool = False,
        backlog: int = 1024,
    ) -> LeanServer:
        self = await cls.create(state, limits, on_close)
        await self.listen(host, port, reuse_port, backlog)
        return self

    async def close(self, drain_timeout: float = 0.0) -> None:
        """Stop accepting, close idle connections, give requests in flight `drain_timeout`, then close all."""
        self.draining = True
        self.state.draining = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.conns):
            if conn.idle:
                conn.abort()
        deadline = self.loop.time() + drain_timeout
        while any(not c.idle for c in self.conns if c.tunnel is None) and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.conns):
            conn.abort()
        self._pool.close()
        if self._server is not None:
            await self._server.wait_closed()
        await self.runner.cleanup()


LEAN: Final = web.AppKey("lean", LeanServer)  # on the lean server's aiohttp app: the server itself
