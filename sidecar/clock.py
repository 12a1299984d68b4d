"""Time as a dependency: the real clock in production, a hand-moved one in tests."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock seconds since the epoch (what `exp`/`nbf`/`iat` are compared with)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps (cache ages, cooldowns, backoff)."""


class SystemClock:
    """The time module's own functions: a reading is a call into C, with no Python frame around it (a request
    reads the clock three times)."""

    __slots__ = ()
    now = staticmethod(time.time)
    monotonic = staticmethod(time.monotonic)


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


TEST_CLOCK_ENV = "SIDECAR_TEST_CLOCK_FILE"


class OffsetClock:
    """Test-only: the system clock moved forward by the seconds written in a file.

    Several processes (the supervisor's workers and keys process) read the same file, so a test can move
    time for a whole pod at once, as FakeClock does for one process. Selected by `SIDECAR_TEST_CLOCK_FILE`;
    the sidecar logs a warning when it is in use. The test replaces the file atomically (write + rename).
    """

    __slots__ = ("_offset", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self._offset = 0.0

    def offset(self) -> float:
        # Read on every call: a file's mtime is too coarse to tell two quick writes apart, and this is
        # only ever used by tests.
        try:
            with open(self.path, encoding="ascii") as f:
                self._offset = float(f.read().strip() or 0)
        except (OSError, ValueError):
            pass  # keep the last offset read
        return self._offset

    def now(self) -> float:
        return time.time() + self.offset()

    def monotonic(self) -> float:
        return time.monotonic() + self.offset()


def clock_from_environment(environ: Mapping[str, str] = os.environ) -> Clock:
    """The real clock, or the test clock when `SIDECAR_TEST_CLOCK_FILE` names one."""
    path = environ.get(TEST_CLOCK_ENV)
    return OffsetClock(path) if path else SystemClock()
