"""What a worker reads: the latest published key state of one provider, and the way to ask its fetcher.

Requests only read it (`usable`, `key_for`); a new state replaces it whole (`install`). Staleness is
computed from the published fetch time, so every worker of a pod answers a token the same way at the same
moment. An unknown kid is asked of the pod's fetcher, which alone fetches (single-flight, cooldown); a
worker that was told "suppressed until T" answers the rest of the burst itself, without asking again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from sidecar.clock import Clock
from sidecar.config import Jwks, Provider
from sidecar.jwks import Key, KeySet
from sidecar.keys.state import KeyState, restore
from sidecar.metrics import Metrics


class Asker(Protocol):
    """The way to the pod's fetchers: an in-process call, or the keys process's socket."""

    def __call__(self, provider: str, op: str, kid: str | None = None) -> Awaitable[dict[str, Any]]: ...


class KeyView:
    def __init__(self, provider: Provider, cfg: Jwks, clock: Clock, metrics: Metrics) -> None:
        self.provider = provider
        self.cfg = cfg
        self.clock = clock
        self.metrics = metrics
        self.state = KeyState(provider=provider.name, fresh_for=cfg.refresh, revoked=tuple(provider.revoked_kids))
        self.keys = KeySet(cfg.key_retention, provider.revoked_kids)
        # Told of every key (thumbprint) that stops being trusted, so tokens cached for it are forgotten at once.
        self.on_drop: Callable[[str], object] = lambda _thumbprint: None
        self.ask: Asker | None = None  # set when the channel is wired
        self._allowed = frozenset(provider.algorithms)
        self._asking: asyncio.Future[float | None] | None = None
        self._suppressed_until = 0.0
        metrics.provider(provider.name)

    # --- the published state ------------------------------------------------------------------------

    def install(self, state: KeyState) -> None:
        """Take a newly published state. Kids no longer trusted are dropped from the token cache at once."""
        if not state.keys_equal(self.state):
            now = self.clock.monotonic()
            before = self.keys.trusted_prints(now)
            keys = restore(state, self.cfg.key_retention, self._allowed, self.provider.revoked_kids)
            keys.on_drop = self._dropped
            self.keys = keys
            for thumbprint in before - keys.trusted_prints(now):
                self.on_drop(thumbprint)
        self.state = state
        self.update_gauges()

    def _dropped(self, thumbprint: str) -> None:
        self.on_drop(thumbprint)

    @property
    def fetched_at(self) -> float | None:
        return self.state.fetched_at

    @property
    def last_error(self) -> str | None:
        return self.state.last_error

    # --- what requests ask -------------------------------------------------------------------------

    def usable(self) -> bool:
        """Keys exist and are no older than refresh + max_stale (stale-if-error bound)."""
        fetched = self.state.fetched_at
        if fetched is None or not len(self.keys):
            return False
        if self.provider.jwks_file:
            return True
        return self.clock.monotonic() - fetched <= self.state.fresh_for + self.cfg.max_stale

    def key_for(self, kid: str | None) -> Key | None:
        if kid is None:
            return self.keys.only_key()
        return self.keys.get(kid, self.clock.monotonic())

    def trusted(self, kid: str | None) -> bool:
        return self.key_for(kid) is not None

    def stale_seconds(self) -> float:
        fetched = self.state.fetched_at
        if fetched is None or self.provider.jwks_file:
            return 0.0
        return max(0.0, self.clock.monotonic() - fetched - self.state.fresh_for)

    async def refetch_unknown_kid(self, kid: str | None) -> bool:
        """Ask the pod's fetcher for a fresh set; True if the kid is known afterwards. Asks of one burst in
        this worker share one question; while the fetcher's cooldown lasts they are not asked at all."""
        if self.provider.jwks_file is not None or self.ask is None:
            return self.trusted(kid)
        if self.clock.monotonic() < self._suppressed_until:
            self.metrics.jwks_refetches.labels(self.provider.name, "suppressed").inc()
            return False
        if self._asking is None:
            self._asking = asyncio.ensure_future(self._ask_refetch())
            self._asking.add_done_callback(self._asked)
        until = await asyncio.shield(self._asking)
        if self.trusted(kid):
            return True  # suppressed or not: a fetch another worker asked for may have brought the key
        if until is not None:
            self.metrics.jwks_refetches.labels(self.provider.name, "suppressed").inc()
        return False

    async def _ask_refetch(self) -> float | None:
        assert self.ask is not None
        answer = await self.ask(self.provider.name, "refetch")
        until = answer.get("suppressed_until")
        if until is not None:
            self._suppressed_until = float(until)
            return float(until)
        return None

    def _asked(self, _: asyncio.Future[float | None]) -> None:
        self._asking = None

    # --- admin --------------------------------------------------------------------------------------

    async def refresh(self) -> dict[str, Any]:
        """Fetch now (by the pod's fetcher); the new state has reached this worker when this returns."""
        assert self.ask is not None
        answer = await self.ask(self.provider.name, "refresh")
        ok = bool(answer.get("ok"))
        return {
            "ok": ok,
            "refreshed": ok,
            **({"error": answer["error"]} if "error" in answer else {}),
            **self.describe(),
        }

    async def revoke(self, kid: str) -> dict[str, Any]:
        assert self.ask is not None
        answer = await self.ask(self.provider.name, "revoke", kid)
        return {
            "was_trusted": bool(answer.get("was_trusted")),
            **({"error": answer["error"]} if "error" in answer else {}),
        }

    # --- gauges and the admin listing ---------------------------------------------------------------

    def update_gauges(self) -> None:
        """Key-set gauges from the shared state: equal in every worker. Expires retired keys."""
        m, name, st = self.metrics, self.provider.name, self.state
        now = self.clock.monotonic()
        self.keys.expire(now)
        m.jwks_age.labels(name).set(0.0 if st.fetched_at is None else now - st.fetched_at)
        m.jwks_stale.labels(name).set(self.stale_seconds())
        m.jwks_keys.labels(name).set(len(self.keys))
        m.clock_skew.labels(name).set(st.skew or 0)
        m.jwks_last_success.labels(name).set(st.fetched_wall or 0)  # 0: never (the series exists from start)
        m.jwks_last_change.labels(name).set(st.changed_wall or 0)

    def describe(self) -> dict[str, Any]:
        now = self.clock.monotonic()
        fetched = self.state.fetched_at
        return {
            "provider": self.provider.name,
            "issuer": self.provider.issuer,
            **(
                {"jwks_file": self.provider.jwks_file}
                if self.provider.jwks_file
                else {"jwks_url": self.state.jwks_url or self.provider.jwks_url}
            ),
            "usable": self.usable(),
            "age_seconds": None if fetched is None else round(now - fetched, 1),
            "stale_seconds": round(self.stale_seconds(), 1),
            "last_error": self.state.last_error,
            "keys": self.keys.describe(now),
        }
