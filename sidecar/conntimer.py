"""A connection's one timer, shared by both engines' listeners (guard.py for aiohttp's, http/server.py).

Its own module so that the compiled build (build_support/backend.py) compiles it: the lean engine asks it on
every keep-alive request whether it fires in time, and guard.py, which subclasses aiohttp's protocol, is not
compiled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sidecar.connlimits import ConnGuard

# How long a refused or timed-out client's remaining bytes are drained after the answer (nginx: lingering_close).
_LINGER_SECONDS = 1.0


class ConnTimer:
    """A connection's one timer, for either engine: at the guard's deadline if one is due, else within the
    guard's period. It is moved only to fire earlier; firing early, the owner's callback re-arms it."""

    __slots__ = ("_at", "_fire", "_handle", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, fire: Callable[[], None]) -> None:
        self._loop = loop
        self._fire = fire
        self._handle: asyncio.TimerHandle | None = None
        self._at = 0.0

    def arm(self, guard: ConnGuard) -> None:
        when = guard.deadline if guard.deadline is not None else self._loop.time() + guard.period
        if self._handle is not None:
            if self._at <= when:
                return  # fires early and re-arms itself
            self._handle.cancel()
        self._at = when
        self._handle = self._loop.call_at(when, self._fired)

    def fires_by(self, when: float) -> bool:
        """Is the timer set to fire no later than `when`?"""
        return self._handle is not None and self._at <= when

    def _fired(self) -> None:
        self._handle = None
        self._fire()

    def linger(self, then: Callable[[], None]) -> None:
        """After an answer that closes: `then` once the client had _LINGER_SECONDS to read it."""
        self.cancel()
        self._handle = self._loop.call_later(_LINGER_SECONDS, then)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
