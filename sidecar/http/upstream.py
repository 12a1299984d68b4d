"""The app's side: pooled keep-alive connections, one request at a time each, responses relayed as they arrive.

A response head is rewritten minimally (hop-by-hop and `Connection`-named headers out, CORS headers in, the
client's framing chosen) and its body passed on without decoding; chunked bodies are re-chunked, so the app's
chunk framing and trailers never reach the client. A connection goes back to the pool only after a complete
response to a request whose body was sent whole; anything else (an unread or partial body, a framing the
sidecar refused, bytes after the response) closes it. Flow control runs both ways: a client that reads
slowly pauses reading from the app, and an app that reads slowly pauses the client's body.
"""

from __future__ import annotations

import asyncio
import functools
import re
import ssl
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Final, cast
from urllib.parse import urlsplit

import httptools

from sidecar import errors
from sidecar.headers import HOP_BY_HOP, Memo
from sidecar.http.framing import NO_BODY, Framing, FramingError, body_framing
from sidecar.http.outbox import Outbox
from sidecar.metrics import Metrics

_HOP: Final = frozenset(h.encode() for h in HOP_BY_HOP)
_PHRASE: Final = re.compile(rb"[\t\x20-\x7e]*")  # RFC 9112 §4: reason-phrase is HTAB, SP and visible ASCII
_NO_BODY_STATUS: Final = (204, 304)
_IDLE_SECONDS: Final = 30.0  # a pooled connection unused this long is closed rather than reused
_MAX_IDLE: Final = 256  # pooled connections kept per worker
_MAX_LINES: Final = 1024  # status lines, Content-Length values and lines remembered per pool


@dataclass(slots=True)
class Reply:
    """One response on its way to a client."""

    client: asyncio.Transport
    method: str
    http10: bool
    keep_alive: bool  # the client's connection stays open afterwards (the relay may turn this off)
    extra: tuple[tuple[str, str], ...]  # CORS headers for every answer
    websocket: bool = False  # a 101 is expected: the relay stops at the head and hands both sides to a tunnel
    head_sent: bool = False
    sent_at: float = 0.0  # loop time the request's head was first written to the app (a retry keeps it)
    head_at: float = 0.0  # loop time the app's head arrived
    status: int = 0

    # Written out: a dataclass's generated __init__ stays Python in the compiled build (~2,000 instructions).
    def __init__(
        self,
        client: asyncio.Transport,
        method: str,
        http10: bool,
        keep_alive: bool,
        extra: tuple[tuple[str, str], ...],
        websocket: bool = False,
    ) -> None:
        self.client = client
        self.method = method
        self.http10 = http10
        self.keep_alive = keep_alive
        self.extra = extra
        self.websocket = websocket
        self.head_sent = False
        self.sent_at = 0.0
        self.head_at = 0.0
        self.status = 0


class Cut(Exception):
    """The response broke off after its head reached the client: the client's connection must close."""


class Outcome:
    """How one exchange ended, awaited by the request's coroutine (`drive` runs it, never an asyncio Task).
    Unlike a Future's, its waiter resumes at once when the response is complete, inside the read that
    completed it: no callback handle and no extra loop round per request (in process: 143 -> 140 us)."""

    __slots__ = ("_error", "_waiter", "ended")

    def __init__(self) -> None:
        self.ended = False
        self._error: BaseException | None = None
        self._waiter: Request | None = None

    def end(self, failure: BaseException | None) -> None:
        if self.ended:
            return
        self.ended, self._error = True, failure
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            drive(waiter)

    def wait(self, waiter: Request) -> None:
        self._waiter = waiter

    def __await__(self) -> Generator[Outcome, None, None]:
        if not self.ended:
            yield self
        if self._error is not None:
            raise self._error


# A request's coroutine as `drive` runs it: its await iterator (`coro.__await__()`), which yields the app's
# Outcome, a future (body bytes, a connection) or None (a bare yield).
Request = Generator["asyncio.Future[Any] | Outcome | None", None, None]
_DONE: Final = object()


