"""Getting a provider's keys and keeping them: fetch, refresh, single-flight refetch, stale-if-error.

One `ProviderKeys` per provider per pod: the only writer of that provider's key state. It runs in the
keys process (several workers) or next to the only worker, and publishes every change as a `KeyState`
(`sidecar.keys.state`); requests read that state through a `KeyView` and never fetch. The network is
touched by the background refresher and, rate-limited across the pod, by a worker's unknown-kid ask.
Decisions read the injected clock, so tests drive refresh, staleness and cooldown by moving a fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

from sidecar.clock import Clock
from sidecar.config import Jwks, Provider
from sidecar.jwks import InvalidJwks, KeySet, parse_jwks
from sidecar.keys.state import KeyState, published, restore
from sidecar.keysource import FetchError, KeySource
from sidecar.metrics import Metrics

log = logging.getLogger("sidecar.jwks")


class ProviderKeys:
    def __init__(
        self,
        provider: Provider,
        cfg: Jwks,
        clock: Clock,
        metrics: Metrics,
        session: aiohttp.ClientSession | None,
        publish: Callable[[KeyState], object] = lambda _state: None,
    ) -> None:
        self.provider = provider
        self.cfg = cfg
        self.clock = clock
        self.metrics = metrics
        self.session = session
        self.source = KeySource(provider, cfg.max_bytes, cfg.fetch_timeout)
        self.publish = publish  # told of every change; delivers it to every worker
        self.keys = KeySet(cfg.key_retention, provider.revoked_kids)
        self.jwks_url = provider.jwks_url
        self.fetched_at: float | None = None  # monotonic time of the last successful fetch
        self.fetched_wall: float | None = None
        self.changed_wall: float | None = None
        self.fresh_for = cfg.refresh  # this set's refresh interval (Cache-Control bounded)
        self.last_error: str | None = None
        self.skew: float | None = None
        self._inflight: asyncio.Task[bool] | None = None
        self._last_refetch: float | None = None
        self._deferred = False  # an unknown-kid refetch was suppressed: run one when the cooldown ends
        self._next_refresh_at = 0.0  # monotonic; set after every refresh attempt (with jitter)
        self._wake = asyncio.Event()
        self._allowed = frozenset(provider.algorithms)

    # --- the published state ------------------------------------------------------------------------

    def state(self) -> KeyState:
        current, retired, revoked = published(self.keys)
        return KeyState(
            provider=self.provider.name,
            current=current,
            retired=retired,
            revoked=revoked,
            fetched_at=self.fetched_at,
            fetched_wall=self.fetched_wall,
            changed_wall=self.changed_wall,
            fresh_for=self.fresh_for,
            last_error=self.last_error,
            jwks_url=None if self.provider.jwks_file else self.jwks_url,
            skew=self.skew,
            next_refresh_at=self._next_refresh_at,
            last_refetch=self._last_refetch,
            deferred=self._deferred,
        )

    def _changed(self) -> None:
        self.publish(self.state())

    def resume(self, state: KeyState) -> None:
        """Take over a state published before this fetcher started (the previous one died): keys, fetch
        time, schedule and cooldown, so a restart costs no fetch and stretches no bound."""
        self.keys = restore(state, self.cfg.key_retention, self._allowed, self.provider.revoked_kids)
        self.fetched_at, self.fetched_wall, self.changed_wall = state.fetched_at, state.fetched_wall, state.changed_wall
        self.fresh_for = state.fresh_for or self.cfg.refresh
        self.last_error = state.last_error
        self.skew = state.skew
        if state.jwks_url and not self.provider.jwks_file:
            self.jwks_url = state.jwks_url
        self._next_refresh_at = state.next_refresh_at
        self._last_refetch = state.last_refetch
        self._deferred = state.deferred

    def _schedule_refresh(self) -> None:
        """Next background refresh: the set's lifetime, or a shorter retry after a failure; ±10 % jitter so
        a fleet of pods does not fetch at once."""
        base = self.fresh_for if self.last_error is None else min(self.fresh_for, max(5.0, self.cfg.refetch_cooldown))
        self._next_refresh_at = self.clock.monotonic() + base * random.uniform(0.9, 1.0)

    def next_refresh_in(self) -> float:
        return max(0.0, self._next_refresh_at - self.clock.monotonic())

    def deferred_refetch_in(self) -> float | None:
        """Seconds until the deferred unknown-kid refetch may run, or None when none is pending."""
        if not self._deferred or self._last_refetch is None:
            return None
        return max(0.0, self._last_refetch + self.cfg.refetch_cooldown - self.clock.monotonic())

    # --- fetching -----------------------------------------------------------------------------------

    async def refresh(self) -> bool:
        """Fetch once and install the keys. On any failure the last good keys stay. True on success."""
        name = self.provider.name
        try:
            doc, max_age = await self._load()
            keys, ignored = parse_jwks(doc, self._allowed)
        except FetchError as e:
            return self._failed(e.result, str(e))
        except InvalidJwks as e:
            for reason, n in e.ignored.items():  # an all-ignored set is still counted
                self.metrics.jwks_keys_ignored.labels(name, reason).inc(n)
            return self._failed("invalid", str(e))
        now = self.clock.monotonic()
        changed = self.keys.replace(keys, now)
        self.fetched_at = now
        self.fetched_wall = wall = self.clock.now()
        self.last_error = None
        if max_age is not None:
            self.fresh_for = min(max(float(max_age), self.cfg.min_refresh), self.cfg.max_refresh)
        self._schedule_refresh()
        m = self.metrics
        m.jwks_fetches.labels(name, "success").inc()
        for reason, n in ignored.items():
            m.jwks_keys_ignored.labels(name, reason).inc(n)
        if changed or self.changed_wall is None:
            self.changed_wall = wall
        if changed:
            log.info(
                "jwks keys changed",
                extra={"provider": name, "kids": [k["kid"] for k in self.keys.describe(now)]},
            )
        self._changed()
        return True

    def _failed(self, result: str, detail: str) -> bool:
        self.metrics.jwks_fetches.labels(self.provider.name, result).inc()
        self.last_error = detail
        self._schedule_refresh()
        log.warning(
            "jwks fetch failed; keeping last good keys" if self.fetched_at is not None else "jwks fetch failed",
            extra={"provider": self.provider.name, "error": detail},
        )
        self._changed()
        return False

    async def refetch(self) -> float | None:
        """An unknown kid was seen by some worker: one shared fetch for a burst, at most once per cooldown.

        None once the fetch ran (or was joined); else the monotonic time the cooldown ends (suppressed)."""
        if self._inflight is None:
            now = self.clock.monotonic()
            if self._last_refetch is not None and now - self._last_refetch < self.cfg.refetch_cooldown:
                # A real rotation may hide behind a bogus kid that used up the cooldown: one deferred
                # refetch runs when it ends, so a new key is learned within the cooldown at worst.
                if not self._deferred:
                    self._deferred = True
                    self._wake.set()
                    self._changed()  # kept in the published state: a restarted fetcher still owes it
                return self._last_refetch + self.cfg.refetch_cooldown
            self._start_refetch(now)
        assert self._inflight is not None
        await asyncio.shield(self._inflight)
        return None

    def _start_refetch(self, now: float) -> None:
        self._last_refetch = now
        self._deferred = False
        self.metrics.jwks_refetches.labels(self.provider.name, "fetched").inc()
        self._inflight = asyncio.ensure_future(self.refresh())
        self._inflight.add_done_callback(self._clear_inflight)

    async def run_deferred_refetch(self) -> bool:
        """The suppressed refetch, once the cooldown is over (called by `keep_fresh`)."""
        if self._inflight is None:
            self._start_refetch(self.clock.monotonic())
        assert self._inflight is not None
        return await asyncio.shield(self._inflight)

    def _clear_inflight(self, _: asyncio.Task[bool]) -> None:
        self._inflight = None

    def revoke(self, kid: str) -> bool:
        """Distrust a key at once, for every worker. True when it was trusted."""
        found = bool(self.keys.revoke(kid))
        log.warning("key revoked by admin", extra={"provider": self.provider.name, "kid": kid[:64]})
        self._changed()
        return found

    async def _load(self) -> tuple[Any, int | None]:
        if self.provider.jwks_file:
            try:
                with open(self.provider.jwks_file, "rb") as f:
                    raw = f.read(self.cfg.max_bytes + 1)
            except OSError as e:
                raise FetchError("refused", f"cannot read {self.provider.jwks_file}: {e.strerror}") from None
            if len(raw) > self.cfg.max_bytes:
                raise FetchError("invalid", f"JWKS file larger than {self.cfg.max_bytes} bytes")
            return _json(raw), None
        if self.jwks_url is None:
            discovery = self.provider.issuer.rstrip("/") + "/.well-known/openid-configuration"
            meta, _ = await self._get(discovery)
            if not isinstance(meta, dict) or meta.get("issuer") != self.provider.issuer:
                raise FetchError("invalid", "discovery document's issuer does not match the configured issuer")
            uri = meta.get("jwks_uri")
            if not isinstance(uri, str) or not uri.startswith(("https://", "http://")):
                raise FetchError("invalid", "discovery document has no usable jwks_uri")
            self.jwks_url = uri
        return await self._get(self.jwks_url)

    async def _get(self, url: str) -> tuple[Any, int | None]:
        assert self.session is not None
        body, max_age = await self.source.get(self.session, url, self._observe_date)
        return _json(body), max_age

    def _observe_date(self, date: str | None) -> None:
        """This host's clock minus the IdP's, from the response `Date` (1 s resolution); published with the
        next state, and exported by every worker."""
        if not date:
            return
        try:
            theirs = parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError, IndexError):
            return
        self.skew = round(self.clock.now() - theirs)

    # --- background lifecycle -----------------------------------------------------------------------

    async def keep_fresh(self, recheck: float | None = None) -> None:
        """First fetch with backoff and jitter until it succeeds (unless a resumed state has keys), then
        refresh before expiry, forever; also runs a deferred unknown-kid refetch as soon as its cooldown
        ends. `recheck` bounds each wait, for a clock that can jump (the test clock of a whole pod)."""
        delay = 0.5
        if self.fetched_at is None:
            while not await self.refresh():
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 30.0)
        while True:
            self._wake.clear()
            deferred = self.deferred_refetch_in()
            wait = self.next_refresh_in() if deferred is None else min(deferred, self.next_refresh_in())
            if recheck is not None:
                wait = min(wait, recheck)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)
            await self.tick()

    async def tick(self) -> None:
        """Do whatever is due now: the deferred refetch, or the background refresh."""
        deferred = self.deferred_refetch_in()
        if deferred is not None and deferred <= 0:
            await self.run_deferred_refetch()
        elif self.next_refresh_in() <= 0 and self._inflight is None:
            await self.refresh()


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise FetchError("invalid", "response is not JSON") from None
