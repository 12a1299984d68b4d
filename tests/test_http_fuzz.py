"""Fuzzing the lean engine's parser boundary, both ways, with Hypothesis (bounded: 120 examples each, ~10 s).

(a) Requests: valid heads and bodies, then mutated (bytes flipped, CR/LF/SP/HT/NUL/colon inserted, header
    lines duplicated, Content-Length and Transfer-Encoding added in any combination, chunked bodies of random
    sizes), sent over a raw socket to a lean sidecar (and an aiohttp one beside it, whose answer the failure
    message shows). The lean answer is well-formed HTTP (or a close), never a 5xx; each request the app
    parsed was answered once to this client (an extra one would be a desync between what the sidecar framed
    and what the app read); and the app never gets more requests than the bytes hold read strictly
    (tests/wire.py `legit_requests`).
(b) Responses: a raw-socket app of our own answers with mutated heads and bodies (CL with TE, duplicate CL,
    bad chunks, early close). The client gets a well-formed answer (the app's, or 502/504), and the sidecar
    stays healthy: the next request on a fresh connection gets its own answer, not a leftover of the last.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.devtools.issuer import DevIssuer
from tests.conftest import lean_available
from tests.support import SidecarProcess
from tests.wire import (
    CUT_CHUNKED,
    CUT_LENGTH,
    Answer,
    Engine,
    Outcome,
    both,
    engine_args,
    engine_pair,
    exchange,
    legit_requests,
)

# Before sidecar/http/ exists `--proxy-engine lean` still runs aiohttp: nothing to compare or to fuzz.
pytestmark = pytest.mark.skipif(not lean_available(), reason="the lean proxy engine (sidecar/http/) is not there")
TIMEOUT = 0.8  # header, body and idle timeouts of the sidecars under test
FUZZ = settings(
    max_examples=120,  # about 10 s each against two local processes; CI's whole budget for both is 60 s
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    print_blob=True,
    database=None,  # a failure prints its reproduction blob; nothing is written to the working tree
)

INSERTS = [b"\r", b"\n", b"\r\n", b" ", b"\t", b"\x00", b":", b"\r\n ", b"\r\n\t", b",", b";", b"\x0b", b"\x7f"]
CL_VALUES = [b"0", b"5", b"6", b"10", b"+5", b"-1", b"0x5", b"05", b"5, 5", b"5,6", b"", b" 5", b"99999999999999999999"]
TE_VALUES = [b"chunked", b"Chunked", b"chunked, chunked", b"gzip", b"gzip, chunked", b"chunked, gzip", b"xchunked"]
TE_VALUES += [b"chunked ", b"\tchunked", b"identity", b"", b'"chunked"']


# --- building requests and responses ----------------------------------------------------------------------


def chunked(body: bytes, sizes: list[int]) -> bytes:
    out, pos = b"", 0
    for n in sizes:
        if pos >= len(body):
            break
        piece = body[pos : pos + max(1, n)]
        out += b"%x\r\n" % len(piece) + piece + b"\r\n"
        pos += len(piece)
    if pos < len(body):
        out += b"%x\r\n" % (len(body) - pos) + body[pos:] + b"\r\n"
    return out + b"0\r\n\r\n"


@st.composite
def valid_requests(draw: st.DrawFn) -> bytes:
    """One to three requests on a connection, the last asking to close."""
    count = draw(st.integers(1, 3))
    out = b""
    for i in range(count):
        method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH"]))
        target = b"/public/fz-%d" % i + draw(st.sampled_from([b"", b"?a=1", b"/x/y", b"?q=%20"]))
        headers = [b"Host: x"]
        headers += draw(
            st.lists(st.sampled_from([b"X-A: 1", b"Accept: */*", b"User-Agent: fz", b"X-B: b c"]), max_size=3)
        )
        body = b""
        if method != b"GET" or draw(st.booleans()):
            body = draw(st.binary(max_size=40))
            if draw(st.booleans()):
                sizes = draw(st.lists(st.integers(1, 17), min_size=1, max_size=4))
                headers.append(b"Transfer-Encoding: chunked")
                body = chunked(body, sizes)
            else:
                headers.append(b"Content-Length: %d" % len(body))
        if i == count - 1:
            headers.append(b"Connection: close")
        out += method + b" " + target + b" HTTP/1.1\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body
    return out


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes], framing: bytes) -> bytes:
    """`base` with up to four mutations; `framing` is the head a CL/TE header may be added to (b"HTTP/1.1\\r\\n"
    for a request's first line, the status line's end for a response)."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "duplicate", "cl", "te", "truncate"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[at:at] = draw(st.sampled_from(INSERTS))
        elif op == "delete" and data:
            del data[at : at + draw(st.integers(1, 4))]
        elif op == "duplicate":
            lines = bytes(data).split(b"\r\n")
            head_end = lines.index(b"") if b"" in lines else len(lines)
            if head_end > 1:
                k = draw(st.integers(1, head_end - 1))
                lines.insert(k, lines[k])
                data = bytearray(b"\r\n".join(lines))
        elif op in ("cl", "te"):
            value = draw(st.sampled_from(CL_VALUES if op == "cl" else TE_VALUES))
            name = b"Content-Length" if op == "cl" else b"Transfer-Encoding"
            pos = bytes(data).find(framing)
            if pos >= 0:
                pos += len(framing)
                data[pos:pos] = name + b": " + value + b"\r\n"
        elif op == "truncate" and data:
            del data[at:]
    return bytes(data)