def drive(steps: Request, _: object = None) -> None:
    """Run a request's coroutine without a task of its own: started at once, resumed by the callback of the
    future it waits for, or at once when the exchange's `Outcome` ends. An asyncio Task does this too, plus a
    name, cancellation and `current_task()`, and costs a scheduling round and a few microseconds per request.
    What such a coroutine runs must therefore not need `asyncio.current_task()` (asyncio.timeout,
    TaskGroup): that work goes into a task of its own (as the pool's connect does). It must not raise."""
    # `next`, not `coro.send(None)`: a coroutine that returns None ends `next` without a StopIteration
    # (CPython's and mypyc's alike), where `send` raises one, which the compiled build catches with a
    # traceback: ~3,100 instructions a request (`loadtest/bench/instructions.py`).
    waiting = next(steps, _DONE)
    if waiting is _DONE:
        return
    if waiting is None:  # a bare yield (asyncio.sleep(0)): go on in the next loop round
        asyncio.get_running_loop().call_soon(drive, steps)
        return
    if isinstance(waiting, Outcome):
        waiting.wait(steps)  # its end resumes the coroutine with a direct call: no callback object, no handle
        return
    future = cast("asyncio.Future[Any]", waiting)
    future._asyncio_future_blocking = False
    future.add_done_callback(functools.partial(drive, steps))


