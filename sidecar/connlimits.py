"""Connection limits: how many head bytes a client may make us hold, and how long it may take.

`ConnGuard` is sans-IO so any listener can drive it (aiohttp's protocol today, an httptools protocol later):
the listener feeds it the bytes of each request head before its parser sees them, tells it when a head,
a body and a response end, and asks it for the one deadline that matters now. It never touches a socket
or a clock; times are passed in.

The head is checked while it arrives, so the parser never holds more than `max_head_bytes` of one head:
N abusive connections cost about N x the limit, not N x what the parser would accept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from sidecar.config import Limits

# Labels of sidecar_connections_closed_total (declared in metrics.py): why the sidecar closed a connection.
HEADER_TIMEOUT: Final = "header_timeout"
IDLE_TIMEOUT: Final = "idle_timeout"
BODY_TIMEOUT: Final = "body_timeout"
HEADERS_TOO_LARGE: Final = "headers_too_large"
TOO_MANY_HEADERS: Final = "too_many_headers"
REQUEST_LINE_TOO_LONG: Final = "request_line_too_long"

# The admin port serves probes and scrapes: small heads, few headers.
_ADMIN_HEAD_BYTES = 8192
_ADMIN_HEADERS = 32


@dataclass(frozen=True, slots=True)
class ConnLimits:
    max_line_bytes: int  # the request line
    max_head_bytes: int  # request line + header lines + the empty line
    max_headers: int  # header lines
    header_timeout: float  # a started head must be complete this long after its first byte
    idle_timeout: float  # keep-alive: between the end of a response and the next request's first byte
    body_timeout: float  # longest pause between two reads of a request body

    @classmethod
    def from_config(cls, lim: Limits) -> ConnLimits:
        return cls(
            max_line_bytes=lim.max_header_bytes,
            max_head_bytes=lim.max_headers_total_bytes,
            max_headers=lim.max_headers,
            header_timeout=lim.header_timeout,
            idle_timeout=lim.idle_timeout,
            body_timeout=lim.body_timeout,
        )

    def for_admin(self) -> ConnLimits:
        return ConnLimits(
            max_line_bytes=min(self.max_line_bytes, _ADMIN_HEAD_BYTES),
            max_head_bytes=min(self.max_head_bytes, _ADMIN_HEAD_BYTES),
            max_headers=min(self.max_headers, _ADMIN_HEADERS),
            header_timeout=self.header_timeout,
            idle_timeout=self.idle_timeout,
            body_timeout=self.body_timeout,
        )


class HeadRefused(Exception):
    """The head broke a limit: answer `status`, count `reason`, close."""

    def __init__(self, status: int, reason: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.reason = reason
        self.description = description


_CRLF2: Final = b"\r\n\r\n"


def _past_empty_lines(data: bytes, pos: int) -> int:
    """RFC 9112 §2.2: empty lines before a request line are ignored; they do not start a head. (Byte by
    byte: compiled, `data.startswith(b"\\r\\n", pos)` is a generic call of ~900 instructions.)"""
    n = len(data)
    while pos + 1 < n and data[pos] == 13 and data[pos + 1] == 10:
        pos += 2
    return pos


class ConnGuard:
    """One connection's limits state: the head being read, whether a body or a request is in progress.

    Deadlines are computed only by `settle()` and `response_done()`, so a request whose head (and body)
    arrive in one read costs no timer work at all.
    """

    __slots__ = (
        "_body_left",
        "_body_seen",
        "_head_started",
        "_idle_since",
        "_line",
        "_line_done",
        "_lines",
        "_open_requests",
        "_served",
        "_tail",
        "_used",
        "deadline",
        "limits",
        "reason",
    )

    def __init__(self, limits: ConnLimits, now: float) -> None:
        self.limits = limits
        self._used = 0  # bytes of the current head so far
        self._lines = 0  # line feeds in it so far
        self._line_done = False  # the request line is complete
        self._line = 0  # bytes of the current, unfinished line
        self._tail = b""  # last bytes of the previous read of this head: a terminator may straddle reads
        self._head_started: float | None = None  # when the current head's first byte arrived (if incomplete)
        self._body_left: int | None = None  # body bytes still due; -1: unknown length (chunked)
        self._body_seen = now  # last time body bytes arrived
        self._open_requests = 0  # heads parsed whose response is not finished
        self._served = False  # a response was finished on this connection (silence is idle, not a slow head)
        self._idle_since = now
        # A connection that says nothing gets the header timeout from the moment it was accepted.
        self.deadline: float | None = now + limits.header_timeout
        self.reason: str = HEADER_TIMEOUT

    # --- the head -----------------------------------------------------------------------------------

    @property
    def in_body(self) -> bool:
        return self._body_left is not None

    def head(self, data: bytes, pos: int, parser_counts: bool = False) -> int:
        """Account for head bytes `data[pos:]`: the offset just past the head's end, or -1 if it continues.

        Raises HeadRefused before the bytes that break a limit reach the parser. `parser_counts`: the caller's
        parser stops at max_headers fields, and the caller asks `lines_over` when it refuses a head; a whole
        head in one read is then not counted here (a count over its bytes is ~5,000 instructions a request)."""
        lim = self.limits
        if self._used == 0:
            pos = _past_empty_lines(data, pos)
            if pos >= len(data):
                return -1
            # The common case, a whole head in one read no longer than one line may be: scans in C.
            stop = data.find(_CRLF2, pos) + 4
            if (
                stop >= 4
                and stop - pos <= lim.max_line_bytes
                and (parser_counts or data.count(b"\n", pos, stop) - 2 <= lim.max_headers)
            ):
                return stop
        stop = -1  # just past the head's empty line, if it is in this read
        if self._tail:  # the terminator may have begun in the previous read
            hit = (self._tail + data[pos : pos + 3]).find(_CRLF2)
            if hit >= 0:
                stop = pos + hit - len(self._tail) + 4
        if stop < 0:
            end = data.find(_CRLF2, pos)
            if end >= 0:
                stop = end + 4
        done = stop >= 0
        if not done:
            stop = len(data)
        lines = self._lines + data.count(b"\n", pos, stop)
        # complete header lines: every line feed but the request line's (and the empty line's, at the end)
        if (lines - 2 if done else lines - 1) > lim.max_headers:
            raise HeadRefused(431, TOO_MANY_HEADERS, f"more than {lim.max_headers} header lines")
        self._check_lines(data, pos, stop)
        size = self._used + stop - pos
        if size > lim.max_head_bytes:
            raise HeadRefused(431, HEADERS_TOO_LARGE, f"request head over {lim.max_head_bytes} bytes")
        if done:
            self._used = self._lines = self._line = 0
            self._line_done = False
            self._tail = b""
            self._head_started = None
            return stop
        self._used = size
        self._lines = lines
        self._tail = data[-3:] if len(data) - pos >= 3 else (self._tail + data[pos:])[-3:]
        return -1

    def lines_over(self, data: bytes, pos: int, stop: int) -> HeadRefused | None:
        """For a head `data[pos:stop]` the parser refused, which `head(parser_counts=True)` let through
        uncounted: the refusal `head` would have raised first for its header lines, if it has too many. (A
        head counted on arrival has no more than max_headers: None.)"""
        pos = _past_empty_lines(data, pos)
        if data.count(b"\n", pos, stop) - 2 > self.limits.max_headers:
            return HeadRefused(431, TOO_MANY_HEADERS, f"more than {self.limits.max_headers} header lines")
        return None

    def _check_lines(self, data: bytes, start: int, stop: int) -> None:
        """Every line (CRLF included) within max_line_bytes; the request line's excess is a 414.
        At most max_headers + 2 turns: the header count was checked first."""
        limit = self.limits.max_line_bytes
        line = self._line
        while True:
            nl = data.find(b"\n", start, stop)
            line += (stop if nl < 0 else nl + 1) - start
            if line > limit:
                if not self._line_done:
                    raise HeadRefused(414, REQUEST_LINE_TOO_LONG, f"request line over {limit} bytes")
                raise HeadRefused(431, HEADERS_TOO_LARGE, f"a header line over {limit} bytes")
            if nl < 0:
                self._line = line
                return
            self._line_done = True
            line = 0
            start = nl + 1

    def whole_head(self, data: bytes) -> bool:
        """Is `data` exactly one new head, ending at its last byte, inside every limit? (The usual read:
        true means the guard has nothing to remember about it.)"""
        lim = self.limits
        return (
            self._used == 0
            and self._body_left is None
            and data.endswith(_CRLF2)
            and len(data) <= lim.max_line_bytes
            and data.find(_CRLF2) == len(data) - 4
            and data.count(b"\n") - 2 <= lim.max_headers
            and not data.startswith(b"\r\n")
        )

    def opened(self) -> None:
        """A request without a body was parsed (the partner of whole_head)."""
        self._open_requests += 1

    def head_pending(self, now: float) -> None:
        """Bytes of a head arrived and it is not complete: the header timeout runs from its first byte."""
        if self._head_started is None:
            self._head_started = now

    @property
    def head_in_progress(self) -> bool:
        return self._used > 0

    # --- the request and its body ----------------------------------------------------------------------

    def request(self, body: int | None, now: float) -> None:
        """A head was parsed. `body`: its Content-Length, -1 for a body of unknown length, None for none."""
        self._open_requests += 1
        self._body_left = body if body else None
        self._body_seen = now

    def body(self, available: int, now: float) -> int:
        """How many of `available` bytes belong to the current body; the body ends when it has them all."""
        self._body_seen = now
        left = self._body_left
        assert left is not None
        if left < 0:
            return available
        take = min(left, available)
        self._body_left = left - take or None
        return take

    def body_done(self) -> None:
        """A body of unknown length ended (the parser saw its last chunk)."""
        self._body_left = None

    def response_done(self, now: float) -> None:
        """A response was written. The idle deadline that may follow is worked out by `settle()` when the
        connection's timer next fires (never later than `period` from now), not here on every request."""
        self._open_requests = max(0, self._open_requests - 1)
        self._served = True
        self._idle_since = now

    @property
    def period(self) -> float:
        """The longest a connection's timer may sleep when no deadline is due: the shortest timeout, so
        that any deadline that starts meanwhile (a response ends: idle) is caught in time."""
        lim = self.limits
        return min(lim.header_timeout, lim.idle_timeout, lim.body_timeout)

    # --- time ------------------------------------------------------------------------------------------

    def settle(self, now: float) -> None:
        """After the bytes of one read were handled: the deadline that applies now."""
        lim = self.limits
        if self._head_started is not None:
            self.deadline = self._head_started + lim.header_timeout
            self.reason = HEADER_TIMEOUT
        elif self._body_left is not None:
            self.deadline = self._body_seen + lim.body_timeout
            self.reason = BODY_TIMEOUT
        elif self._open_requests > 0:
            self.deadline = None  # the app is answering: upstream_timeout bounds that, not us
        elif not self._served:
            self.deadline = self._idle_since + lim.header_timeout
            self.reason = HEADER_TIMEOUT
        else:
            self.deadline = self._idle_since + lim.idle_timeout
            self.reason = IDLE_TIMEOUT

    def expired(self, now: float, reading_paused: bool, busy: bool = False) -> str | None:
        """The reason to close the connection now, or None. `reading_paused`: we stopped reading the
        client (flow control), so a silent body is our doing, not the client's. `busy`: a request is
        being answered, so the connection is not idle whatever the bookkeeping says."""
        if self.deadline is None or now < self.deadline:
            return None
        if self.reason == BODY_TIMEOUT and reading_paused:
            self._body_seen = now
            self.deadline = now + self.limits.body_timeout
            return None
        if self.reason == IDLE_TIMEOUT and busy:
            self.deadline = now + self.limits.idle_timeout
            return None
        return self.reason
