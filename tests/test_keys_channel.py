"""The keys channel in one process: a hub behind a real Unix socket, views as two workers would hold them,
a real JWKS server, and a fake clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sidecar.clock import FakeClock
from sidecar.config import Config, load
from sidecar.devtools.issuer import DevIssuer, new_key
from sidecar.keys.channel import HubServer, SocketChannel, line_limit
from sidecar.keys.hub import KeyHub
from sidecar.keys.process import socket_path
from sidecar.keys.state import KeyState, StateFile
from sidecar.keys.view import KeyView
from sidecar.metrics import Metrics
from tests.conftest import AUDIENCE

COOLDOWN = 30


def config(issuer: DevIssuer) -> Config:
    return load(
        {
            "upstream": "http://127.0.0.1:9",
            "providers": [{"issuer": issuer.issuer, "audiences": [AUDIENCE], "jwks_url": f"{issuer.issuer}/jwks.json"}],
            "jwks": {"refetch_cooldown": COOLDOWN},
        }
    )


@dataclass
class Pod:
    cfg: Config
    clock: FakeClock
    directory: str
    hub: KeyHub
    server: HubServer

    async def worker(self) -> tuple[KeyView, SocketChannel]:
        view = KeyView(self.cfg.providers[0], self.cfg.jwks, self.clock, Metrics())
        channel = SocketChannel(socket_path(self.directory), [view], 5.0, line_limit(self.cfg.jwks.max_bytes))
        for state in StateFile(self.directory).read().values():
            channel.install(state)
        await channel.start()
        await asyncio.wait_for(channel.connected.wait(), 5)
        return view, channel

    async def restart_hub(self) -> None:
        await self.server.close()
        await self.hub.close()
        self.hub, self.server = await start_hub(self.cfg, self.clock, self.directory)


async def start_hub(cfg: Config, clock: FakeClock, directory: str) -> tuple[KeyHub, HubServer]:
    hub = KeyHub(cfg, clock, Metrics())
    state_file = StateFile(directory)
    hub.resume(state_file.read())
    server = HubServer(hub, socket_path(directory), state_file, line_limit(cfg.jwks.max_bytes))
    await server.start()
    await hub.start()
    return hub, server


@pytest.fixture
async def pod(fresh_issuer: DevIssuer, tmp_path: Path) -> AsyncIterator[Pod]:
    cfg = config(fresh_issuer)
    clock = FakeClock(time.time())
    hub, server = await start_hub(cfg, clock, str(tmp_path))
    p = Pod(cfg, clock, str(tmp_path), hub, server)
    for _ in range(200):
        if hub.fetchers[0].fetched_at is not None:
            break
        await asyncio.sleep(0.02)
    yield p
    await p.server.close()
    await p.hub.close()


async def test_a_worker_has_the_keys_before_its_unknown_kid_ask_is_answered(pod: Pod, fresh_issuer: DevIssuer) -> None:
    a, _ = await pod.worker()
    b, _ = await pod.worker()
    assert a.usable() and b.usable()
    new = fresh_issuer.rotate()
    assert await a.refetch_unknown_kid(new.kid) is True
    assert fresh_issuer.jwks_fetches == 2
    await asyncio.sleep(0.05)  # b was sent the same state
    assert b.trusted(new.kid) and b.state.fetched_at == a.state.fetched_at


async def test_cooldown_and_the_deferred_refetch_hold_across_workers(pod: Pod, fresh_issuer: DevIssuer) -> None:
    a, _ = await pod.worker()
    b, _ = await pod.worker()
    assert await a.refetch_unknown_kid("bogus") is False  # fetched: the cooldown starts
    assert fresh_issuer.jwks_fetches == 2
    new = fresh_issuer.rotate()
    pod.clock.advance(5)
    assert await b.refetch_unknown_kid(new.kid) is False  # the other worker: suppressed, deferred
    assert await b.refetch_unknown_kid("other") is False  # answered by b itself until the cooldown ends
    assert (
        b.metrics.registry.get_sample_value(
            "sidecar_jwks_unknown_kid_refetches_total", {"provider": "default", "outcome": "suppressed"}
        )
        == 2
    )
    fetcher = pod.hub.fetchers[0]
    assert fetcher.deferred_refetch_in() == COOLDOWN - 5
    pod.clock.advance(COOLDOWN - 5)
    await fetcher.tick()
    await asyncio.sleep(0.05)
    assert fresh_issuer.jwks_fetches == 3 and a.trusted(new.kid) and b.trusted(new.kid)


async def test_a_new_worker_reads_the_current_state_from_the_file_without_the_hub(
    pod: Pod, fresh_issuer: DevIssuer
) -> None:
    await pod.server.close()  # the keys process is away
    view = KeyView(pod.cfg.providers[0], pod.cfg.jwks, pod.clock, Metrics())
    for state in StateFile(pod.directory).read().values():
        view.install(state)
    assert view.usable() and view.trusted(fresh_issuer.signing.kid)
    assert view.state.fetched_at == pod.hub.fetchers[0].fetched_at
    assert fresh_issuer.jwks_fetches == 1


async def test_a_restarted_hub_resumes_keys_fetch_time_schedule_and_cooldown_without_a_fetch(
    pod: Pod, fresh_issuer: DevIssuer
) -> None:
    a, channel = await pod.worker()
    assert await a.refetch_unknown_kid("bogus") is False
    pod.clock.advance(5)
    assert await a.refetch_unknown_kid("bogus2") is False  # suppressed: a deferred refetch is owed
    before = pod.hub.fetchers[0].state()
    await pod.restart_hub()
    after = pod.hub.fetchers[0].state()
    assert fresh_issuer.jwks_fetches == 2
    assert after.fetched_at == before.fetched_at and after.current == before.current
    assert pod.hub.fetchers[0].deferred_refetch_in() == COOLDOWN - 5
    assert abs(pod.hub.fetchers[0].next_refresh_in() - (before.next_refresh_at - pod.clock.monotonic())) < 1e-6
    channel.connected.clear()
    await asyncio.wait_for(channel.connected.wait(), 5)  # the worker reconnected by itself
    assert a.state.fetched_at == before.fetched_at


async def test_asks_while_the_hub_is_away_are_answered_at_once_and_the_keys_stay(
    pod: Pod, fresh_issuer: DevIssuer
) -> None:
    a, _ = await pod.worker()
    await pod.server.close()
    await asyncio.sleep(0.2)
    started = time.monotonic()
    assert await a.refetch_unknown_kid(new_key().kid) is False
    assert time.monotonic() - started < 1
    assert "error" in await a.revoke(fresh_issuer.signing.kid)
    assert a.usable() and a.trusted(fresh_issuer.signing.kid)


async def test_a_revocation_drops_the_kid_in_every_worker_and_survives_a_hub_restart(
    pod: Pod, fresh_issuer: DevIssuer
) -> None:
    old = fresh_issuer.signing
    fresh_issuer.rotate()
    await pod.hub.fetchers[0].refresh()
    a, _ = await pod.worker()
    b, _ = await pod.worker()
    dropped: list[str] = []
    b.on_drop = dropped.append
    old_key = b.key_for(old.kid)
    assert old_key is not None
    assert (await a.revoke(old.kid))["was_trusted"] is True
    await asyncio.sleep(0.05)
    # tokens are cached by the key that verified them: the key's identity (its thumbprint) is dropped
    assert not a.trusted(old.kid) and not b.trusted(old.kid) and dropped == [old_key.thumbprint]
    await pod.restart_hub()
    await pod.hub.fetchers[0].refresh()  # the IdP still publishes it
    await asyncio.sleep(0.05)
    assert not b.trusted(old.kid)


def test_a_state_survives_its_json_form() -> None:
    state = KeyState(
        provider="p",
        current=({"kty": "OKP", "kid": "a"},),
        retired=(({"kty": "OKP", "kid": "b"}, 12.5),),
        revoked=("c",),
        fetched_at=1.0,
        skew=-3,
        deferred=True,
    )
    assert KeyState.from_json(state.to_json()) == state


async def test_the_keys_process_exits_to_be_restarted_when_a_refresher_stops(
    fresh_issuer: DevIssuer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sidecar.fetcher import ProviderKeys
    from sidecar.keys.process import _serve

    async def broken(self: ProviderKeys, recheck: float | None = None) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(ProviderKeys, "keep_fresh", broken)
    served: list[bool] = []
    code = await asyncio.wait_for(
        _serve(config(fresh_issuer), str(tmp_path), lambda: served.append(True), FakeClock()), 10
    )
    assert code == 1 and served == [True]