class UpstreamConn(asyncio.Protocol):
    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.reply: Reply | None = None
        self.finished: Outcome | None = None
        self.received = False  # a byte of the current response arrived (a retry is no longer safe)
        self.reused = False
        self.upgraded: bytes | None = None  # after a 101: the bytes that followed its head
        self.tunnel: object | None = None  # set by tunnel.Tunnel
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        # the head's fields as llhttp reports them: those the client may get, and those the sidecar reads and
        # drops (hop-by-hop, framing), sorted once per field by the pool's memo of names
        self._kept: list[tuple[bytes, bytes]] = []
        self._hop: list[tuple[bytes, bytes]] = []
        self._dropped = pool.dropped
        self._in_body = False  # the final head is done: fields llhttp reports now are a chunked body's trailers
        self._reason = b""
        self._out: list[bytes] = []
        self._chunk = False  # the body goes to the client re-chunked
        self._eof_ends = False  # the body ends when the app closes the connection
        self._complete = False
        self._info = False  # the current message is a 1xx
        self._keep = False  # the app keeps this connection open after the current response
        self.active_at = 0.0  # loop time of the last read, or of the request head's write: the read timeout's start
        self._timer: asyncio.TimerHandle | None = None
        self._drain: asyncio.Future[None] | None = None
        self._paused = False

    # --- asyncio -----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        self.pool.forget(self)
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(errors.UpstreamUnavailable("the app closed the connection"))
        if self.tunnel is not None:
            self.tunnel.lost(self)  # type: ignore[attr-defined]
            return
        if self.reply is None or self._complete:
            return
        if self._eof_ends and self.reply.head_sent:
            self._complete = True  # a body delimited by the close (RFC 9112 §6.3, last rule)
            if self._chunk:
                self._out.append(b"0\r\n\r\n")
            self._flush()
            self._end(None)
        else:
            self._end(Cut() if self.reply.head_sent else errors.UpstreamUnavailable("the app closed the connection"))

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.from_app(data)  # type: ignore[attr-defined]
            return
        if self.reply is None or self._complete:
            self.close()  # bytes nobody asked for: this connection can no longer be trusted to frame
            return
        self.received = True
        self.active_at = self.pool.loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as up:
            self.upgraded = data[int(up.args[0]) :]
        except (httptools.HttpParserError, FramingError, ValueError):
            self._flush()
            self._end(Cut() if self.reply.head_sent else errors.UpstreamUnavailable("the app's response is malformed"))
            self.close()
            return
        self._flush()
        if self._complete or (self.upgraded is not None and self.reply.status == 101):
            self._end(None)

    # --- llhttp callbacks --------------------------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_body:
            return  # trailers are not relayed (the re-chunked body ends without any), nor kept for the next head
        # a name of a length no dropped name has is kept without its lookup (most of an app's names)
        if _DROPPED_LENGTHS >> len(name) & 1 and self._dropped[name]:
            self._hop.append((name, value))
        else:
            self._kept.append((name, value))

    def on_headers_complete(self) -> None:
        reply = self.reply
        assert reply is not None
        p = self._parser
        status = p.get_status_code()
        kept, hop = self._kept, self._hop
        self._kept, self._hop = [], []
        reason, self._reason = self._reason, b""
        if not 100 <= status <= 599:
            raise FramingError(f"status {status} is not an HTTP status")  # RFC 9110 §15: three digits, 1xx-5xx
        if 100 <= status < 200 and status != 101:
            self._info = True  # interim answers (100 Continue, 103) are the sidecar's business, not relayed
            return
        if status == 101 and not reply.websocket:
            raise FramingError("a 101 to a request that asked for no upgrade")
        self._keep = p.should_keep_alive()  # llhttp forgets this once the message is complete
        reply.status = status
        reply.head_at = self.active_at  # this read's loop time (data_received)
        no_body = reply.method == "HEAD" or status in _NO_BODY_STATUS or status == 101
        out = [self.pool.status_lines[status, reason]]
        length_line = b""  # the client's Content-Length line: read with the framing, from the app's one length
        if status == 101:
            fr = NO_BODY
            # the handshake's headers are the tunnel's (the order of different names carries no meaning)
            out.extend(b"%s: %s\r\n" % pair for pair in (*kept, *hop))
        else:
            # the framing and `Connection` values, which the client does not get
            lengths: list[bytes] = []
            codings: list[bytes] = []
            named: set[bytes] | None = None
            for name, value in hop:
                if len(name) == 14:  # the one dropped name of this length: Content-Length
                    lengths.append(value)
                elif len(name) == 17:  # Transfer-Encoding, likewise
                    codings.append(value)
                elif (
                    len(name) == 10
                    and value not in _PLAIN_SPELLED  # the usual value, told without lowering either
                    and name.lower() == b"connection"
                    and value.lower() not in _PLAIN_CONNECTION
                ):
                    named = (named or set()) | {t.strip().lower() for t in value.split(b",")}
            version = p.get_http_version()
            if len(lengths) == 1 and not codings and (version == "1.1" or version == "1.0"):
                fr, length_line = self.pool.lengths[lengths[0]]  # the usual answer: a Content-Length read before
            else:
                fr = body_framing(lengths, codings, version)
            if named and (named := named - _PLAIN_CONNECTION):
                kept = [pair for pair in kept if pair[0].lower() not in named]
            for name, value in kept:  # pieces for the one join below: a join per field costs more, and so
                out.append(name)  # does `out += (name, b": ", value, b"\r\n")` (a tuple, a generic call)
                out.append(b": ")
                out.append(value)
                out.append(b"\r\n")
        for extra_name, extra_value in reply.extra if status != 101 else ():
            out.append(f"{extra_name}: {extra_value}\r\n".encode("latin-1"))
        if fr.length is not None and status != 204:
            # only `pool.lengths` frames with a length (`body_framing` gives one for a single Content-Length
            # alone, which that branch takes), and it reads the line with it
            assert length_line
            out.append(length_line)
        elif no_body:
            pass
        elif not reply.http10:
            out.append(b"Transfer-Encoding: chunked\r\n")
            self._chunk = True
        else:
            reply.keep_alive = False  # HTTP/1.0 has no chunks: the close ends the body
        self._eof_ends = not no_body and fr.length is None and not fr.chunked
        if self._eof_ends:
            reply.keep_alive = False  # read-until-close from the app: the client's body ends with a close too
        if status != 101:
            if not reply.keep_alive:
                out.append(b"Connection: close\r\n")
            elif reply.http10:
                out.append(b"Connection: keep-alive\r\n")
        out.append(b"\r\n")
        self._out.append(b"".join(out))
        reply.head_sent = True
        self._in_body = True
        if reply.method == "HEAD" and status != 101:
            # llhttp cannot be told that a HEAD's answer has no body: the message ends here, and the next
            # response on this connection starts with a fresh parser.
            self._complete = True
            self._parser = httptools.HttpResponseParser(self)

    def on_body(self, body: bytes) -> None:
        if self._chunk:
            self._out.append(b"%x\r\n" % len(body))
            self._out.append(body)
            self._out.append(b"\r\n")
        else:
            self._out.append(body)

    def on_message_complete(self) -> None:
        if self._info:
            self._info = False
            return
        if self._chunk:
            self._out.append(b"0\r\n\r\n")
        self._complete = True

    # --- the exchange --------------------------------------------------------------------------------

    def send(self, reply: Reply, head: bytes) -> Outcome:
        """Write a request head; the outcome ends with the response (raises a Rejection before its head went
        out, Cut after)."""
        assert self.transport is not None
        loop = self.pool.loop
        self.reply = reply
        self.received = self._complete = self._chunk = self._eof_ends = self._info = self._keep = False
        self._in_body = False
        self.finished = Outcome()
        self.active_at = loop.time()
        if not reply.sent_at:
            reply.sent_at = self.active_at
        if self._timer is None:
            # one timer per connection, moved lazily: it re-arms itself from `active_at` when it fires early
            self._timer = loop.call_at(self.active_at + self.pool.read_timeout, self._check_timeout)
        self.pool.outbox.write(self.transport, head)
        return self.finished

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.pool.outbox.write(self.transport, data)

    async def drain(self) -> None:
        if self.transport is None:
            raise errors.UpstreamUnavailable("the app closed the connection")
        if self._paused:
            if self._drain is None:
                self._drain = self.pool.loop.create_future()
            await self._drain

    def _check_timeout(self) -> None:
        self._timer = None
        if self.finished is None or self.finished.ended or self.transport is None:
            return  # nothing in flight: the next request arms it again
        due = self.active_at + self.pool.read_timeout
        if self.pool.loop.time() < due:
            self._timer = self.pool.loop.call_at(due, self._check_timeout)
            return
        self.pool.metrics.upstream_errors.labels("upstream_timeout").inc()
        reply = self.reply
        self._end(Cut() if reply is not None and reply.head_sent else errors.UpstreamTimeout())
        self.close()

    def _flush(self) -> None:
        if self._out and self.reply is not None:
            client = self.reply.client
            if not client.is_closing():
                if len(self._out) == 1:
                    self.pool.outbox.write(client, self._out[0])
                else:
                    self.pool.outbox.writelines(client, self._out)
            self._out.clear()

    def _end(self, failure: BaseException | None) -> None:
        if self.finished is not None:
            self.finished.end(failure)

    def release(self, body_sent: bool) -> None:
        """The exchange is over: back to the pool if the connection can carry another, else closed."""
        self.reply, self.finished = None, None
        if body_sent and self._complete and self.upgraded is None and self._keep:
            self.pool.put(self, self.active_at)  # idle since the response's last bytes
        else:
            self.close()

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def tunnel_to(self, tunnel: object | None) -> None:
        self.tunnel = tunnel

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.pool.forget(self)
        if self.transport is not None:
            self.pool.outbox.flush()  # what was written to it goes first
            self.transport.close()


