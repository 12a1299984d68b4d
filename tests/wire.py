"""Bytes on the wire, for the tests that compare the two proxy engines: send raw bytes, read what comes back
until the server closes or goes quiet, and split it into HTTP/1.x responses with a strict reader of our own
(so a malformed answer is seen as malformed, not repaired by a lenient client library).
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sidecar.devtools.issuer import DevIssuer
from tests.conftest import Upstream, sidecar_args
from tests.support import Reply, SidecarProcess

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9]{2})(?: [\t -~\x80-\xff]*)?")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(rb"[\t -~\x80-\xff]*")


CUT_CHUNKED = "chunked body cut short by the close"
CUT_LENGTH = "body shorter than its Content-Length at the close"


Response = Reply  # one answer read off the wire: status, headers, body


@dataclass
class Answer:
    """Everything one connection got back: the complete responses in order, whether the server closed,
    and what could not be read as a response (`malformed` says why; `rest` is an unfinished response)."""

    responses: list[Response] = field(default_factory=list)
    closed: bool = False
    rest: bytes = b""
    malformed: str | None = None
    raw: bytes = b""

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.responses]

    def final_statuses(self) -> list[int]:
        """The statuses without interim (1xx) answers."""
        return [s for s in self.statuses if s >= 200]

    def well_formed(self) -> bool:
        return self.malformed is None

    def show(self, limit: int = 600) -> str:
        text = self.raw[:limit].decode("latin-1")
        return f"statuses={self.statuses} closed={self.closed} malformed={self.malformed} raw={text!r}"


def exchange(
    port: int,
    data: bytes,
    first_byte: float = 4.0,
    quiet: float = 0.3,
    deadline: float = 6.0,
    methods: list[str] | None = None,
) -> Answer:
    """Send `data` on one connection and read the answer. Reading stops when the server closes; or, once
    everything read so far is complete responses, after `quiet` seconds without a byte; or at `deadline`.
    `methods` (the request methods in order, when a test knows them) lets a HEAD's answer be read bodiless."""
    start = time.monotonic()
    got = bytearray()
    closed = False
    with socket.create_connection(("127.0.0.1", port), timeout=first_byte) as s:
        with contextlib.suppress(OSError):  # the server may refuse and close while we still send: read what it said
            s.sendall(data)
        last = time.monotonic()
        while True:
            now = time.monotonic()
            elapsed = now - start
            answer = split(bytes(got), closed=False, methods=methods)
            settled = bool(got) and not answer.rest and answer.malformed is None
            if settled:
                wait = quiet - (now - last)
            elif not got:
                wait = first_byte - elapsed
            else:
                wait = deadline - elapsed
            wait = min(wait, deadline - elapsed)
            if wait <= 0:
                break
            if not select.select([s], [], [], wait)[0]:
                continue
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                closed = True
                break
            if not chunk:
                closed = True
                break
            got += chunk
            last = time.monotonic()
    return split(bytes(got), closed=closed, methods=methods)


def split(data: bytes, closed: bool, methods: list[str] | None = None) -> Answer:
    """Read `data` as a sequence of HTTP/1.x responses. A body runs to the close only when the response has
    neither Content-Length nor chunked framing (and then it must have closed)."""
    out = Answer(closed=closed, raw=data)
    pos = 0
    methods = list(methods or [])
    while pos < len(data):
        start = pos  # an unfinished response goes to `rest` whole, from its status line
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            out.rest = data[pos:]
            if closed or not _could_be_head(out.rest):
                out.malformed = f"unfinished or bad head at byte {pos}"
            return out
        lines = data[pos:end].split(b"\r\n")
        m = _STATUS_LINE.fullmatch(lines[0])
        if m is None:
            out.malformed = f"bad status line {lines[0][:80]!r}"
            out.rest = data[pos:]
            return out
        status = int(m.group(1))
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not _TOKEN.fullmatch(name) or not _FIELD_VALUE.fullmatch(value):
                out.malformed = f"bad header line {line[:80]!r}"
                out.rest = data[pos:]
                return out
            headers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
        pos = end + 4
        lengths = {v for k, v in headers if k.lower() == "content-length"}
        codings = [v.lower() for k, v in headers if k.lower() == "transfer-encoding"]
        method = methods.pop(0) if methods and status >= 200 else None
        if status < 200 or status in (204, 304) or method == "HEAD":
            out.responses.append(Response(status, headers, b""))
            continue
        if codings:
            if lengths:
                out.malformed = "response with both Content-Length and Transfer-Encoding"
                return out
            if codings != ["chunked"]:
                out.malformed = f"response with Transfer-Encoding {codings}"
                return out
            body, pos2, problem = _dechunk(data, pos)
            if problem == "short":
                out.rest = data[start:]
                if closed:
                    out.malformed = CUT_CHUNKED
                return out
            if problem:
                out.malformed = problem
                return out
            out.responses.append(Response(status, headers, body))
            pos = pos2
            continue
        if lengths:
            if len(lengths) != 1 or not next(iter(lengths)).isdigit():
                out.malformed = f"response with Content-Length {sorted(lengths)}"
                return out
            n = int(next(iter(lengths)))
            if len(data) - pos < n:
                out.rest = data[start:]
                if closed:
                    out.malformed = CUT_LENGTH
                return out
            out.responses.append(Response(status, headers, data[pos : pos + n]))
            pos += n
            continue
        if not closed:
            out.rest = data[start:]  # read to the close, which has not come
            return out
        out.responses.append(Response(status, headers, data[pos:]))
        pos = len(data)
    return out