# --- (a) requests --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engines(issuer: DevIssuer) -> Iterator[dict[str, Engine]]:
    with engine_pair(issuer, TIMEOUT) as pair:
        yield pair


def check_request_outcome(data: bytes, lean: Outcome, old: Outcome) -> None:
    detail = f"\n  sent:    {data!r}\n  aiohttp: {old.show()}\n  lean:    {lean.show()}"
    answer = lean.answer
    assert answer.well_formed(), "lean's answer is not well-formed HTTP" + detail
    assert all(s < 500 for s in answer.statuses), "lean answered 5xx" + detail
    finals = answer.final_statuses()
    # Every request the app parsed came back to this client as one 200 (the echo app's): one more would mean
    # the app read a request boundary the sidecar did not. Counted once the sidecar has closed: it answers in
    # order and closes after its last answer, while a connection still open may have one on its way.
    if answer.closed:
        assert len(lean.reached) <= finals.count(200), "the app got a request lean never answered" + detail
    # and never more than the bytes hold when read strictly (aiohttp is no oracle for this: it drops a
    # request pipelined after a chunked body, for one)
    legit = legit_requests(data)
    assert len(lean.reached) <= legit, f"lean forwarded more than the {legit} request(s) the bytes hold" + detail


@FUZZ
@given(data=mutated(valid_requests(), b"HTTP/1.1\r\n"))
def test_mutated_requests_get_a_well_formed_answer_and_never_smuggle(data: bytes, engines: dict[str, Engine]) -> None:
    got = both(engines, data, quiet=0.15)
    check_request_outcome(data, got["lean"], got["aiohttp"])


# --- (b) responses -------------------------------------------------------------------------------------------


@dataclass
class Script:
    """What the raw app answers to `/public/fz/mutated`, and whether it closes right after."""

    response: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    close: bool = False
    seen: list[bytes] = field(default_factory=list)


class RawApp:
    """An app speaking HTTP/1.1 by hand on 127.0.0.1:0, from its own thread: `/public/fz/mutated` gets the scripted
    bytes; any other target gets a correct answer naming the target, so a stale leftover cannot pass for it.
    After a scripted answer the connection stays open (serving more requests) for LINGER seconds at most."""

    LINGER = 0.4

    def __init__(self) -> None:
        self.script = Script()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.port = 0

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
            self.server = server
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)
        self.url = f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        deadline: float | None = None
        try:
            while True:
                wait = None if deadline is None else max(0.0, deadline - self.loop.time())
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), wait)
                except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return
                length = re.search(rb"(?im)^content-length:\s*(\d+)\r$", head)
                if length:
                    await reader.readexactly(int(length.group(1)))
                target = head.split(b" ", 2)[1]
                self.script.seen.append(target)
                if target == b"/public/fz/mutated":
                    writer.write(self.script.response)
                    await writer.drain()
                    if self.script.close:
                        return
                    deadline = self.loop.time() + self.LINGER
                else:
                    body = b"answer to " + target
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                    await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    def stop(self) -> None:
        async def stop() -> None:
            self.server.close()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