_PLAIN_CONNECTION: Final = frozenset({b"keep-alive", b"close", b""})
_PLAIN_SPELLED: Final = frozenset({b"keep-alive", b"Keep-Alive", b"close", b"Close", b""})


# the lengths of the dropped names, as bits (a test of one costs a few instructions, a name's lookup ~400)
_DROPPED_LENGTHS: Final = sum({1 << len(name) for name in (*_HOP, b"content-length")})


def _dropped(name: bytes) -> bool:
    """Response header names that never reach the client: hop-by-hop, and Content-Length, which the sidecar
    writes itself (remembered per name as sent, in the pool's `dropped`)."""
    low = name.lower()
    return low in _HOP or low == b"content-length"


def _status_line(app_status: tuple[int, bytes]) -> bytes:
    """The client's status line for the app's (status, phrase); a phrase with controls (llhttp lets NUL
    through there) is dropped, not relayed."""
    status, reason = app_status
    return b"HTTP/1.1 %d %s\r\n" % (status, reason if _PHRASE.fullmatch(reason) is not None else b"")


def _length_framing(value: bytes) -> tuple[Framing, bytes]:
    """The framing of an HTTP/1.x message whose one framing field is this Content-Length (or FramingError),
    and the client's Content-Length line for it."""
    fr = body_framing([value], [], "1.1")
    assert fr.length is not None
    return fr, b"Content-Length: %d\r\n" % fr.length


