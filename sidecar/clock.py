"""Time as a dependency: the real clock in production, a hand-moved one in tests."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock seconds since the epoch (what `exp`/`nbf`/`iat` are compared with)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps (cache ages, cooldowns, backoff)."""


class SystemClock:
    __slots__ = ()

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock that moves only when told to; both readings move together."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._mono = 1000.0

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self._mono += seconds

    def skew_wall(self, seconds: float) -> None:
        """Move only the wall clock, as an NTP step on a skewed host would."""
        self._now += seconds