def _could_be_head(partial: bytes) -> bool:
    return b"HTTP/1."[: len(partial)] == partial[:7]


def _dechunk(data: bytes, pos: int) -> tuple[bytes, int, str | None]:
    body = bytearray()
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return b"", pos, "short"
        size_text = data[pos:eol].split(b";", 1)[0]
        if not re.fullmatch(rb"[0-9A-Fa-f]{1,16}", size_text):
            return b"", pos, f"bad chunk size {data[pos:eol][:40]!r}"
        size = int(size_text, 16)
        pos = eol + 2
        if size == 0:
            end = data.find(b"\r\n\r\n", pos - 2)
            if end < 0:
                return b"", pos, "short"
            return bytes(body), end + 4, None
        if len(data) < pos + size + 2:
            return b"", pos, "short"
        if data[pos + size : pos + size + 2] != b"\r\n":
            return b"", pos, "chunk data not followed by CRLF"
        body += data[pos : pos + size]
        pos += size + 2


# --- what the app received, made comparable across engines ------------------------------------------------

# Framing and connection management between the sidecar and the app are each engine's own business: the
# aiohttp client streams a request body chunked, a hand-written forwarder may keep the client's length; the
# body itself is compared instead. aiohttp's client also adds `Accept: */*` when the client sent no Accept.
_ENGINE_OWN = {"content-length", "transfer-encoding", "connection", "keep-alive"}
_ENGINE_OWN_PAIRS = {("accept", "*/*")}


def received(record: dict[str, Any]) -> tuple[str, str, tuple[tuple[str, str], ...], bytes]:
    """(method, target, headers, body) of one request the app got, minus what legitimately differs."""
    pairs = [(n.lower(), v) for n, v in record["headers"] if n.lower() not in _ENGINE_OWN]
    pairs = [(n, v) for n, v in pairs if (n, v.lower()) not in _ENGINE_OWN_PAIRS]
    pairs.sort(key=lambda p: p[0])  # stable: same-named fields keep their order
    return record["method"], record["path"], tuple(pairs), record["body"]


# --- one `sidecar run` per engine, same flags, each with its own recording app ----------------------------

ENGINES = ("aiohttp", "lean")


@dataclass
class Engine:
    name: str
    proc: SidecarProcess
    upstream: Upstream


@dataclass
class Outcome:
    answer: Answer
    reached: list[tuple[str, str, tuple[tuple[str, str], ...], bytes]]

    @property
    def paths(self) -> list[str]:
        return [r[1] for r in self.reached]

    def show(self) -> str:
        return f"{self.answer.show()} app got {self.paths}"


def engine_args(issuer: DevIssuer, upstream: Any, engine: str, timeout: float, *extra: str) -> list[str]:
    """The usual test flags, one worker, the engine named by flag (it wins over SIDECAR_PROXY_ENGINE), and
    short header/body/idle timeouts so a head or body that never ends is cut soon."""
    return sidecar_args(
        issuer,
        upstream,
        "--workers",
        "1",
        "--proxy-engine",
        engine,
        "--log-level",
        "warning",
        "--limits-header-timeout",
        str(timeout),
        "--limits-body-timeout",
        str(timeout),
        "--limits-idle-timeout",
        str(timeout),
        *extra,
    )


