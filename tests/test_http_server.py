"""The lean engine end to end, in process: raw bytes from a client, a real app (the echo app, or a scripted
raw one for answers no well-behaved app gives), and what crosses each connection."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.app import build_state
from sidecar.clock import FakeClock
from sidecar.config import load
from sidecar.connlimits import ConnLimits
from sidecar.devtools.issuer import DevIssuer
from sidecar.guard import counting
from sidecar.http.server import LeanServer, _field_value
from sidecar.state import Sidecar
from sidecar.websocket import POLICY_VIOLATION
from tests.conftest import AUDIENCE, Upstream


@dataclass
class Lean:
    server: LeanServer
    state: Sidecar
    clock: FakeClock
    token: str

    @property
    def port(self) -> int:
        return self.server.port

    def metric(self, name: str, **labels: str) -> float:
        return self.state.metrics.registry.get_sample_value(name, labels or None) or 0.0


Start = Callable[..., Awaitable[Lean]]


@pytest.fixture
async def start(issuer: DevIssuer) -> AsyncIterator[Start]:
    servers: list[LeanServer] = []

    async def make(upstream_url: str, **over: Any) -> Lean:
        raw: dict[str, Any] = {
            "upstream": upstream_url,
            "providers": [{"issuer": issuer.issuer, "audiences": [AUDIENCE], "jwks_url": f"{issuer.issuer}/jwks.json"}],
            "public_paths": ["/public"],
            "claim_headers": {"X-Auth-Subject": "sub"},
        }
        for k, v in over.items():
            raw[k] = {**raw.get(k, {}), **v} if isinstance(v, dict) else copy.deepcopy(v)
        clock = FakeClock(time.time())
        state = build_state(load(raw), clock)
        lim = ConnLimits.from_config(state.cfg.limits)
        server = await LeanServer.start(state, "127.0.0.1", 0, lim, counting(state.metrics))
        servers.append(server)
        for _ in range(200):
            if state.ready():
                break
            await asyncio.sleep(0.02)
        return Lean(server, state, clock, issuer.mint(sub="lean", now=clock.now()))

    yield make
    for s in servers:
        await s.close()


async def exchange(port: int, *parts: bytes, timeout: float = 5.0, pause: float = 0.0) -> bytes:
    """Send `parts` (with `pause` between them) and read until the sidecar closes or goes quiet."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for i, part in enumerate(parts):
            if i and pause:
                await asyncio.sleep(pause)
            writer.write(part)
        out = b""
        with contextlib.suppress(TimeoutError, ConnectionError):
            while True:
                chunk = await asyncio.wait_for(reader.read(65536), timeout)
                if not chunk:
                    break
                out += chunk
        return out
    finally:
        writer.close()


