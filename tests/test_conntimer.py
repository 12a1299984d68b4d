"""A connection's one timer: moved only to fire earlier, and set within the guard's period when no deadline is
due (the loop is never run: what is asked is when the timer would fire)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from sidecar.connlimits import ConnGuard, ConnLimits
from sidecar.conntimer import ConnTimer

LIMITS = ConnLimits(
    max_line_bytes=8192, max_head_bytes=32768, max_headers=100, header_timeout=10, idle_timeout=60, body_timeout=30
)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_a_later_deadline_leaves_the_timer_where_it_is_and_an_earlier_one_moves_it(
    loop: asyncio.AbstractEventLoop,
) -> None:
    now = loop.time()
    guard = ConnGuard(LIMITS, now)  # the header timeout's deadline: now + 10
    timer = ConnTimer(loop, lambda: None)
    timer.arm(guard)
    assert timer.fires_by(now + 10) and not timer.fires_by(now + 9)
    guard.deadline = now + 50
    timer.arm(guard)  # later: it fires at +10 and the owner re-arms it then
    assert timer.fires_by(now + 10)
    guard.deadline = now + 2
    timer.arm(guard)
    assert timer.fires_by(now + 2) and not timer.fires_by(now + 1)


def test_without_a_deadline_the_timer_fires_within_the_shortest_timeout_and_a_cancelled_one_never(
    loop: asyncio.AbstractEventLoop,
) -> None:
    guard = ConnGuard(LIMITS, loop.time())
    guard.deadline = None
    timer = ConnTimer(loop, lambda: None)
    before = loop.time()
    timer.arm(guard)
    assert timer.fires_by(loop.time() + guard.period) and not timer.fires_by(before + guard.period - 1)
    timer.cancel()
    assert not timer.fires_by(loop.time() + 3600)
