"""Framing: one reading of where a message ends, and a refusal wherever two readers could disagree."""

from __future__ import annotations

import contextlib

import httptools
import pytest
from hypothesis import given
from hypothesis import strategies as st

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

H = list[tuple[bytes, bytes]]


def test_a_content_length_frames_the_body() -> None:
    assert framing([(b"Host", b"a"), (b"Content-Length", b"12")], "1.1", True) == Framing(12, False)


def test_chunked_frames_the_body_whatever_its_case() -> None:
    assert framing([(b"Host", b"a"), (b"transfer-encoding", b"Chunked")], "1.1", True) == Framing(None, True)


def test_no_framing_header_means_no_body() -> None:
    assert framing([(b"Host", b"a")], "1.0", True) is NO_BODY
    assert not NO_BODY.has_body and not Framing(0, False).has_body


@pytest.mark.parametrize(
    ("headers", "version"),
    [
        ([(b"Content-Length", b"3"), (b"Transfer-Encoding", b"chunked")], "1.1"),
        ([(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"3")], "1.1"),
        ([(b"Content-Length", b"3"), (b"content-length", b"3")], "1.1"),
        ([(b"Transfer-Encoding", b"gzip, chunked")], "1.1"),
        ([(b"Transfer-Encoding", b"chunked"), (b"Transfer-Encoding", b"chunked")], "1.1"),
        ([(b"Transfer-Encoding", b"identity")], "1.1"),
        ([(b"Transfer-Encoding", b"chunked")], "1.0"),
        ([(b"Host", b"a"), (b"HOST", b"b")], "1.1"),
        ([(b"Host", b"a")], "0.9"),
        ([(b"Host", b"a")], "2.0"),
    ],
)
def test_every_ambiguous_framing_is_refused(headers: H, version: str) -> None:
    with pytest.raises(FramingError):
        framing(headers, version, is_request=True)


def test_two_hosts_matter_only_in_a_request() -> None:
    assert framing([(b"Host", b"a"), (b"Host", b"b")], "1.1", is_request=False) is NO_BODY


def test_a_refusal_never_repeats_the_parsers_words() -> None:
    # llhttp's messages can quote the offending bytes (a token, say): the client gets a fixed text
    assert refusal(ValueError("Invalid header value char: Bearer abc")).description == (
        "the request does not parse as HTTP/1.1"
    )
    assert refusal(FramingError("more than one Host")).status == 400


@pytest.mark.parametrize("name", [b"Content-Type", b"User-Agent", b"Host", b"ETag", b"Max-Forwards"])
def test_a_second_singleton_field_in_a_request_is_refused_as_the_aiohttp_parser_does(name: bytes) -> None:
    with pytest.raises(FramingError, match="more than one"):
        framing(
            [(b"Host", b"a"), (name, b"x"), (name.upper(), b"y")] if name != b"Host" else [(name, b"x")] * 2,
            "1.1",
            True,
        )


def test_an_apps_answer_may_repeat_fields_that_do_not_frame_it() -> None:
    assert framing([(b"Server", b"a"), (b"Server", b"b"), (b"Content-Length", b"2")], "1.1", False) == Framing(2, False)
    with pytest.raises(FramingError):
        framing([(b"Content-Length", b"2"), (b"Content-Length", b"2")], "1.1", False)


def test_an_http11_request_without_host_is_refused_but_an_http10_one_is_not() -> None:
    with pytest.raises(FramingError, match="without Host"):
        framing([], "1.1", True)
    assert framing([], "1.0", True) is NO_BODY


@pytest.mark.parametrize("value", [b"chunked ", b" chunked", b"chunked\t", b"chunked,", b"chunked;q=1"])
def test_a_transfer_encoding_with_anything_around_chunked_is_refused(value: bytes) -> None:
    with pytest.raises(FramingError):
        framing([(b"Host", b"a"), (b"Transfer-Encoding", value)], "1.1", True)


def test_an_upgrade_request_with_a_body_is_refused() -> None:
    with pytest.raises(FramingError, match="upgrade"):
        framing([(b"Host", b"a"), (b"Content-Length", b"3")], "1.1", True, upgrade=True)
    assert framing([(b"Host", b"a")], "1.1", True, upgrade=True) is NO_BODY


