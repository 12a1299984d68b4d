"""The lean engine's outbox: the first write of a loop round at once, later small ones together at the round's
end, every connection's bytes in the order they were written, and nothing left waiting at a flush."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from sidecar.http.outbox import CALM_ROUNDS, LOOK_EVERY, SMALL, Outbox


class Recorder:
    """What a connection's transport was given, in order; one log shared by all of them."""

    def __init__(self, name: str, log: list[tuple[str, bytes]]) -> None:
        self.name, self.log, self.closing = name, log, False

    def write(self, data: bytes) -> None:
        self.log.append((self.name, data))

    def writelines(self, parts: list[bytes]) -> None:
        self.log.append((self.name, b"".join(parts)))

    def is_closing(self) -> bool:
        return self.closing


def transports(*names: str) -> tuple[list[tuple[str, bytes]], list[Any]]:
    log: list[tuple[str, bytes]] = []
    return log, [cast(asyncio.Transport, Recorder(n, log)) for n in names]


async def next_round() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def test_the_first_write_of_a_round_goes_at_once_and_the_rest_at_its_end_in_order() -> None:
    log, (a, b) = transports("a", "b")
    box = Outbox(asyncio.get_running_loop())
    box.write(a, b"a1")
    box.write(b, b"b1")
    box.write(a, b"a2")
    assert log == [("a", b"a1")]  # an unloaded sidecar adds no wait
    await next_round()
    assert log == [("a", b"a1"), ("b", b"b1"), ("a", b"a2")]
    box.write(b, b"b2")  # a new round: at once again
    assert log[-1] == ("b", b"b2")


async def test_a_large_write_sends_what_waits_first() -> None:
    log, (a,) = transports("a")
    box = Outbox(asyncio.get_running_loop())
    box.write(a, b"head")
    box.write(a, b"small")
    big = b"x" * (SMALL + 1)
    box.write(a, big)
    assert log == [("a", b"head"), ("a", b"small"), ("a", big)]
    box.writelines(a, [b"y" * SMALL, b"z"])  # pieces over the limit: one vectored write, after what waits
    assert log[-1] == ("a", b"y" * SMALL + b"z")


async def test_a_flush_sends_what_waits_now_and_a_closed_connection_gets_nothing_more() -> None:
    log, (a, b) = transports("a", "b")
    box = Outbox(asyncio.get_running_loop())
    box.write(a, b"a1")
    box.write(a, b"a2")
    box.writelines(b, [b"b", b"1"])
    cast(Recorder, b).closing = True  # the client went away meanwhile
    box.flush()
    assert log == [("a", b"a1"), ("a", b"a2")]
    await next_round()
    assert log == [("a", b"a1"), ("a", b"a2")]


async def test_pieces_go_out_at_once_as_the_rounds_first_write_and_wait_joined_after_it() -> None:
    log, (a, b) = transports("a", "b")
    box = Outbox(asyncio.get_running_loop())
    box.writelines(a, [b"head", b"body"])
    box.writelines(b, [b"head", b"body"])
    assert log == [("a", b"headbody")]
    await next_round()
    assert log == [("a", b"headbody"), ("b", b"headbody")]


async def calm(box: Outbox, t: asyncio.Transport) -> None:
    """Rounds of one write each, until the outbox stops watching them."""
    for _ in range(CALM_ROUNDS):
        box.write(t, b"alone")
        await next_round()


async def test_after_rounds_of_one_write_each_every_write_goes_out_at_once() -> None:
    log, (a, b) = transports("a", "b")
    box = Outbox(asyncio.get_running_loop())
    await calm(box, a)
    log.clear()
    box.write(a, b"a1")
    box.write(b, b"b1")
    box.writelines(a, [b"a", b"2"])
    assert log == [("a", b"a1"), ("b", b"b1"), ("a", b"a2")]  # nothing waits: no round is watched
    await next_round()
    assert len(log) == 3


async def test_a_watched_round_with_company_turns_waiting_back_on() -> None:
    log, (a, b) = transports("a", "b")
    box = Outbox(asyncio.get_running_loop())
    await calm(box, a)
    for _ in range(LOOK_EVERY + 1):  # rounds of two writes: one of them is looked at within LOOK_EVERY writes
        log.clear()
        box.write(a, b"a1")
        box.write(b, b"b1")
        waited = log == [("a", b"a1")]
        await next_round()
        assert log == [("a", b"a1"), ("b", b"b1")]
        if waited:
            break
    else:
        raise AssertionError(f"no round was watched in {LOOK_EVERY + 1} rounds")
    for _ in range(3):  # watched from then on
        log.clear()
        box.write(a, b"a2")
        box.write(b, b"b2")
        assert log == [("a", b"a2")]
        await next_round()
        assert log == [("a", b"a2"), ("b", b"b2")]


async def test_a_large_write_or_a_flush_while_not_watching_keeps_the_order() -> None:
    log, (a,) = transports("a")
    box = Outbox(asyncio.get_running_loop())
    await calm(box, a)
    log.clear()
    big = b"x" * (SMALL + 1)
    box.write(a, b"head")
    box.write(a, big)
    box.flush()
    box.write(a, b"tail")
    assert log == [("a", b"head"), ("a", big), ("a", b"tail")]


async def test_small_pieces_leave_in_one_write_and_large_ones_in_one_vectored_write() -> None:
    calls: list[str] = []

    class Calls(Recorder):
        def write(self, data: bytes) -> None:
            calls.append("write")
            super().write(data)

        def writelines(self, parts: list[bytes]) -> None:
            calls.append("writelines")
            super().writelines(parts)

    log: list[tuple[str, bytes]] = []
    a = cast(asyncio.Transport, Calls("a", log))
    box = Outbox(asyncio.get_running_loop())
    await calm(box, a)
    calls.clear()
    log.clear()
    box.writelines(a, [b"head", b"body"])
    box.writelines(a, [b"h" * SMALL, b"b"])
    assert calls == ["write", "writelines"]
    assert log == [("a", b"headbody"), ("a", b"h" * SMALL + b"b")]
