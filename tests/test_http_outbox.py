"""The lean engine's outbox: the first write of a loop round at once, later small ones together at the round's
end, every connection's bytes in the order they were written, and nothing left waiting at a flush."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from sidecar.http.outbox import SMALL, Outbox


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