@contextlib.contextmanager
def engine_pair(issuer: DevIssuer, timeout: float) -> Iterator[dict[str, Engine]]:
    """Both engines with the same flags, each in front of its own recording app, so a case can run on the
    two at once without mixing what their apps saw."""
    started: dict[str, Engine] = {}
    try:
        for name in ENGINES:
            up = Upstream()
            started[name] = Engine(name, SidecarProcess(engine_args(issuer, up, name, timeout)), up)
            started[name].proc.start()
        yield started
    finally:
        for e in started.values():
            if e.proc.proc is not None:
                e.proc.stop()
            e.upstream.server.stop()


def run(engine: Engine, data: bytes, quiet: float = 0.3) -> Outcome:
    engine.upstream.clear()
    methods = ["HEAD"] if data.startswith(b"HEAD ") else None
    answer = exchange(engine.proc.port, data, quiet=quiet, methods=methods)
    return Outcome(answer, [received(r) for r in list(engine.upstream.record)])


def both(engines: dict[str, Engine], data: bytes, quiet: float = 0.3) -> dict[str, Outcome]:
    with ThreadPoolExecutor(len(engines)) as pool:
        futures = {name: pool.submit(run, e, data, quiet) for name, e in engines.items()}
        return {name: f.result() for name, f in futures.items()}


# --- how many requests the bytes hold, read strictly (RFC 9112), as an upper bound for what may be forwarded --

_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) (/[!-~]*) HTTP/1\.([01])")
_FIELD = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*((?:[!-~\x80-\xff](?:[ \t]*[!-~\x80-\xff])*)?)[ \t]*")
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,15})(?:[ \t]*;[ \t]*[!-~][ \t!-~]*)?")


def legit_requests(data: bytes) -> int:
    """How many complete requests `data` holds when read the strict way: origin-form targets, CRLF only, no
    obs-fold, one Host in HTTP/1.1, a single decimal Content-Length or a lone `chunked` (never both, never in
    HTTP/1.0), well-formed chunks; reading stops at the first thing that is not, and after a request that
    ends the connection. No proxy may forward more requests than this from the same bytes."""
    count, pos = 0, 0
    while True:
        # CR and LF before a request line are skipped (RFC 9112 2.2 says empty lines; llhttp skips either
        # byte alone too): no byte of a request is read differently for it
        while data[pos : pos + 1] in (b"\r", b"\n"):
            pos += 1
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            return count
        lines = data[pos:end].split(b"\r\n")
        if any(b"\r" in line or b"\n" in line for line in lines):
            return count
        first = _REQUEST_LINE.fullmatch(lines[0])
        if first is None:
            return count
        fields: list[tuple[bytes, bytes]] = []
        for line in lines[1:]:
            m = _FIELD.fullmatch(line)
            if m is None:
                return count
            fields.append((m.group(1).lower(), m.group(2)))
        version = first.group(3)
        lengths = [v for n, v in fields if n == b"content-length"]
        codings = [v for n, v in fields if n == b"transfer-encoding"]
        hosts = sum(1 for n, _ in fields if n == b"host")
        if hosts > 1 or (version == b"1" and hosts != 1):
            return count
        pos = end + 4
        if codings:
            if lengths or version == b"0" or len(codings) != 1 or codings[0].lower() != b"chunked":
                return count
            after = _chunked_end(data, pos)
            if after is None:
                return count
            pos = after
        elif lengths:
            if len(lengths) != 1 or not lengths[0].isdigit() or len(data) - pos < int(lengths[0]):
                return count
            pos += int(lengths[0])
        count += 1
        tokens = {t.strip().lower() for n, v in fields if n == b"connection" for t in v.split(b",")}
        if b"close" in tokens or (version == b"0" and b"keep-alive" not in tokens):
            return count


def _chunked_end(data: bytes, pos: int) -> int | None:
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return None
        m = _CHUNK_LINE.fullmatch(data[pos:eol])
        if m is None:
            return None
        size = int(m.group(1), 16)
        pos = eol + 2
        if size == 0:
            break
        if data[pos + size : pos + size + 2] != b"\r\n":
            return None
        pos += size + 2
    while True:  # trailer fields, then the empty line
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return None
        if eol == pos:
            return pos + 2
        if _FIELD.fullmatch(data[pos:eol]) is None:
            return None
        pos = eol + 2