ENGINE_UNDER_FUZZ = "lean"
INTERIM = {100, 102, 103}  # 1xx a client must be able to read before the final answer (101 is not one)


@pytest.fixture(scope="module")
def raw_app() -> Iterator[RawApp]:
    app = RawApp()
    yield app
    app.stop()


@pytest.fixture(scope="module")
def fronted(issuer: DevIssuer, raw_app: RawApp) -> Iterator[SidecarProcess]:
    args = engine_args(issuer, raw_app, ENGINE_UNDER_FUZZ, TIMEOUT, "--limits-upstream-timeout", "1")
    proc = SidecarProcess(args).start()
    yield proc
    proc.stop()


@st.composite
def valid_responses(draw: st.DrawFn) -> bytes:
    status = draw(st.sampled_from([b"200 OK", b"201 Created", b"404 Not Found", b"302 Found", b"418 Teapot"]))
    headers = draw(st.lists(st.sampled_from([b"X-A: 1", b"Content-Type: text/plain", b"Set-Cookie: a=b"]), max_size=3))
    body = draw(st.binary(max_size=60))
    if draw(st.booleans()):
        headers.append(b"Transfer-Encoding: chunked")
        body = chunked(body, draw(st.lists(st.integers(1, 23), min_size=1, max_size=4)))
    else:
        headers.append(b"Content-Length: %d" % len(body))
    return b"HTTP/1.1 " + status + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body


def allowed_statuses(response: bytes) -> set[int]:
    # CR and LF before the status line are skipped by llhttp as by the request reader (wire.legit_requests)
    sent = re.match(rb"[\r\n]*HTTP/1\.[01] ([0-9]{3})", response)
    return {502, 504} | ({int(sent.group(1))} if sent else set())


def fetch_mutated(proc: SidecarProcess) -> Answer:
    return exchange(proc.port, b"GET /public/fz/mutated HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", quiet=0.3)


def check_answer(answer: Answer, script: Script) -> None:
    detail = f"\n  app sent: {script.response!r} close={script.close}\n  client got: {answer.show()}"
    allowed = allowed_statuses(script.response)
    finals = [r.status for r in answer.responses if r.status not in INTERIM]
    if finals:
        assert finals[0] in allowed, "the client got a status neither the app's nor 502/504" + detail
        assert answer.well_formed(), "the client's answer is not well-formed HTTP" + detail
    else:
        # the head had gone out when the app's body broke off: the only honest signal left is the close, after
        # a well-formed head with the app's own status and a body cut short (never one framed wrong)
        assert answer.closed, "no answer and no close" + detail
        assert answer.malformed in (CUT_CHUNKED, CUT_LENGTH), "no well-formed answer before the close" + detail
        head = re.match(rb"HTTP/1\.1 ([0-9]{3}) ", answer.rest)
        assert head is not None and int(head.group(1)) in allowed, "a cut answer with a status not the app's" + detail


def check_healthy(proc: SidecarProcess, raw_app: RawApp) -> None:
    """A fresh request gets its own answer, never a leftover of the mutated one on a reused connection."""
    target = b"/public/fz/health-%d" % len(raw_app.script.seen)
    health = exchange(proc.port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    detail = f"\n  after the app sent: {raw_app.script.response!r}\n  health check got: {health.show()}"
    assert health.statuses == [200], "the next request failed after a mutated response" + detail
    assert health.responses[0].body == b"answer to " + target, "the next request got another answer" + detail


@FUZZ
@given(response=mutated(valid_responses(), b"\r\n"), close=st.booleans())
def test_mutated_responses_get_a_well_formed_answer_and_leave_the_sidecar_healthy(
    response: bytes, close: bool, fronted: SidecarProcess, raw_app: RawApp
) -> None:
    raw_app.script.response, raw_app.script.close = response, close
    check_answer(fetch_mutated(fronted), raw_app.script)
    check_healthy(fronted, raw_app)


# Response framings two parsers can read two ways: refused with a 502 before any of it reaches the client
# (the pooled connection to the app must not be trusted after one). Obs-fold and bare LF in a response are
# not here: RFC 9112 lets a recipient read those one way (SP, LF), and the fuzz above covers them.
AMBIGUOUS_RESPONSES = [
    pytest.param(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", id="cl-and-te"
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        id="te-and-cl",
    ),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc", id="two-content-lengths"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nab", id="content-length-plus"),
]


