"""The pod's fetchers, one per provider, and the asks workers send them. The only writer of key state."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import aiohttp

from sidecar.clock import Clock
from sidecar.config import Config
from sidecar.fetcher import ProviderKeys
from sidecar.keys.state import KeyState
from sidecar.metrics import Metrics

log = logging.getLogger("sidecar.keys")


class KeyHub:
    def __init__(self, cfg: Config, clock: Clock, metrics: Metrics, recheck: float | None = None) -> None:
        self.cfg = cfg
        self.fetchers = [ProviderKeys(p, cfg.jwks, clock, metrics, None, self._publish) for p in cfg.providers]
        self._by_name = {f.provider.name: f for f in self.fetchers}
        self._subscribers: list[Callable[[KeyState], object]] = []
        self._recheck = recheck
        self._session: aiohttp.ClientSession | None = None
        self.tasks: list[asyncio.Task[None]] = []  # one refresher per provider; none ever returns

    def subscribe(self, deliver: Callable[[KeyState], object]) -> None:
        self._subscribers.append(deliver)

    def _publish(self, state: KeyState) -> None:
        for deliver in self._subscribers:
            deliver(state)

    def states(self) -> list[KeyState]:
        return [f.state() for f in self.fetchers]

    def resume(self, states: dict[str, KeyState]) -> None:
        for f in self.fetchers:
            state = states.get(f.provider.name)
            if state is not None:
                f.resume(state)

    async def ask(self, provider: str, op: str, kid: str | None = None) -> dict[str, Any]:
        """One worker's question. Any state it causes is published before the answer is returned."""
        f = self._by_name.get(provider)
        if f is None:
            return {"error": f"unknown provider {provider!r}"}
        if op == "refetch":
            return {"suppressed_until": await f.refetch()}
        if op == "refresh":
            return {"ok": await f.refresh()}
        if op == "revoke" and isinstance(kid, str):
            return {"was_trusted": f.revoke(kid)}
        return {"error": f"unknown ask {op!r}"}

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.cfg.jwks.fetch_timeout), headers={"User-Agent": "jwt-sidecar"}
        )
        for f in self.fetchers:
            f.session = self._session
            self.tasks.append(asyncio.create_task(f.keep_fresh(self._recheck), name=f"jwks:{f.provider.name}"))

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()
        if self._session is not None:
            await self._session.close()
