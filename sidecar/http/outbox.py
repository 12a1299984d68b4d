"""The lean engine's writes, to clients and to the app, sent together at the end of each loop round.

Under load one round of the event loop handles many ready connections. Written at once, each request's
head wakes the app's process (and each answer the client's) on its own: on this machine that wake-up was
about a tenth of the sidecar's CPU per request, and the app and the load generator, woken once per
request, did less per wake-up too. So the first write of a round goes out at once (an unloaded sidecar
adds no latency), and later small writes of the same round wait until the loop has handled everything
that was ready, then go out back to back (docs/performance.md has the measurements).

Watching for the round's end costs a callback each round, which buys nothing when a round carries one write
(at 1,000 requests a second, nearly every round: ~3.5 us of CPU a request here). So the outbox watches only
while rounds have company: after `CALM_ROUNDS` watched rounds in a row with a single write it stops, and from
then on writes go out at once and one round in `LOOK_EVERY` writes is watched, which turns watching back on
when a write waited in it.

Order is what makes this safe: every write of the engine goes through the outbox, so a connection's bytes
leave in the order they were written; a write larger than `SMALL` first sends what waits (flow control
then sees it in the transport's buffer, as before); and nothing closes or half-closes a connection with
bytes still waiting (`flush()` first). A WebSocket's tunnel writes directly, after a flush.
"""

from __future__ import annotations

import asyncio
from typing import Final

SMALL: Final = 16 * 1024  # a write up to this size may wait for the end of the round
CALM_ROUNDS: Final = 16  # watched rounds in a row with one write each before rounds are no longer watched
LOOK_EVERY: Final = 32  # while unwatched: the round of one write in this many is watched


class Outbox:
    __slots__ = ("_calm", "_loop", "_pending", "_round", "_unwatched", "_watching")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: list[tuple[asyncio.Transport, bytes]] = []
        self._round = False  # a write went out in this round and its end is scheduled: small writes wait
        self._watching = False  # every round with a write is watched (rounds have had company)
        self._calm = 0  # watched rounds in a row that carried one write
        self._unwatched = 0  # writes until the next watched round (while not watching)

    def write(self, transport: asyncio.Transport, data: bytes) -> None:
        if self._round and len(data) <= SMALL:
            self._pending.append((transport, data))
            return
        self._before_direct()
        transport.write(data)

    def writelines(self, transport: asyncio.Transport, parts: list[bytes]) -> None:
        """Several pieces for one connection: up to SMALL joined (one `write` costs less than a vectored one,
        a copy of a few bytes included), whether they wait or not; larger, one vectored write (no copy)."""
        size = 0
        for part in parts:  # not `sum(map(len, parts))`: compiled, the two builtins cost ~1,700 instructions
            size += len(part)
        if size <= SMALL:
            self.write(transport, b"".join(parts))
            return
        self._before_direct()
        transport.writelines(parts)

    def _before_direct(self) -> None:
        """A write is about to go out at once: what waits goes first, or else it is the round's first."""
        if self._round:
            self.flush()
            return
        if not self._watching:
            self._unwatched -= 1
            if self._unwatched > 0:
                return
            self._unwatched = LOOK_EVERY
        self._round = True
        self._loop.call_soon(self._end_round)  # runs once every ready connection of this round was handled

    def flush(self) -> None:
        """Send what waits, now (before a connection is closed or handed to a tunnel)."""
        if self._pending:
            pending, self._pending = self._pending, []
            for transport, data in pending:
                if not transport.is_closing():
                    transport.write(data)

    def _end_round(self) -> None:
        self._round = False
        if self._pending:  # writes waited for this round's end: keep watching
            self._watching, self._calm = True, 0
            self.flush()
        elif self._watching:
            self._calm += 1
            if self._calm >= CALM_ROUNDS:
                self._watching, self._unwatched = False, LOOK_EVERY
