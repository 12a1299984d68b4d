"""Ways to take the sidecar down, against a real `sidecar run`: heads that would make it buffer without bound
(huge headers, many headers, a huge request line) and clients too slow to ever finish (trickled heads,
silent connections, stalled bodies, idle keep-alive). Each abusive connection must cost about one head
limit of memory, get its answer (431/414/408) or a close within the configured time, and be counted.

Timeouts are configured small (TIMEOUT seconds) so each case waits well under two seconds.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from sidecar.devtools.issuer import DevIssuer
from tests.conftest import Upstream, sidecar_args
from tests.support import SidecarProcess, free_port, request

TIMEOUT = 0.6  # header, idle and body timeouts of the sidecar under test
HEAD_LIMIT = 65536  # limits.max_headers_total_bytes (the default)
MAX_HEADERS = 100  # limits.max_headers (the default)
CONCURRENT = 16  # abusive connections at once


@pytest.fixture(scope="module")
def sc(issuer: DevIssuer, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    config: Path = tmp_path_factory.mktemp("limits") / "sidecar.yaml"
    decision_port = free_port()
    config.write_text(
        yaml.safe_dump(
            {
                "limits": {"header_timeout": TIMEOUT, "idle_timeout": TIMEOUT, "body_timeout": TIMEOUT},
                "decision": {"listen": f"127.0.0.1:{decision_port}"},
            }
        )
    )
    args = sidecar_args(issuer, upstream, "--log-level", "warning", "--workers", "1", "--config", str(config))
    proc = SidecarProcess(args).start()
    proc.decision_port = decision_port  # type: ignore[attr-defined]
    yield proc
    proc.stop()


# --- helpers ------------------------------------------------------------------------------------------


def connect(port: int, timeout: float = 5) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def send_until_refused(port: int, chunks: Iterator[bytes]) -> bytes:
    """Send chunks until the server stops taking them; return everything it answered before closing."""
    with connect(port) as s:
        try:
            for chunk in chunks:
                s.sendall(chunk)
        except OSError:
            pass  # the server closed while we were still sending: expected
        return read_to_close(s)


def read_to_close(s: socket.socket) -> bytes:
    out = []
    try:
        while chunk := s.recv(65536):
            out.append(chunk)
    except OSError:
        pass
    return b"".join(out)


def status_of(answer: bytes) -> int | None:
    if not answer.startswith(b"HTTP/1.1 "):
        return None
    return int(answer[9:12])


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def at_once(n: int, job: Callable[[], bytes]) -> list[bytes]:
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: job(), range(n)))


def closed_count(sc: SidecarProcess, reason: str) -> float:
    return sc.metric("sidecar_connections_closed_total", reason=reason)


def huge_headers(count: int = 60, size: int = 120 * 1024) -> Iterator[bytes]:
    """The review's request, scaled down: many headers of 120 KiB each, sent one header per write."""
    yield b"GET /public HTTP/1.1\r\nHost: x\r\n"
    value = b"a" * size
    for i in range(count):
        yield b"X-Big-%d: " % i + value + b"\r\n"
    yield b"\r\n"


# --- memory before the 431 --------------------------------------------------------------------------


def test_memory_huge_headers_cost_about_one_head_limit_per_connection_and_get_431(sc: SidecarProcess) -> None:
    assert sc.proc is not None
    request(sc.url, path="/public")  # warm: the first request allocates what every request shares
    before = sc.metric("sidecar_connections_closed_total", reason="headers_too_large")
    rss_before, _ = rss_kib(sc.proc.pid)
    started = time.monotonic()
    answers = at_once(CONCURRENT, lambda: send_until_refused(sc.port, huge_headers()))
    assert time.monotonic() - started < 10
    _, peak = rss_kib(sc.proc.pid)
    assert [status_of(a) for a in answers] == [431] * CONCURRENT
    assert b'"reason": "headers_too_large"' in answers[0]
    # Each connection may hold one head (the limit) plus one socket read in flight; before the guard,
    # each of these requests cost about twice its 7 MiB of headers.
    allowed_kib = CONCURRENT * (HEAD_LIMIT + 256 * 1024) * 2 // 1024 + 8 * 1024
    assert peak - rss_before < allowed_kib, (peak - rss_before, allowed_kib)
    assert closed_count(sc, "headers_too_large") == before + CONCURRENT
    assert request(sc.url, path="/public").status == 200  # and it still serves


def test_memory_many_small_headers_are_refused_at_the_header_count_limit(sc: SidecarProcess) -> None:
    before = closed_count(sc, "too_many_headers")

    def many() -> Iterator[bytes]:
        yield b"GET /public HTTP/1.1\r\nHost: x\r\n"
        yield b"".join(b"X-%d: v\r\n" % i for i in range(5000))
        yield b"\r\n"

    answers = at_once(CONCURRENT, lambda: send_until_refused(sc.port, many()))
    assert [status_of(a) for a in answers] == [431] * CONCURRENT
    assert closed_count(sc, "too_many_headers") == before + CONCURRENT


