"""A WebSocket after its upgrade: bytes piped both ways, and a close frame each way when the token expires.

The sidecar does not decode messages: each direction only tracks where frames end (FrameCursor), so that a
close frame is never written into the middle of someone else's frame. Expiry (exp + leeway + grace on the
injected clock) is checked on every read in either direction and by a watchdog at least once a second; at
expiry each side gets close code 1008 (policy violation), "token expired", after the frame in progress.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Callable
from typing import Protocol

from sidecar.clock import Clock
from sidecar.metrics import Metrics
from sidecar.websocket import POLICY_VIOLATION  # one close code for both engines

_CLOSE = 0x8  # the close frame's opcode
_WATCHDOG = 1.0
_LINGER = 1.0  # after both close frames: how long the peers get to answer before both connections close


class FrameCursor:
    """Where the frames of one direction end, fed the bytes as they pass."""

    __slots__ = ("_head", "_need", "closed")

    def __init__(self) -> None:
        self._head = b""  # the bytes of a frame header seen so far
        self._need = 0  # payload bytes still to pass in the current frame
        self.closed = False  # a close frame went this way

    @property
    def at_boundary(self) -> bool:
        return not self._head and not self._need

    def feed(self, data: bytes, stop_at_boundary: bool = False) -> int:
        """Pass over `data`; returns how many bytes were passed: all, or with `stop_at_boundary` the offset of
        the first frame end (0 if the cursor is at one already)."""
        pos, n = 0, len(data)
        while pos < n:
            if stop_at_boundary and self.at_boundary:
                return pos
            if self._need:
                take = min(self._need, n - pos)
                self._need -= take
                pos += take
                continue
            head = self._head + data[pos : pos + 14]
            size = _header_size(head)
            if size is None or len(head) < size:
                pos += len(head) - len(self._head)  # all that is left: 14 bytes would complete any header
                self._head = head
                continue
            pos += size - len(self._head)
            self._head = b""
            self._need = _payload_length(head)
            if head[0] & 0x0F == _CLOSE:
                self.closed = True
        return pos


def _header_size(head: bytes) -> int | None:
    if len(head) < 2:
        return None
    n = head[1] & 0x7F
    return 2 + (2 if n == 126 else 8 if n == 127 else 0) + (4 if head[1] & 0x80 else 0)


def _payload_length(head: bytes) -> int:
    n = head[1] & 0x7F
    if n == 126:
        return int(struct.unpack_from("!H", head, 2)[0])
    if n == 127:
        return int(struct.unpack_from("!Q", head, 2)[0])
    return n


def close_frame(code: int, reason: bytes, masked: bool) -> bytes:
    """A close frame; a client's (to the app) must be masked (RFC 6455 §5.3)."""
    payload = struct.pack("!H", code) + reason
    if not masked:
        return bytes((0x88, len(payload))) + payload
    mask = os.urandom(4)
    return bytes((0x88, 0x80 | len(payload))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class Side(Protocol):
    """One end of the tunnel: the client's connection or the app's."""

    transport: asyncio.Transport | None

    def tunnel_to(self, tunnel: Tunnel | None) -> None: ...


class Tunnel:
    """Both ends of one WebSocket. Each end calls `from_client`/`from_app` with what it reads and `lost` when
    its connection ends."""

    def __init__(
        self,
        client: Side,
        app: Side,
        expires_at: float | None,
        clock: Clock,
        metrics: Metrics,
        done: Callable[[], None],
    ) -> None:
        self.client, self.app = client, app
        self.expires_at, self.clock, self.metrics = expires_at, clock, metrics
        self._done = done
        self._up = FrameCursor()  # client → app
        self._down = FrameCursor()  # app → client
        self._closing = False  # the token expired: close frames are due after the frames in progress
        self._sent_up = self._sent_down = False
        self._ended = False
        self._first_close: str | None = None  # how the session ends, by the first close frame
        loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = loop.call_later(self._wait(), self._watch)
        client.tunnel_to(self)
        app.tunnel_to(self)

    def _wait(self) -> float:
        if self.expires_at is None:
            return _WATCHDOG
        return min(_WATCHDOG, max(0.05, self.expires_at - self.clock.now()))

    def _expired(self) -> bool:
        if not self._closing and self.expires_at is not None and self.clock.now() >= self.expires_at:
            self._closing = True
            self._flush_closes(b"", b"")
        return self._closing

    def _watch(self) -> None:
        self._timer = None
        if self._ended:
            return
        if not self._expired():
            self._timer = asyncio.get_running_loop().call_later(self._wait(), self._watch)

    def from_client(self, data: bytes) -> None:
        if self._expired():
            self._flush_closes(data, b"")
            return
        self._up.feed(data)
        if self._up.closed and self._first_close is None:
            self._first_close = "client_closed"
        _write(self.app, data)

    def from_app(self, data: bytes) -> None:
        if self._expired():
            self._flush_closes(b"", data)
            return
        self._down.feed(data)
        if self._down.closed and self._first_close is None:
            self._first_close = "app_closed"
        _write(self.client, data)

    def _flush_closes(self, up: bytes, down: bytes) -> None:
        """While closing: pass only the rest of the frames in progress, then the close frames."""
        self._sent_up = self._sent_up or _close_after_frame(self._up, up, self.app, masked=True)
        self._sent_down = self._sent_down or _close_after_frame(self._down, down, self.client, masked=False)
        if self._sent_up and self._sent_down and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(_LINGER, self._end, "token_expired")

    def lost(self, side: Side) -> None:
        """One end's connection ended: close the other. The session ended as whoever sent the first close
        frame chose (the other end may well drop its connection first), or as the dropped end did."""
        if self._closing:
            end = "token_expired"
        elif self._first_close is not None:
            end = self._first_close
        else:
            end = "client_closed" if side is self.client else "app_closed"
        self._end(end)

    def _end(self, how: str) -> None:
        if self._ended:
            return
        self._ended = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.metrics.websockets.labels(how).inc()
        for side in (self.client, self.app):
            side.tunnel_to(None)
            if side.transport is not None and not side.transport.is_closing():
                side.transport.close()
        self._done()


def _write(side: Side, data: bytes) -> None:
    t = side.transport
    if data and t is not None and not t.is_closing():
        t.write(data)


def _close_after_frame(cursor: FrameCursor, data: bytes, to: Side, masked: bool) -> bool:
    """One direction while closing: the rest of the frame in progress, then the close frame once at a frame
    boundary. True when the close frame went."""
    n = cursor.feed(data, stop_at_boundary=True)
    _write(to, data[:n])
    if not cursor.at_boundary:
        return False
    _write(to, close_frame(POLICY_VIOLATION, b"token expired", masked=masked))
    return True