@pytest.mark.parametrize("response", AMBIGUOUS_RESPONSES)
@pytest.mark.parametrize("close", [False, True], ids=["keep-open", "close"])
def test_ambiguous_response_framing_is_a_502_and_the_sidecar_stays_healthy(
    response: bytes, close: bool, fronted: SidecarProcess, raw_app: RawApp
) -> None:
    raw_app.script.response, raw_app.script.close = response, close
    answer = fetch_mutated(fronted)
    assert answer.statuses == [502], answer.show()
    check_healthy(fronted, raw_app)


# Bodies that break off or go bad after the head: a streaming sidecar may have sent the head already, so the
# client gets a 502, or the app's head and then a close before the body could be complete (never a complete
# answer made of what the app did not send); either way the broken connection to the app is not reused.
BROKEN_BODIES = [
    pytest.param(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n", id="chunk-size-not-hex"
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY\r\n0\r\n\r\n", id="chunk-longer-than-size"
    ),
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n", id="no-last-chunk"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", id="body-shorter-than-length"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabcdef", id="body-longer-than-length"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Le", id="head-cut"),
    pytest.param(b"", id="nothing"),
]


@pytest.mark.parametrize("response", BROKEN_BODIES)
@pytest.mark.parametrize("close", [False, True], ids=["keep-open", "close"])
def test_a_broken_response_body_is_a_502_or_a_cut_and_the_sidecar_stays_healthy(
    response: bytes, close: bool, fronted: SidecarProcess, raw_app: RawApp
) -> None:
    raw_app.script.response, raw_app.script.close = response, close
    answer = fetch_mutated(fronted)
    check_answer(answer, raw_app.script)
    if answer.responses and answer.statuses != [502]:
        # complete, so it must be exactly what the app framed (the excess of a too-long body dropped)
        assert answer.responses[0].body == b"ab", answer.show()
    check_healthy(fronted, raw_app)


# Status lines an app may get wrong: the client still gets a well-formed one (the app's status, or a 502).
ODD_STATUS_LINES = [
    pytest.param(
        b"HTTP/1.1 200 \x00OK\r\nContent-Length: 2\r\n\r\nab",
        id="nul-in-reason",
    ),
    pytest.param(
        b"HTTP/1.1 200 O\x7fK\r\nContent-Length: 2\r\n\r\nab",
        id="del-in-reason",
    ),
    pytest.param(
        b"HTTP/1.1 200 O\x01K\r\nContent-Length: 2\r\n\r\nab",
        id="control-in-reason",
    ),
    pytest.param(b"HTTP/1.1 200 \r\nContent-Length: 2\r\n\r\nab", id="empty-reason"),
    pytest.param(b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nab", id="no-reason"),
    pytest.param(b"HTTP/1.1 200 \xc3\xa9t\xc3\xa9\r\nContent-Length: 2\r\n\r\nab", id="utf8-reason"),
    pytest.param(b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nab", id="four-digit-status"),
    # found by this file: lean once relayed them as `HTTP/1.1 99 OK` and `600`; now a 502
    pytest.param(b"HTTP/1.1 099 OK\r\nContent-Length: 2\r\n\r\nab", id="status-099"),
    pytest.param(b"HTTP/1.1 600 OK\r\nContent-Length: 2\r\n\r\nab", id="status-600"),
]


@pytest.mark.parametrize("response", ODD_STATUS_LINES)
def test_an_odd_status_line_from_the_app_reaches_the_client_well_formed_or_as_a_502(
    response: bytes, fronted: SidecarProcess, raw_app: RawApp
) -> None:
    raw_app.script.response, raw_app.script.close = response, False
    check_answer(fetch_mutated(fronted), raw_app.script)
    check_healthy(fronted, raw_app)