def test_memory_headers_at_the_count_limit_still_pass(sc: SidecarProcess) -> None:
    headers = [(f"X-Ok-{i}", "v") for i in range(MAX_HEADERS - 4)]  # http.client adds Host and Content-Length
    assert request(sc.url, path="/public", headers=headers).status == 200


def test_memory_an_endless_request_line_gets_414_before_it_is_buffered(sc: SidecarProcess) -> None:
    before = closed_count(sc, "request_line_too_long")

    def endless() -> Iterator[bytes]:
        yield b"GET /public?q="
        for _ in range(64):
            yield b"a" * 65536

    answers = at_once(4, lambda: send_until_refused(sc.port, endless()))
    assert [status_of(a) for a in answers] == [414] * 4
    assert closed_count(sc, "request_line_too_long") == before + 4
    assert sc.metric("sidecar_requests_rejected_total", reason="request_line_too_long") >= 4


def test_memory_a_head_split_across_many_reads_is_judged_as_one(sc: SidecarProcess) -> None:
    """The terminator split between reads, and a head under the limit sent a few bytes at a time."""
    head = b"GET /public HTTP/1.1\r\nHost: x\r\nX-A: " + b"b" * 1000 + b"\r\n\r\n"
    with connect(sc.port) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, len(head) - 4, 97):
            s.sendall(head[i : min(i + 97, len(head) - 4)])
        for i in range(len(head) - 4, len(head)):  # the empty line's bytes in separate reads
            time.sleep(0.02)
            s.sendall(head[i : i + 1])
        s.settimeout(5)
        answer = s.recv(65536)
    assert status_of(answer) == 200