class UpstreamPool:
    """Keep-alive connections to the app, most recently used first."""

    def __init__(self, url: str, connect_timeout: float, read_timeout: float, metrics: Metrics, outbox: Outbox) -> None:
        parts = urlsplit(url)
        self.url = url
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if parts.scheme == "https" else None
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.metrics = metrics
        self.outbox = outbox  # the engine's one outbox: the app's requests and the clients' answers
        self.loop = asyncio.get_running_loop()
        self._idle: list[UpstreamConn] = []
        self.dropped: Memo[bytes, bool] = Memo(_dropped)
        # an app answers with a few statuses and lengths: their lines, remembered (a length with its framing)
        self.status_lines: Memo[tuple[int, bytes], bytes] = Memo(_status_line, _MAX_LINES)
        self.lengths: Memo[bytes, tuple[Framing, bytes]] = Memo(_length_framing, _MAX_LINES)

    def idle(self, now: float) -> UpstreamConn | None:
        """A pooled connection, most recently used first, if one is still good (`now`: the loop's time, as the
        caller read it for the request)."""
        while self._idle:
            conn = self._idle.pop()
            usable = conn.transport is not None and not conn.transport.is_closing()
            if usable and now - conn.idle_since < _IDLE_SECONDS:
                conn.reused = True
                return conn
            conn.close()
        return None

    async def acquire(self, fresh: bool = False) -> UpstreamConn:
        conn = None if fresh else self.idle(self.loop.time())
        if conn is not None:
            return conn
        # a new one in a task of its own: requests run without one (drive), and the timeout needs a task
        return await self.loop.create_task(self._connect())

    async def _connect(self) -> UpstreamConn:
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await self.loop.create_connection(
                    lambda: UpstreamConn(self), self.host, self.port, ssl=self.ssl
                )
        except TimeoutError:
            self.metrics.upstream_errors.labels("upstream_unavailable").inc()
            raise errors.UpstreamUnavailable("connecting to the app timed out") from None
        except OSError as e:
            self.metrics.upstream_errors.labels("upstream_unavailable").inc()
            raise errors.UpstreamUnavailable(f"the app refused the connection ({e.__class__.__name__})") from None
        return conn

    def put(self, conn: UpstreamConn, since: float) -> None:
        """Keep `conn`, idle since loop time `since`."""
        conn.idle_since = since
        self._idle.append(conn)
        if len(self._idle) > _MAX_IDLE:
            self._idle.pop(0).close()

    def forget(self, conn: UpstreamConn) -> None:
        if conn in self._idle:
            self._idle.remove(conn)

    def close(self) -> None:
        for conn in self._idle[:]:
            conn.close()
        self._idle.clear()
