"""ConnGuard without a socket or a clock: heads fed in pieces, deadlines computed from the times given."""

from __future__ import annotations

import pytest

from sidecar.config import ConfigError, Limits, load
from sidecar.connlimits import (
    BODY_TIMEOUT,
    HEADER_TIMEOUT,
    HEADERS_TOO_LARGE,
    IDLE_TIMEOUT,
    REQUEST_LINE_TOO_LONG,
    TOO_MANY_HEADERS,
    ConnGuard,
    ConnLimits,
    HeadRefused,
)

LIMITS = ConnLimits(
    max_line_bytes=64, max_head_bytes=256, max_headers=4, header_timeout=10, idle_timeout=75, body_timeout=60
)

PROVIDER = {"issuer": "https://idp", "jwks_url": "https://idp/jwks", "audiences": ["a"]}


def feed(g: ConnGuard, *pieces: bytes) -> list[int]:
    return [g.head(p, 0) for p in pieces]


def refused(g: ConnGuard, *pieces: bytes) -> HeadRefused:
    with pytest.raises(HeadRefused) as e:
        feed(g, *pieces)
    return e.value


def test_a_head_in_one_read_ends_just_past_its_empty_line() -> None:
    g = ConnGuard(LIMITS, now=0)
    data = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /next"
    assert g.head(data, 0) == data.index(b"GET /next")
    assert not g.head_in_progress


def test_a_head_the_parser_counts_passes_uncounted_and_gets_the_count_refusal_if_the_parser_refuses_it() -> None:
    g = ConnGuard(LIMITS, now=0)
    over = b"GET / HTTP/1.1\r\n" + b"A: b\r\n" * 5 + b"\r\n"  # five header lines, four allowed
    assert g.head(over, 0, parser_counts=True) == len(over)  # the parser stops at the fifth (lean engine)
    r = g.lines_over(over, 0, len(over))
    assert r is not None and (r.status, r.reason) == (431, TOO_MANY_HEADERS)  # what `head` would have raised
    assert refused(ConnGuard(LIMITS, now=0), over).reason == TOO_MANY_HEADERS
    at_limit = b"\r\n\r\nGET / HTTP/1.1\r\n" + b"A: b\r\n" * 4 + b"\r\n"  # empty lines first are no lines
    assert g.lines_over(at_limit, 0, len(at_limit)) is None
    assert g.head(at_limit, 0) == len(at_limit)


def test_empty_lines_before_a_head_are_skipped_only_whole() -> None:
    g = ConnGuard(LIMITS, now=0)
    assert g.head(b"\r\n\r\n", 0) == -1 and not g.head_in_progress
    assert g.head(b"\r", 0) == -1 and g.head_in_progress  # a lone CR starts a head (llhttp then refuses it)


