"""The pod's fetchers, one per provider, and the asks workers send them. The only writer of key state."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import aiohttp

from sidecar.clock import Clock
from sidecar.config import Config, Jwks, Provider
from sidecar.fetcher import ProviderKeys
from sidecar.keys.state import KeyState
from sidecar.metrics import Metrics

log = logging.getLogger("sidecar.keys")


def same_key_source(old: Provider, new: Provider, old_jwks: Jwks, new_jwks: Jwks) -> bool:
    """Whether a reloaded provider reads the same keys the same way, so its fetched keys stay good."""
    fields = ("name", "jwks_url", "jwks_file", "discovery", "ca_file", "jwks_auth", "algorithms", "revoked_kids")
    same = all(getattr(old, f) == getattr(new, f) for f in fields) and old_jwks == new_jwks
    return same and (not new.discovery or old.issuer == new.issuer)


class KeyHub:
    def __init__(self, cfg: Config, clock: Clock, metrics: Metrics, recheck: float | None = None) -> None:
        self.cfg = cfg
        self.fetchers = [ProviderKeys(p, cfg.jwks, clock, metrics, None, self._publish) for p in cfg.providers]
        self._by_name = {f.provider.name: f for f in self.fetchers}
        self._subscribers: list[Callable[[KeyState], object]] = []
        self._recheck = recheck
        self._session: aiohttp.ClientSession | None = None
        self.tasks: list[asyncio.Task[None]] = []  # one refresher per provider; none ever returns
        self._clock, self._metrics = clock, metrics
        self.reconfigured = asyncio.Event()  # set when a reload replaced refreshers (the keys process re-waits)

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
            self._run(f)

    def _run(self, f: ProviderKeys) -> None:
        f.session = self._session
        self.tasks.append(asyncio.create_task(f.keep_fresh(self._recheck), name=f"jwks:{f.provider.name}"))

    async def reconfigure(self, cfg: Config) -> list[str]:
        """Take a reloaded config: a provider whose key source is unchanged keeps its fetcher (keys, schedule,
        cooldown: no fetch). A changed one gets a new fetcher that fetches first, while the old one keeps
        publishing; it takes over once that fetch is done, successful or not. Returns the new fetchers' names."""
        kept: dict[str, ProviderKeys] = {}
        fresh: list[ProviderKeys] = []
        for p in cfg.providers:
            old = self._by_name.get(p.name)
            if old is not None and same_key_source(old.provider, p, self.cfg.jwks, cfg.jwks):
                kept[p.name] = old
            else:
                fresh.append(ProviderKeys(p, cfg.jwks, self._clock, self._metrics, self._session))
        replaced = [f for f in fresh if f.provider.name in self._by_name]
        if replaced:  # bounded by fetch_timeout each; tokens keep meeting the old keys meanwhile
            await asyncio.gather(*(f.refresh() for f in replaced))
        running = dict(zip(self.fetchers, self.tasks, strict=False))  # empty before start()
        gone = [f for f in self.fetchers if kept.get(f.provider.name) is not f]
        for f in gone:
            task = running.pop(f, None)
            if task is not None:
                task.cancel()
        self.fetchers = [f for f in self.fetchers if f not in gone]
        self.tasks = [running[f] for f in self.fetchers if f in running]
        self.cfg = cfg
        for f in fresh:
            f.publish = self._publish
            self.fetchers.append(f)
            if self._session is not None:
                self._run(f)
        self._by_name = {f.provider.name: f for f in self.fetchers}
        for f in fresh:
            if f.fetched_at is not None:
                self._publish(f.state())
        self.reconfigured.set()
        return [f.provider.name for f in fresh]

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()
        if self._session is not None:
            await self._session.close()