def statuses(answer: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.[01] (\d{3}) ", answer)]


def body_of(answer: bytes) -> bytes:
    return answer.partition(b"\r\n\r\n")[2]


def get(path: str, token: str | None = None, *extra: str, version: str = "1.1") -> bytes:
    lines = [f"GET {path} HTTP/{version}", "Host: app"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    lines.extend(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass
class RawApp:
    """An app that answers each request with the next scripted bytes (None: close without answering)."""

    script: Callable[[int, int], bytes | None]  # (connection number, request number on it) -> answer
    connections: int = 0
    received: list[bytes] = field(default_factory=list)
    port: int = 0
    server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn, n = self.connections, 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length) if length else b""
                self.received.append(head + body)
                n += 1
                answer = self.script(conn, n)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def raw_app() -> AsyncIterator[Callable[[Callable[[int, int], bytes | None]], Awaitable[RawApp]]]:
    apps: list[RawApp] = []

    async def make(script: Callable[[int, int], bytes | None]) -> RawApp:
        app = RawApp(script)
        app.server = await asyncio.start_server(app._serve, "127.0.0.1", 0)
        app.port = app.server.sockets[0].getsockname()[1]
        apps.append(app)
        return app

    yield make
    for app in apps:
        assert app.server is not None
        app.server.close()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


# --- pipelining and desync -------------------------------------------------------------------------


async def test_pipelined_requests_are_answered_in_order_and_each_reaches_the_app_once(
    start: Start, upstream: Upstream
) -> None:
    sc = await start(upstream.url)
    upstream.clear()
    answer = await exchange(sc.port, get("/public/1") + get("/public/2") + get("/public/3", None, "Connection: close"))
    assert statuses(answer) == [200, 200, 200]
    assert [json.loads(part.split(b"\r\n\r\n", 1)[1])["path"] for part in answer.split(b"HTTP/1.1 ")[1:]] == [
        "/public/1",
        "/public/2",
        "/public/3",
    ]
    assert [r["path"] for r in upstream.record] == ["/public/1", "/public/2", "/public/3"]


async def test_field_names_reach_the_app_in_the_case_each_request_sent_them(start: Start, raw_app: Any) -> None:
    app = await raw_app(lambda conn, n: OK)
    sc = await start(app.url)
    # the engine remembers a name's folding per spelling: a spelling seen before must not change the next
    answer = await exchange(
        sc.port,
        get("/public/1", None, "X-Trace-ID: a", "x-trace-id: b")
        + get("/public/2", None, "X-TRACE-id: c")
        + get("/public/3", None, "x-trace-id: d", "Connection: close"),
    )
    assert statuses(answer) == [200, 200, 200]
    heads = [r.split(b"\r\n") for r in app.received]
    assert [[f for f in h if f.lower().startswith(b"x-trace-id")] for h in heads] == [
        [b"X-Trace-ID: a", b"x-trace-id: b"],
        [b"X-TRACE-id: c"],
        [b"x-trace-id: d"],
    ]


async def test_a_request_smuggled_after_a_chunked_body_in_the_same_read_never_reaches_the_app(
    start: Start, upstream: Upstream
) -> None:
    sc = await start(upstream.url)
    upstream.clear()
    smuggled = get("/public/smuggled")
    head = b"POST /public/a HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n"
    answer = await exchange(sc.port, head + b"3\r\nabc\r\n0\r\n\r\n" + smuggled)
    assert statuses(answer) == [200]
    assert [r["path"] for r in upstream.record] == ["/public/a"]
    assert upstream.record[0]["body"] == b"abc"


@pytest.mark.parametrize(
    "head",
    [
        b"POST /public/a HTTP/1.1\r\nHost: app\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST /public/a HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"POST /public/a HTTP/1.0\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST /public/a HTTP/1.1\r\nHost: app\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
        b"GET /public/a HTTP/1.1\r\nHost: app\r\nHost: other\r\n\r\n",
        b"GET /public/a HTTP/1.1\r\nHost: app\r\nX: a\r\n b\r\n\r\n",
        b"GET /public/a HTTP/1.1\nHost: app\n\n",
        b"GET /public/a\r\n\r\n",
    ],
)
async def test_ambiguous_framing_is_refused_before_anything_reaches_the_app(
    start: Start, upstream: Upstream, head: bytes
) -> None:
    sc = await start(upstream.url)
    upstream.clear()
    answer = await exchange(sc.port, head + b"3\r\nabc\r\n0\r\n\r\n")
    assert statuses(answer) == [400]
    assert b"Connection: close" in answer
    assert upstream.record == []
    assert sc.metric("sidecar_requests_rejected_total", reason="bad_request") == 1


# --- what the client is told ------------------------------------------------------------------------


async def test_expect_100_continue_is_answered_only_once_the_token_is_accepted(
    start: Start, upstream: Upstream
) -> None:
    sc = await start(upstream.url)
    upstream.clear()
    head = (
        f"POST /api/up HTTP/1.1\r\nHost: app\r\nAuthorization: Bearer {sc.token}\r\n"
        "Expect: 100-continue\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"
    ).encode()
    answer = await exchange(sc.port, head, b"hello", pause=0.2)
    assert statuses(answer) == [100, 200]
    assert upstream.record[0]["body"] == b"hello"
    assert dict(upstream.record[0]["headers"])["Expect"] == "100-continue"  # as the aiohttp engine forwards it
    no_token = b"POST /api/up HTTP/1.1\r\nHost: app\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    refused = await exchange(sc.port, no_token)
    assert statuses(refused) == [401]


async def test_an_http10_client_gets_a_chunked_answer_as_a_body_ended_by_the_close(
    start: Start, upstream: Upstream
) -> None:
    sc = await start(upstream.url)
    answer = await exchange(sc.port, get("/public/big?echo_bytes=100000", version="1.0"))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert statuses(answer) == [200]
    assert b"transfer-encoding" not in head.lower()
    assert body == b"x" * 100000


async def test_an_http10_keep_alive_client_is_told_the_connection_stays(start: Start, raw_app: Any) -> None:
    app = await raw_app(lambda c, n: OK)
    sc = await start(app.url)
    answer = await exchange(
        sc.port, get("/public/a", None, "Connection: keep-alive", version="1.0") + get("/public/b", version="1.0")
    )
    assert statuses(answer) == [200, 200]
    assert b"Connection: keep-alive" in answer


async def test_head_answers_carry_the_length_and_no_body_and_the_connection_stays_usable(
    start: Start, raw_app: Any
) -> None:
    app = await raw_app(lambda c, n: b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n" if n == 1 else OK)
    sc = await start(app.url)
    head_request = b"HEAD /public/a HTTP/1.1\r\nHost: app\r\n\r\n"
    answer = await exchange(sc.port, head_request, get("/public/b", None, "Connection: close"), pause=0.2)
    assert statuses(answer) == [200, 200]
    assert b"Content-Length: 1234\r\n\r\nHTTP/1.1 200" in answer
    assert answer.endswith(b"ok")
    assert app.connections == 1


async def test_hop_by_hop_headers_of_the_apps_answer_are_removed(start: Start, raw_app: Any) -> None:
    answer_bytes = (
        b"HTTP/1.1 200 OK\r\nConnection: X-Internal\r\nX-Internal: 1\r\nKeep-Alive: timeout=5\r\n"
        b"Trailer: X-T\r\nX-Kept: yes\r\nContent-Length: 2\r\n\r\nok"
    )
    app = await raw_app(lambda c, n: answer_bytes)
    sc = await start(app.url)
    answer = await exchange(sc.port, get("/public/a", None, "Connection: close"))
    head = answer.partition(b"\r\n\r\n")[0].lower()
    assert b"x-kept: yes" in head
    assert b"x-internal" not in head and b"keep-alive" not in head and b"trailer" not in head


async def test_each_answer_gets_its_own_status_line_and_length_when_the_lines_are_remembered(
    start: Start, raw_app: Any
) -> None:
    answers = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nnope!",
        b"HTTP/1.1 200 Fine\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ]
    app = await raw_app(lambda conn, n: answers[n - 1])
    sc = await start(app.url)
    last = get("/public/3", None, "Connection: close")
    answer = await exchange(sc.port, *(get(f"/public/{i}") for i in range(3)), last)
    parts = [b"HTTP/1.1 " + p for p in answer.split(b"HTTP/1.1 ")[1:]]
    assert [p.split(b"\r\n")[0] for p in parts] == [
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 404 Not Found",
        b"HTTP/1.1 200 Fine",
        b"HTTP/1.1 200 OK",
    ]
    assert [body_of(p) for p in parts] == [b"ok", b"nope!", b"ok", b"ok"]


async def test_interim_answers_from_the_app_are_not_relayed(start: Start, raw_app: Any) -> None:
    app = await raw_app(lambda c, n: b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" + OK)
    sc = await start(app.url)
    answer = await exchange(sc.port, get("/public/a", None, "Connection: close"))
    assert statuses(answer) == [200] and answer.endswith(b"ok")


async def test_a_body_ended_by_the_apps_close_reaches_an_http11_client_chunked_and_whole(
    start: Start, raw_app: Any
) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nhello, ")
        await asyncio.sleep(0.05)
        writer.write(b"world")
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    sc = await start(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    answer = await exchange(sc.port, get("/public/a"))
    server.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head and b"Connection: close" in head
    assert body == b"7\r\nhello, \r\n5\r\nworld\r\n0\r\n\r\n"


# --- the app's connections ----------------------------------------------------------------------------


async def test_connections_to_the_app_are_kept_alive_and_reused(start: Start, raw_app: Any) -> None:
    app = await raw_app(lambda c, n: OK)
    sc = await start(app.url)
    for i in range(5):
        answer = await exchange(sc.port, get(f"/public/{i}", None, "Connection: close"))
        assert statuses(answer) == [200]
    assert app.connections == 1 and len(app.received) == 5


async def test_a_keep_alive_connection_closes_at_the_idle_timeout_even_when_the_others_are_longer(
    start: Start, raw_app: Any
) -> None:
    # After a response the connection's timer is moved only when it would fire after the idle deadline:
    # here it was set for the (longer) header timeout when the connection opened, so it must be moved.
    app = await raw_app(lambda c, n: OK)
    sc = await start(app.url, limits={"idle_timeout": 0.3, "header_timeout": 30, "body_timeout": 30})
    started = time.monotonic()
    answer = await exchange(sc.port, get("/public/a"), timeout=10)
    assert statuses(answer) == [200]
    assert time.monotonic() - started < 5  # closed by the sidecar after ~0.3 s idle, not by our 10 s read
    assert sc.metric("sidecar_connections_closed_total", reason="idle_timeout") == 1


async def test_trailers_of_one_answer_never_reach_the_next_client_on_the_pooled_connection(
    start: Start, raw_app: Any
) -> None:
    # llhttp reports a chunked body's trailers as header fields after the head: they are not relayed, and
    # must not wait to be written into the head of the next answer on that connection (another client's).
    trailed = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nSet-Cookie: victim=1\r\n\r\n"
    app = await raw_app(lambda c, n: trailed if n == 1 else OK)
    sc = await start(app.url)
    first = await exchange(sc.port, get("/public/a", None, "Connection: close"))
    second = await exchange(sc.port, get("/public/b", None, "Connection: close"))
    assert statuses(first) == statuses(second) == [200]
    assert app.connections == 1  # the same connection to the app served both
    assert b"victim" not in first and b"victim" not in second


async def test_a_pooled_connection_the_app_dropped_is_retried_once_for_a_get_but_not_for_a_post(
    start: Start, raw_app: Any
) -> None:
    # the app's keep-alive ran out just as the sidecar reused the connection: it closes without answering
    app = await raw_app(lambda c, n: OK if n == 1 else None)
    sc = await start(app.url)
    assert statuses(await exchange(sc.port, get("/public/a", None, "Connection: close"))) == [200]
    assert statuses(await exchange(sc.port, get("/public/b", None, "Connection: close"))) == [200]
    assert app.connections == 2
    post = b"POST /public/c HTTP/1.1\r\nHost: app\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
    assert statuses(await exchange(sc.port, post)) == [502]
    assert sc.metric("sidecar_upstream_errors_total", kind="upstream_unavailable") == 1


async def test_many_clients_at_once_each_get_their_own_answers_in_order(start: Start, raw_app: Any) -> None:
    # Writes of one loop round go out together at its end (http/outbox.py): under load, every connection must
    # still get its own answers, whole and in order, and the app each request once.
    def echo(c: int, n: int) -> bytes:
        path = app.received[-1].split(b" ")[1]
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(path), path)

    app = await raw_app(echo)
    sc = await start(app.url)

    async def client(i: int) -> list[bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", sc.port)
        bodies = []
        try:
            for j in range(5):
                writer.write(get(f"/public/{i}/{j}"))
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
                bodies.append(await asyncio.wait_for(reader.readexactly(length), 10))
        finally:
            writer.close()
        return bodies

    answers = await asyncio.gather(*(client(i) for i in range(40)))
    for i, bodies in enumerate(answers):
        assert bodies == [f"/public/{i}/{j}".encode() for j in range(5)]
    assert len(app.received) == 200


async def test_the_apps_answer_time_is_observed_once_a_request_from_the_first_write_a_retry_included(
    start: Start, raw_app: Any
) -> None:
    app = await raw_app(lambda c, n: OK if n == 1 else None)  # the second request is retried on a new connection
    sc = await start(app.url)
    for path in ("/public/a", "/public/b"):
        assert statuses(await exchange(sc.port, get(path, None, "Connection: close"))) == [200]
    assert app.connections == 2
    assert sc.metric("sidecar_upstream_duration_seconds_count") == 2
    assert 0 <= (sc.metric("sidecar_upstream_duration_seconds_sum") or 0) < 5


async def test_an_apps_answer_with_ambiguous_framing_is_a_502_and_its_connection_is_dropped(
    start: Start, raw_app: Any
) -> None:
    bad = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    app = await raw_app(lambda c, n: bad if c == 1 else OK)
    sc = await start(app.url)
    assert statuses(await exchange(sc.port, get("/public/a", None, "Connection: close"))) == [502]
    assert statuses(await exchange(sc.port, get("/public/b", None, "Connection: close"))) == [200]
    assert app.connections == 2


async def test_an_app_that_does_not_answer_in_time_gives_504(start: Start, raw_app: Any) -> None:
    async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await asyncio.sleep(3)
        writer.close()

    server = await asyncio.start_server(never, "127.0.0.1", 0)
    sc = await start(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", limits={"upstream_timeout": 0.3})
    answer = await exchange(sc.port, get("/public/a", None, "Connection: close"))
    server.close()
    assert statuses(answer) == [504]
    assert json.loads(body_of(answer))["reason"] == "upstream_timeout"
    assert sc.metric("sidecar_upstream_errors_total", kind="upstream_timeout") == 1


async def test_an_app_that_is_not_listening_gives_502(start: Start) -> None:
    sc = await start("http://127.0.0.1:9")
    answer = await exchange(sc.port, get("/public/a", None, "Connection: close"))
    assert statuses(answer) == [502]
    assert json.loads(body_of(answer))["reason"] == "upstream_unavailable"


async def test_an_app_that_breaks_off_mid_body_cuts_the_clients_connection(start: Start, raw_app: Any) -> None:
    app = await raw_app(lambda c, n: b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"y" * 10 if n == 1 else None)
    sc = await start(app.url)
    answer = await exchange(sc.port, get("/public/a"))  # keep-alive: only a cut ends this exchange early
    assert statuses(answer) == [200]
    assert body_of(answer) == b"y" * 10


async def test_a_slow_reader_pauses_reading_from_the_app(start: Start, upstream: Upstream) -> None:
    sc = await start(upstream.url)
    reader, writer = await asyncio.open_connection("127.0.0.1", sc.port)
    writer.write(get("/public/big?echo_bytes=40000000", None, "Connection: close"))
    await reader.readuntil(b"\r\n\r\n")
    for _ in range(100):
        await asyncio.sleep(0.02)
        ups = [c._upstream for c in sc.server.conns if c._upstream is not None]
        if ups and ups[0].transport is not None and not ups[0].transport.is_reading():
            break
    else:
        raise AssertionError("the sidecar kept reading from the app while the client did not read")
    total = 0
    while chunk := await reader.read(1 << 20):
        total += len(chunk)
    writer.close()
    assert total > 40000000  # the body and its chunk framing, all of it


async def test_a_chunked_body_over_the_limit_never_reaches_the_app_whole(start: Start, upstream: Upstream) -> None:
    sc = await start(upstream.url, limits={"max_body_bytes": 1000})
    upstream.clear()
    head = b"POST /public/big HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"%x\r\n%s\r\n" % (600, b"z" * 600)
    answer = await exchange(sc.port, head + chunk, chunk + chunk + b"0\r\n\r\n", pause=0.1)
    assert statuses(answer) == [413]
    assert all(r["path"] != "/public/big" for r in upstream.record)


async def test_draining_lets_a_request_in_flight_finish_and_refuses_new_connections(
    start: Start, upstream: Upstream
) -> None:
    sc = await start(upstream.url)
    pending = asyncio.ensure_future(exchange(sc.port, get("/public/slow?echo_sleep=0.4", None, "Connection: close")))
    await asyncio.sleep(0.15)
    await sc.server.close(drain_timeout=5)
    assert statuses(await pending) == [200]
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", sc.port)


# --- WebSockets --------------------------------------------------------------------------------------


async def test_a_websocket_is_piped_and_closed_with_1008_when_its_token_expires(
    issuer: DevIssuer, start: Start, upstream: Upstream
) -> None:
    sc = await start(upstream.url, leeway=0, expired_grace=0)
    token = issuer.mint(sub="ws", now=sc.clock.now(), ttl=60)
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(
            f"http://127.0.0.1:{sc.port}/ws", headers={"Authorization": f"Bearer {token}"}, protocols=("echo",)
        ) as ws,
    ):
        hello = await ws.receive_json()
        assert dict(hello["headers"])["X-Auth-Subject"] == "ws"
        await ws.send_str("ping")
        assert await ws.receive_str() == "ping"
        sc.clock.advance(61)
        msg = await asyncio.wait_for(ws.receive(), 5)  # the watchdog notices within a second
        assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == POLICY_VIOLATION
    for _ in range(300):
        if sc.metric("sidecar_websocket_sessions_total", end="token_expired") == 1:
            break
        await asyncio.sleep(0.01)
    assert sc.metric("sidecar_websocket_sessions_total", end="token_expired") == 1


async def test_a_reason_phrase_with_control_bytes_is_not_relayed(start: Start, raw_app: Any) -> None:
    # found by the response fuzz (tests/test_http_fuzz.py): llhttp lets a NUL through in the phrase
    app = await raw_app(lambda c, n: b"HTTP/1.1 200 \x00OK\r\nContent-Length: 2\r\n\r\nok")
    sc = await start(app.url)
    answer = await exchange(sc.port, get("/public/a", None, "Connection: close"))
    assert answer.startswith(b"HTTP/1.1 200 \r\n") and b"\x00" not in answer


async def test_an_app_that_answers_before_reading_the_body_never_gets_that_connection_again(
    start: Start,
) -> None:
    connections: list[int] = []

    async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if head.startswith(b"POST"):
                    writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")  # body left unread
                else:
                    writer.write(OK)
                await writer.drain()

    server = await asyncio.start_server(early, "127.0.0.1", 0)
    sc = await start(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    post = b"POST /public/up HTTP/1.1\r\nHost: app\r\nContent-Length: 200000\r\nConnection: close\r\n\r\n"
    answer = await exchange(sc.port, post, b"x" * 200000, pause=0.2)
    assert statuses(answer) == [413]
    assert statuses(await exchange(sc.port, get("/public/next", None, "Connection: close"))) == [200]
    server.close()
    assert len(connections) == 2  # the connection with a partial body was closed, not pooled


async def test_a_slow_app_pauses_reading_the_clients_body(start: Start) -> None:
    release = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await release.wait()
        await reader.readexactly(length)
        writer.write(OK)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(slow, "127.0.0.1", 0)
    sc = await start(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    size = 30_000_000
    reader, writer = await asyncio.open_connection("127.0.0.1", sc.port)
    writer.write(b"POST /public/up HTTP/1.1\r\nHost: app\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size)
    sending = asyncio.ensure_future(_send_all(writer, size))
    for _ in range(200):
        await asyncio.sleep(0.02)
        conns = [c for c in sc.server.conns if c.transport is not None]
        if conns and not conns[0].transport.is_reading():  # type: ignore[union-attr]
            break
    else:
        raise AssertionError("the sidecar kept reading the client's body while the app read nothing")
    release.set()
    await sending
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    server.close()
    assert statuses(answer) == [200]


async def _send_all(writer: asyncio.StreamWriter, size: int) -> None:
    chunk = b"y" * 65536
    sent = 0
    while sent < size:
        part = chunk[: size - sent]
        writer.write(part)
        await writer.drain()
        sent += len(part)


async def test_at_expiry_the_app_gets_a_masked_close_frame_1008_too(issuer: DevIssuer, start: Start) -> None:
    received = bytearray()
    got_close = asyncio.Event()

    async def ws_app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key")
        )
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                received.extend(data)
                if len(received) >= 2 and received[0] == 0x88:
                    got_close.set()
        writer.close()

    server = await asyncio.start_server(ws_app, "127.0.0.1", 0)
    sc = await start(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", leeway=0, expired_grace=0)
    token = issuer.mint(now=sc.clock.now(), ttl=60)
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"http://127.0.0.1:{sc.port}/ws", headers={"Authorization": f"Bearer {token}"}) as ws,
    ):
        sc.clock.advance(61)
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == POLICY_VIOLATION
    await asyncio.wait_for(got_close.wait(), 5)
    server.close()
    assert received[1] & 0x80  # masked, as a client's frame must be
    mask, payload = received[2:6], received[6 : 6 + (received[1] & 0x7F)]
    plain = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert plain[:2] == (1008).to_bytes(2, "big") and plain[2:] == b"token expired"


def test_the_sidecar_runs_on_a_uvloop_loop_made_by_a_factory_not_by_uvloop_install() -> None:
    from sidecar.app import run

    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert run(loop_module()).startswith("uvloop")
    assert "uvloop.install(" not in (Path(__file__).parents[1] / "sidecar" / "app.py").read_text().replace(
        "`uvloop.install()` is deprecated", ""
    )


@given(st.binary(max_size=40))
def test_a_field_value_is_its_bytes_without_trailing_blanks_with_bytes_that_are_not_utf8_kept_as_surrogates(
    raw: bytes,
) -> None:
    assert _field_value(raw) == raw.rstrip(b" \t").decode("utf-8", "surrogateescape")
    assert _field_value(raw + b" \t ") == _field_value(raw)