_NAMES = st.sampled_from(
    [b"Host", b"host", b"HOST", b"Content-Length", b"content-length", b"Transfer-Encoding", b"TRANSFER-ENCODING",
     b"Content-Type", b"User-Agent", b"Server", b"ETag", b"Max-Forwards", b"Content-Range", b"Content-Location",
     b"Accept", b"Authorization", b"Cookie", b"X-Host", b"Hosts", b"Content-Lengths", b"Connection", b"Upgrade"]
)  # fmt: skip
_VALUES = st.sampled_from([b"a", b"0", b"12", b"chunked", b"gzip, chunked", b"1, 2", b""])


@given(
    st.lists(st.tuples(_NAMES, _VALUES), max_size=6),
    st.sampled_from(["1.1", "1.0", "0.9", "2.0"]),
    st.booleans(),
)
def test_a_head_told_plain_is_one_framing_frames_without_a_body_and_does_not_refuse(
    headers: H, version: str, upgrade: bool
) -> None:
    """The lean engine skips `framing` for a head its singleton fields tell plain: it must be a head that
    `framing` itself frames without a body and does not refuse."""
    if plain_head(*_bits([name for name, _ in headers]), version):
        assert framing(headers, version, True, upgrade) is NO_BODY


def _bits(names: list[bytes]) -> tuple[int, int]:
    """The head's field bits, and those seen twice, as the lean engine gathers them field by field."""
    seen = twice = 0
    for name in names:
        bit = field_bit(name)
        twice |= seen & bit
        seen |= bit
    return seen, twice


def _plain(names: list[bytes], version: str = "1.1") -> bool:
    return plain_head(*_bits(names), version)


def test_the_usual_requests_without_a_body_are_plain_and_framing_headers_never_are() -> None:
    assert _plain([b"Host", b"User-Agent", b"Accept", b"Content-Type", b"Authorization"])
    assert _plain([b"Accept"], "1.0")
    assert not _plain([b"Accept"])  # HTTP/1.1 without Host: framing refuses it
    assert not _plain([b"Host", b"content-length"])
    assert not _plain([b"Host", b"Transfer-Encoding"])
    assert not _plain([b"Host", b"HOST"])
    assert not _plain([b"Host", b"User-Agent", b"user-agent"])
    assert not _plain([b"Host"], "0.9")


_CONNECTION_NAMES = st.sampled_from(
    [b"Connection", b"connection", b"CONNECTION", b"Proxy-Connection", b"proxy-connection", b"Upgrade", b"upgrade",
     b"Keep-Alive", b"X-Connection", b"Connections", b"Accept"]
)  # fmt: skip
_CONNECTION_VALUES = st.sampled_from([b"close", b"Close", b"keep-alive", b"upgrade", b"Upgrade", b"websocket", b"h2c"])


@given(
    st.lists(st.tuples(_CONNECTION_NAMES, _CONNECTION_VALUES), max_size=4),
    st.sampled_from([b"GET", b"POST", b"CONNECT", b"OPTIONS"]),
    st.sampled_from([b"1.1", b"1.0"]),
)
def test_llhttp_keeps_open_and_never_upgrades_an_http_1_1_head_without_connection_fields(
    headers: H, method: bytes, version: bytes
) -> None:
    """The lean engine answers for llhttp (no upgrade, keep-alive) when an HTTP/1.1 head has no field
    `field_bit` marks as one llhttp reads for that, and is not CONNECT: llhttp must agree on every such head."""
    seen: list[tuple[bool, bool]] = []

    class Head:
        def on_headers_complete(self) -> None:
            seen.append((parser.should_upgrade(), parser.should_keep_alive()))

    parser = httptools.HttpRequestParser(Head())
    target = b"example.com:443" if method == b"CONNECT" else b"/"
    head = method + b" " + target + b" HTTP/" + version + b"\r\nHost: x\r\n"
    head += b"".join(name + b": " + value + b"\r\n" for name, value in headers) + b"\r\n"
    with contextlib.suppress(httptools.HttpParserUpgrade):
        parser.feed_data(head)
    if version == b"1.1" and method != b"CONNECT" and not _bits([n for n, _ in headers])[0] & CONNECTION_FIELDS:
        assert seen == [(False, True)]
