"""Getting a provider's keys and keeping them: fetch, refresh, single-flight refetch, stale-if-error.

One `ProviderKeys` per provider. Requests only read it (`key_for`, `usable`); the network is touched by
the background refresher and, rate-limited, by a token carrying an unknown kid. Decisions read the
injected clock, so tests drive refresh, staleness and cooldown by moving a fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

from sidecar.clock import Clock
from sidecar.config import Jwks, Provider
from sidecar.jwks import InvalidJwks, Key, KeySet, parse_jwks
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
    ) -> None:
        self.provider = provider
        self.cfg = cfg
        self.clock = clock
        self.metrics = metrics
        self.session = session
        self.source = KeySource(provider, cfg.max_bytes, cfg.fetch_timeout)
        self.keys = KeySet(cfg.key_retention, provider.revoked_kids)
        self.jwks_url = provider.jwks_url
        self.fetched_at: float | None = None  # monotonic time of the last successful fetch
        self.fresh_for = cfg.refresh  # this set's refresh interval (Cache-Control bounded)
        self.last_error: str | None = None
        self._inflight: asyncio.Task[bool] | None = None
        self._last_refetch: float | None = None
        self._deferred = False  # an unknown-kid refetch was suppressed: run one when the cooldown ends
        self._next_refresh_at = 0.0  # monotonic; set after every refresh attempt (with jitter)
        self._wake = asyncio.Event()
        self._allowed = frozenset(provider.algorithms)
        metrics.provider(provider.name)

    # --- what requests ask -------------------------------------------------------------------------

    def usable(self) -> bool:
        """Keys exist and are no older than refresh + max_stale (stale-if-error bound)."""
        if self.fetched_at is None or not len(self.keys):
            return False
        if self.provider.jwks_file:
            return True
        return self.clock.monotonic() - self.fetched_at <= self.fresh_for + self.cfg.max_stale

    def key_for(self, kid: str | None) -> Key | None:
        if kid is None:
            return self.keys.only_key()
        return self.keys.get(kid, self.clock.monotonic())

    def trusted(self, kid: str | None) -> bool:
        return self.key_for(kid) is not None

    def stale_seconds(self) -> float:
        if self.fetched_at is None or self.provider.jwks_file:
            return 0.0
        return max(0.0, self.clock.monotonic() - self.fetched_at - self.fresh_for)

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
        self.last_error = None
        if max_age is not None:
            self.fresh_for = min(max(float(max_age), self.cfg.min_refresh), self.cfg.max_refresh)
        self._schedule_refresh()
        m = self.metrics
        m.jwks_fetches.labels(name, "success").inc()
        for reason, n in ignored.items():
            m.jwks_keys_ignored.labels(name, reason).inc(n)
        m.jwks_keys.labels(name).set(len(self.keys))
        wall = self.clock.now()
        m.jwks_last_success.labels(name).set(wall)
        if changed:
            m.jwks_last_change.labels(name).set(wall)
            log.info(
                "jwks keys changed",
                extra={"provider": name, "kids": [k["kid"] for k in self.keys.describe(now)]},
            )
        return True

    def _failed(self, result: str, detail: str) -> bool:
        self.metrics.jwks_fetches.labels(self.provider.name, result).inc()
        self.last_error = detail
        self._schedule_refresh()
        log.warning(
            "jwks fetch failed; keeping last good keys",
            extra={"provider": self.provider.name, "error": detail},
        )
        return False

    async def refetch_unknown_kid(self, kid: str | None) -> bool:
        """One shared fetch for a burst of unknown kids, at most once per cooldown. True if kid is now known."""
        if self.provider.jwks_file is None:
            if self._inflight is None:
                now = self.clock.monotonic()
                if self._last_refetch is not None and now - self._last_refetch < self.cfg.refetch_cooldown:
                    self.metrics.jwks_refetches.labels(self.provider.name, "suppressed").inc()
                    # A real rotation may hide behind a bogus kid that used up the cooldown: one deferred
                    # refetch runs when it ends, so a new key is learned within the cooldown at worst.
                    self._deferred = True
                    self._wake.set()
                    return False
                self._start_refetch(now)
            assert self._inflight is not None
            await asyncio.shield(self._inflight)
        return self.trusted(kid)

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
        """This host's clock minus the IdP's, from the response `Date` (1 s resolution)."""
        if not date:
            return
        try:
            theirs = parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError, IndexError):
            return
        self.metrics.clock_skew.labels(self.provider.name).set(round(self.clock.now() - theirs))

    # --- background lifecycle -----------------------------------------------------------------------

    async def keep_fresh(self) -> None:
        """First fetch with backoff and jitter until it succeeds, then refresh before expiry, forever;
        also runs a deferred unknown-kid refetch as soon as its cooldown ends."""
        delay = 0.5
        while not await self.refresh():
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 30.0)
        while True:
            self._wake.clear()
            deferred = self.deferred_refetch_in()
            wait = self.next_refresh_in() if deferred is None else min(deferred, self.next_refresh_in())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)
            await self.tick()

    async def tick(self) -> None:
        """Do whatever is due now: the deferred refetch, or the background refresh."""
        deferred = self.deferred_refetch_in()
        if deferred is not None and deferred <= 0:
            await self.run_deferred_refetch()
        elif self.next_refresh_in() <= 0:
            await self.refresh()

    def update_gauges(self) -> None:
        name = self.provider.name
        age = 0.0 if self.fetched_at is None else self.clock.monotonic() - self.fetched_at
        self.metrics.jwks_age.labels(name).set(age)
        self.metrics.jwks_stale.labels(name).set(self.stale_seconds())
        self.keys.expire(self.clock.monotonic())
        self.metrics.jwks_keys.labels(name).set(len(self.keys))

    def describe(self) -> dict[str, Any]:
        now = self.clock.monotonic()
        return {
            "provider": self.provider.name,
            "issuer": self.provider.issuer,
            **({"jwks_file": self.provider.jwks_file} if self.provider.jwks_file else {"jwks_url": self.jwks_url}),
            "usable": self.usable(),
            "age_seconds": None if self.fetched_at is None else round(now - self.fetched_at, 1),
            "stale_seconds": round(self.stale_seconds(), 1),
            "last_error": self.last_error,
            "keys": self.keys.describe(now),
        }


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise FetchError("invalid", "response is not JSON") from None