def test_memory_the_decision_and_admin_listeners_are_bounded_too(sc: SidecarProcess) -> None:
    decision = send_until_refused(sc.decision_port, huge_headers(count=4))  # type: ignore[attr-defined]
    assert status_of(decision) == 431
    admin = send_until_refused(sc.admin_port, iter([b"GET /metrics HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 9000]))
    assert status_of(admin) == 431  # the admin port takes small heads only
    assert request(sc.admin, path="/healthz").status == 200


# --- slow clients -----------------------------------------------------------------------------------


def test_slow_trickled_heads_are_closed_with_408_after_the_header_timeout(sc: SidecarProcess) -> None:
    before = closed_count(sc, "header_timeout")

    def trickle() -> bytes:
        with connect(sc.port) as s:
            s.sendall(b"GET /public HTTP/1.1\r\nHost: x\r\n")
            started = time.monotonic()
            try:
                for _ in range(25):  # one byte every 0.1 s, a head that never ends, until the server answers
                    s.sendall(b"X")
                    if select.select([s], [], [], 0.1)[0]:
                        break
            except OSError:
                pass
            answer = read_to_close(s)
            elapsed = time.monotonic() - started
            return b"%.2f " % elapsed + answer

    results = at_once(8, trickle)
    for r in results:
        elapsed, _, answer = r.partition(b" ")
        assert status_of(answer) == 408, answer[:200]
        assert TIMEOUT * 0.9 < float(elapsed) < TIMEOUT + 1.2
    assert closed_count(sc, "header_timeout") == before + 8


def test_slow_silent_connections_are_closed_after_the_header_timeout(sc: SidecarProcess) -> None:
    before = closed_count(sc, "header_timeout")

    def silent() -> bytes:
        with connect(sc.port) as s:
            started = time.monotonic()
            answer = read_to_close(s)
            return b"%.2f " % (time.monotonic() - started) + answer

    for r in at_once(CONCURRENT, silent):
        elapsed, _, answer = r.partition(b" ")
        assert status_of(answer) == 408
        assert float(elapsed) < TIMEOUT + 1.2
    assert closed_count(sc, "header_timeout") == before + CONCURRENT


def test_slow_idle_keep_alive_connections_close_quietly_after_the_idle_timeout(sc: SidecarProcess) -> None:
    before = closed_count(sc, "idle_timeout")
    with connect(sc.port) as s:
        for _ in range(3):  # requests closer together than the idle timeout keep the connection
            s.sendall(b"GET /public HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status_of(s.recv(65536)) == 200
            time.sleep(TIMEOUT / 2)
        started = time.monotonic()
        rest = read_to_close(s)
        assert rest == b""  # closed without an answer: nothing was asked
        assert TIMEOUT / 2 * 0.9 < time.monotonic() - started < TIMEOUT + 1.0
    assert closed_count(sc, "idle_timeout") == before + 1


def test_slow_stalled_bodies_are_closed_after_the_body_timeout(sc: SidecarProcess, upstream: Upstream) -> None:
    before = closed_count(sc, "body_timeout")

    def stall() -> bytes:
        with connect(sc.port) as s:
            s.sendall(b"POST /public/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
            started = time.monotonic()
            answer = read_to_close(s)
            return b"%.2f " % (time.monotonic() - started) + answer

    for r in at_once(8, stall):
        elapsed, _, _answer = r.partition(b" ")
        assert float(elapsed) < TIMEOUT + 1.2
    assert closed_count(sc, "body_timeout") == before + 8


def test_slow_a_stalled_chunked_body_is_closed_after_the_body_timeout(sc: SidecarProcess) -> None:
    before = closed_count(sc, "body_timeout")
    with connect(sc.port) as s:
        s.sendall(b"POST /public/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
        started = time.monotonic()
        read_to_close(s)
        assert time.monotonic() - started < TIMEOUT + 1.2
    assert closed_count(sc, "body_timeout") == before + 1


def test_slow_a_large_body_that_streams_steadily_is_not_cut(sc: SidecarProcess) -> None:
    """Longer in total than the body timeout, but never silent that long."""
    chunk, count = 65536, 24
    with connect(sc.port, timeout=10) as s:
        s.sendall(b"POST /public/big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (chunk * count))
        started = time.monotonic()
        for _ in range(count):
            s.sendall(b"y" * chunk)
            time.sleep(TIMEOUT / 6)
        assert time.monotonic() - started > TIMEOUT * 2
        answer = s.recv(65536)
        while b"body_bytes" not in answer:
            answer += s.recv(65536)
    assert status_of(answer) == 200
    assert b'"body_bytes": %d' % (chunk * count) in answer


def test_slow_a_chunked_body_then_a_keep_alive_request_works(sc: SidecarProcess) -> None:
    with connect(sc.port) as s:
        s.sendall(b"POST /public/c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        time.sleep(TIMEOUT / 3)
        s.sendall(b"0\r\n\r\n")
        first = s.recv(65536)
        assert status_of(first) == 200 and b'"body_bytes": 5' in first
        s.sendall(b"GET /public HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(s.recv(65536)) == 200


# --- pipelining ----------------------------------------------------------------------------------


def test_pipelined_requests_are_all_answered_in_order(sc: SidecarProcess) -> None:
    n = 80  # more than aiohttp's queue of 32 parsed requests: reading pauses and resumes
    burst = b"".join(b"GET /public/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(n))
    burst += b"GET /public/last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with connect(sc.port, timeout=10) as s:
        s.sendall(burst)
        answer = read_to_close(s)
    assert answer.count(b"HTTP/1.1 200 ") == n + 1
    assert answer.index(b'"path": "/public/0"') < answer.index(b'"path": "/public/79"')
    assert answer.index(b'"path": "/public/79"') < answer.index(b'"path": "/public/last"')


def test_pipelined_an_oversized_head_after_good_ones_closes_the_connection(sc: SidecarProcess) -> None:
    before = closed_count(sc, "headers_too_large")
    good = b"GET /public/ok HTTP/1.1\r\nHost: x\r\n\r\n" * 3
    bad = b"GET /public/bad HTTP/1.1\r\nHost: x\r\nX: " + b"a" * (HEAD_LIMIT + 10) + b"\r\n\r\n"
    answer = send_until_refused(sc.port, iter([good + bad]))
    assert b"/public/bad" not in answer
    assert answer.count(b"HTTP/1.1 200 ") <= 3  # earlier requests may be answered; the big one never reaches the app
    assert closed_count(sc, "headers_too_large") == before + 1


def test_memory_chunked_trailers_are_bounded_by_the_line_and_count_limits(sc: SidecarProcess) -> None:
    """Trailers are header lines after the body: the parser holds them, so its own limits are ours."""
    assert sc.proc is not None
    request(sc.url, path="/public")

    def trailers() -> Iterator[bytes]:
        yield b"POST /public/t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"
        for i in range(60):
            yield b"X-T-%d: " % i + b"t" * (120 * 1024) + b"\r\n"
        yield b"\r\n"

    rss_before, _ = rss_kib(sc.proc.pid)
    answers = at_once(CONCURRENT, lambda: send_until_refused(sc.port, trailers()))
    _, peak = rss_kib(sc.proc.pid)
    assert all(status_of(a) in (400, None) for a in answers), answers[0][:300]  # a parser error
    assert peak - rss_before < CONCURRENT * (16384 * MAX_HEADERS) * 2 // 1024 + 8 * 1024
