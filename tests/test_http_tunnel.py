"""The WebSocket tunnel's frame bookkeeping: where frames end, so a close frame never lands inside one."""

from __future__ import annotations

import struct

import pytest

from sidecar.http.tunnel import POLICY_VIOLATION, FrameCursor, close_frame


def frame(payload: bytes, masked: bool = False, opcode: int = 0x1) -> bytes:
    n = len(payload)
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head = bytes((0x80 | opcode, mask_bit | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, mask_bit | 126)) + struct.pack("!H", n)
    else:
        head = bytes((0x80 | opcode, mask_bit | 127)) + struct.pack("!Q", n)
    return head + (b"\x01\x02\x03\x04" if masked else b"") + payload


@pytest.mark.parametrize("size", [0, 5, 125, 126, 65535, 65536, 70000])
@pytest.mark.parametrize("masked", [False, True])
def test_a_frame_ends_where_its_length_says_whatever_the_length_form(size: int, masked: bool) -> None:
    data = frame(b"x" * size, masked)
    c = FrameCursor()
    assert c.feed(data) == len(data)
    assert c.at_boundary


@pytest.mark.parametrize("cut", [1, 2, 3, 5, 9, 13])
def test_frame_ends_are_found_across_reads_split_anywhere(cut: int) -> None:
    data = frame(b"y" * 300, masked=True) + frame(b"z" * 10)
    c = FrameCursor()
    c.feed(data[:cut])
    assert not c.at_boundary
    c.feed(data[cut:])
    assert c.at_boundary


def test_stopping_at_a_boundary_passes_only_the_rest_of_the_frame_in_progress() -> None:
    first, second = frame(b"a" * 50), frame(b"b" * 50)
    c = FrameCursor()
    c.feed(first[:20])
    rest = first[20:] + second
    assert c.feed(rest, stop_at_boundary=True) == len(first) - 20
    assert c.at_boundary
    assert c.feed(second, stop_at_boundary=True) == 0


def test_close_frames_carry_1008_and_the_reason_masked_only_towards_the_app() -> None:
    to_client = close_frame(POLICY_VIOLATION, b"token expired", masked=False)
    assert to_client[0] == 0x88 and to_client[1] == 15
    assert struct.unpack("!H", to_client[2:4])[0] == 1008 and to_client[4:] == b"token expired"
    to_app = close_frame(POLICY_VIOLATION, b"token expired", masked=True)
    assert to_app[1] == 0x80 | 15
    mask, body = to_app[2:6], to_app[6:]
    plain = bytes(b ^ mask[i % 4] for i, b in enumerate(body))
    assert struct.unpack("!H", plain[:2])[0] == 1008 and plain[2:] == b"token expired"


def test_the_cursor_notices_a_close_frame_so_the_session_ends_as_its_sender_chose() -> None:
    c = FrameCursor()
    c.feed(frame(b"hi") + frame(b"", opcode=0x9))  # a text and a ping
    assert not c.closed
    c.feed(frame(struct.pack("!H", 1000), masked=True, opcode=0x8))
    assert c.closed and c.at_boundary