def test_whole_head_is_one_new_head_ending_at_the_last_byte_inside_every_limit() -> None:
    g = ConnGuard(LIMITS, now=0)
    assert g.whole_head(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert not g.whole_head(b"GET")  # a piece: the general path
    assert not g.whole_head(b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n")  # pipelined
    assert not g.whole_head(b"\r\n\r\n")
    assert not g.whole_head(b"GET / HTTP/1.1\r\n" + b"A: b\r\n" * 5 + b"\r\n")  # too many headers
    assert not g.whole_head(b"GET /" + b"a" * 64 + b" HTTP/1.1\r\n\r\n")  # longer than a line may be
    g.head(b"GET / HT", 0)
    assert not g.whole_head(b"TP/1.1\r\n\r\n")  # the end of a head begun earlier


def test_a_terminator_split_across_reads_is_found() -> None:
    for cut in range(1, 4):
        g = ConnGuard(LIMITS, now=0)
        head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        first, second = head[: len(head) - cut], head[len(head) - cut :]
        assert feed(g, first, second + b"rest") == [-1, cut]


def test_a_head_sent_one_byte_at_a_time_ends_at_its_last_byte() -> None:
    g = ConnGuard(LIMITS, now=0)
    head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    ends = [g.head(head[i : i + 1], 0) for i in range(len(head))]
    assert ends == [-1] * (len(head) - 1) + [1]


def test_leading_empty_lines_do_not_start_a_head() -> None:
    g = ConnGuard(LIMITS, now=0)
    assert g.head(b"\r\n\r\n", 0) == -1 and not g.head_in_progress
    assert g.head(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0) > 0


def test_a_head_over_the_byte_limit_is_refused_with_431_before_it_ends() -> None:
    g = ConnGuard(LIMITS, now=0)
    e = refused(g, b"GET / HTTP/1.1\r\n", b"X: " + b"a" * 200, b"a" * 100)
    assert (e.status, e.reason) == (431, HEADERS_TOO_LARGE)


def test_a_head_exactly_at_the_byte_limit_passes() -> None:
    head = b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 57 + b"\r\n"  # 16 + 62 bytes
    head += b"Y: " + b"b" * 57 + b"\r\n" + b"Z: " + b"c" * 57 + b"\r\n"  # + 124
    head += b"W: " + b"d" * (256 - len(head) - 7) + b"\r\n\r\n"
    assert len(head) == 256
    assert ConnGuard(LIMITS, now=0).head(head, 0) == 256
    with pytest.raises(HeadRefused):
        ConnGuard(LIMITS, now=0).head(head[:-4] + b"d\r\n\r\n", 0)


def test_a_header_line_over_the_line_limit_is_refused_with_431_even_split_across_reads() -> None:
    g = ConnGuard(LIMITS, now=0)
    e = refused(g, b"GET / HTTP/1.1\r\nX: " + b"a" * 30, b"a" * 30, b"a\r\n\r\n")
    assert (e.status, e.reason) == (431, HEADERS_TOO_LARGE)
    fits = b"GET / HTTP/1.1\r\nX: " + b"a" * 59 + b"\r\n\r\n"  # the header line is exactly 64 bytes
    assert ConnGuard(LIMITS, now=0).head(fits, 0) == len(fits)


def test_too_many_header_lines_are_refused_even_before_the_head_ends() -> None:
    g = ConnGuard(LIMITS, now=0)
    e = refused(g, b"GET / HTTP/1.1\r\n" + b"A: b\r\n" * 5)
    assert (e.status, e.reason) == (431, TOO_MANY_HEADERS)
    ok = b"GET / HTTP/1.1\r\n" + b"A: b\r\n" * 4 + b"\r\n"
    assert ConnGuard(LIMITS, now=0).head(ok, 0) == len(ok)


def test_an_endless_request_line_is_refused_with_414() -> None:
    g = ConnGuard(LIMITS, now=0)
    e = refused(g, b"GET /" + b"a" * 40, b"a" * 40)
    assert (e.status, e.reason) == (414, REQUEST_LINE_TOO_LONG)


def test_a_silent_connection_gets_the_header_timeout_from_its_accept() -> None:
    g = ConnGuard(LIMITS, now=100)
    assert (g.deadline, g.reason) == (110, HEADER_TIMEOUT)
    assert g.expired(109.9, reading_paused=False) is None
    assert g.expired(110, reading_paused=False) == HEADER_TIMEOUT


def test_a_started_head_must_end_within_the_header_timeout_of_its_first_byte() -> None:
    g = ConnGuard(LIMITS, now=0)
    g.response_done(now=1)  # as after an earlier request (open requests never go below zero)
    assert g.head(b"GET / HT", 0) == -1
    g.head_pending(now=50)
    g.head(b"T", 0)
    g.head_pending(now=55)  # later bytes do not extend it
    g.settle(now=55)
    assert (g.deadline, g.reason) == (60, HEADER_TIMEOUT)


def test_between_requests_the_idle_timeout_runs_from_the_end_of_the_response() -> None:
    g = ConnGuard(LIMITS, now=0)
    assert g.head(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0) > 0
    g.request(None, now=1)
    g.settle(now=1)
    assert g.deadline is None  # the app is answering: not the client's time
    g.response_done(now=3)
    g.settle(now=3)
    assert (g.deadline, g.reason) == (78, IDLE_TIMEOUT)
    assert g.period == 10  # the timer never sleeps longer than the shortest timeout


def test_an_idle_deadline_never_closes_a_connection_that_is_answering() -> None:
    g = ConnGuard(LIMITS, now=0)
    g.response_done(now=0)
    g.settle(now=0)
    assert g.expired(75, reading_paused=False, busy=True) is None
    assert g.deadline == 150
    assert g.expired(150, reading_paused=False) == IDLE_TIMEOUT


def test_a_body_must_not_pause_longer_than_the_body_timeout() -> None:
    g = ConnGuard(LIMITS, now=0)
    g.head(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n", 0)
    g.request(10, now=0)
    assert g.body(4, now=30) == 4
    g.settle(now=30)
    assert (g.deadline, g.reason) == (90, BODY_TIMEOUT)
    assert g.expired(90, reading_paused=True) is None  # we stopped reading (flow control): not the client
    assert g.deadline == 150
    assert g.body(100, now=100) == 6  # the rest of the read is the next request's
    assert not g.in_body


def test_a_body_of_unknown_length_takes_every_read_until_it_is_done() -> None:
    g = ConnGuard(LIMITS, now=0)
    g.request(-1, now=0)
    assert g.body(1000, now=1) == 1000 and g.in_body
    g.body_done()
    assert not g.in_body


def test_limits_come_from_config_and_the_admin_port_gets_small_ones() -> None:
    cfg = load(
        {
            "providers": [PROVIDER],
            "limits": {"max_headers": 50, "header_timeout": "5s", "idle_timeout": "2m", "body_timeout": 7},
        }
    )
    limits = ConnLimits.from_config(cfg.limits)
    assert (limits.max_headers, limits.header_timeout, limits.idle_timeout, limits.body_timeout) == (50, 5, 120, 7)
    assert limits.max_head_bytes == Limits().max_headers_total_bytes
    admin = limits.for_admin()
    assert admin.max_head_bytes == 8192 and admin.max_headers == 32


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("max_headers", 2, "at least 8"),
        ("header_timeout", 0, "at least 0.1"),
        ("idle_timeout", "soon", "duration"),
        ("body_timeout", -1, "at least 0.1"),
    ],
)
def test_bad_limit_values_name_their_key(key: str, value: object, problem: str) -> None:
    with pytest.raises(ConfigError) as e:
        load({"providers": [PROVIDER], "limits": {key: value}})
    assert e.value.path == f"limits.{key}" and problem in e.value.problem
