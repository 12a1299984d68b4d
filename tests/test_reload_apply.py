"""Reload inside one process: validation, the swap, what is kept, and /admin/config (in-process, real
issuer and app on 127.0.0.1, the injected clock)."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from sidecar.app import STATE, apply_config
from sidecar.cli import parser
from sidecar.config import load
from sidecar.devtools.issuer import DevIssuer
from sidecar.reload import ConfigSource, Reloader, config_hash, fingerprint, pinned, restart_needed
from tests.conftest import AUDIENCE, ORIGIN, InProc, MakeSidecar, Upstream


def raw_config(issuer: DevIssuer, upstream: Upstream, **over: Any) -> dict[str, Any]:
    return {
        "upstream": upstream.url,
        "providers": [{"issuer": issuer.issuer, "audiences": [AUDIENCE], "jwks_url": f"{issuer.issuer}/jwks.json"}],
        "leeway": 60,
        "expired_grace": 300,
        "public_paths": ["/public"],
        "claim_headers": {"X-Auth-Subject": "sub"},
        "cors": {"origins": [ORIGIN]},
        **over,
    }


def apps(sc: InProc) -> list[web.Application]:
    return [sc.client.server.app, sc.admin.server.app]


def reloader_for(sc: InProc, path: Path) -> Reloader:
    source = ConfigSource(parser().parse_args(["run", "--config", str(path)]), {})
    return Reloader(source, sc.state.cfg, functools.partial(apply_config, apps(sc)), sc.state.metrics, True)


def test_restart_only_keys_are_named_and_kept_at_their_running_values() -> None:
    base = {"providers": [{"issuer": "https://idp", "audiences": ["a"], "jwks_url": "https://idp/k"}]}
    running = load(base)
    new = load({**base, "listen": "0.0.0.0:9000", "workers": 4, "leeway": 5, "jwks": {"max_bytes": 4096}})
    assert restart_needed(running, new) == ["listen", "workers", "jwks.max_bytes"]
    kept = pinned(running, new)
    assert (kept.listen, kept.workers, kept.jwks.max_bytes, kept.leeway) == (running.listen, 0, 1_048_576, 5)
    assert restart_needed(running, kept) == []
    assert config_hash(kept) != config_hash(running) and config_hash(load(base)) == config_hash(running)


def test_fingerprint_follows_symlinks_and_names_an_unreadable_file(tmp_path: Path) -> None:
    target = tmp_path / "a.yaml"
    target.write_text("leeway: 1\n")
    link = tmp_path / "link.yaml"
    link.symlink_to(target)
    assert fingerprint(str(link)) == fingerprint(str(target))
    target.unlink()
    assert fingerprint(str(link)).startswith("unreadable")


async def test_in_flight_requests_finish_under_the_old_config_and_new_ones_see_the_new(
    make_sidecar: MakeSidecar, fresh_issuer: DevIssuer, upstream: Upstream, tmp_path: Path
) -> None:
    sc = await make_sidecar(fresh_issuer)
    expired = fresh_issuer.mint(now=sc.clock.now() - 420)  # 120 s past exp: inside grace
    slow = asyncio.ensure_future(sc.get("/api/slow?echo_sleep=0.5", expired))
    await asyncio.sleep(0.2)
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(raw_config(fresh_issuer, upstream, expired_grace=0)))
    before = sc.client.server.app[STATE]
    assert await reloader_for(sc, path).reload("test")
    after = sc.client.server.app[STATE]
    assert after is not before and sc.admin.server.app[STATE] is after
    assert (await slow).status == 200  # admitted under the old grace, finished after the swap
    assert (await sc.get("/api/x", expired)).status == 401
    assert after.keys[0] is before.keys[0]  # unchanged key source: the same keys
    assert after.verifier.cache is before.verifier.cache  # a grace change leaves every entry right


async def test_a_leeway_change_keeps_the_token_cache_and_an_audience_change_starts_a_new_one(
    make_sidecar: MakeSidecar, fresh_issuer: DevIssuer, upstream: Upstream, tmp_path: Path
) -> None:
    sc = await make_sidecar(fresh_issuer)
    token = fresh_issuer.mint()
    assert (await sc.get("/api/x", token)).status == 200
    path = tmp_path / "sidecar.yaml"
    reloader = reloader_for(sc, path)
    cache = sc.client.server.app[STATE].verifier.cache
    assert len(cache) == 1
    path.write_text(yaml.safe_dump(raw_config(fresh_issuer, upstream, leeway=30)))
    assert await reloader.reload("test")
    assert sc.client.server.app[STATE].verifier.cache is cache
    assert (await sc.get("/api/x", token)).status == 200
    assert sc.metric("sidecar_token_cache_lookups_total", result="hit") == 1
    wider = raw_config(fresh_issuer, upstream, leeway=30)
    wider["providers"][0]["audiences"] = [AUDIENCE, "billing"]
    path.write_text(yaml.safe_dump(wider))
    assert await reloader.reload("test")
    assert sc.client.server.app[STATE].verifier.cache is not cache
    assert fresh_issuer.jwks_fetches == 1  # neither change touched the key source


async def test_the_first_look_applies_an_edit_made_while_starting_once_and_the_watch_does_not_apply_it_again(
    make_sidecar: MakeSidecar, fresh_issuer: DevIssuer, upstream: Upstream, tmp_path: Path
) -> None:
    """A worker looks at its file before /readyz answers (app.run_until_signal): an edit that landed while it
    started is in force when it is ready, and the watch that follows counts it as seen."""
    sc = await make_sidecar(fresh_issuer)
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(raw_config(fresh_issuer, upstream, leeway=30)))
    reloader = reloader_for(sc, path)
    await reloader.first_look()
    assert sc.client.server.app[STATE].cfg.leeway == 30
    assert sc.metric("sidecar_config_reloads_total", result="ok") == 1
    await reloader.first_look()  # once: the watch starts with it
    watch = asyncio.create_task(reloader.run())
    await asyncio.sleep(0.05)
    watch.cancel()
    await asyncio.gather(watch, return_exceptions=True)
    assert sc.metric("sidecar_config_reloads_total", result="ok") == 1


async def test_a_refused_config_changes_nothing_and_is_counted(
    make_sidecar: MakeSidecar, fresh_issuer: DevIssuer, upstream: Upstream, tmp_path: Path
) -> None:
    sc = await make_sidecar(fresh_issuer)
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(raw_config(fresh_issuer, upstream, leeway="-5")))
    state = sc.client.server.app[STATE]
    reloader = reloader_for(sc, path)
    assert not await reloader.reload("test")
    assert sc.client.server.app[STATE] is state
    assert sc.metric("sidecar_config_reloads_total", result="error") == 1
    assert sc.metric("sidecar_config_reloads_total", result="ok") == 0
    shown = await (await sc.admin.get("/admin/config")).json()
    assert shown["hash"] == config_hash(state.cfg) and shown["generation"] == 1


async def test_a_changed_key_source_is_fetched_before_it_takes_over(
    make_sidecar: MakeSidecar, fresh_issuer: DevIssuer, upstream: Upstream, tmp_path: Path
) -> None:
    sc = await make_sidecar(fresh_issuer)
    token = fresh_issuer.mint()
    path = tmp_path / "sidecar.yaml"
    moved = raw_config(fresh_issuer, upstream)
    moved["providers"][0]["jwks_url"] = f"{fresh_issuer.issuer}/jwks.json?moved=1"
    path.write_text(yaml.safe_dump(moved))
    old_view = sc.client.server.app[STATE].keys[0]
    assert await reloader_for(sc, path).reload("test")
    view = sc.client.server.app[STATE].keys[0]
    assert view is not old_view and view.usable()
    assert view.state.jwks_url is not None and view.state.jwks_url.endswith("?moved=1")
    assert fresh_issuer.jwks_fetches == 2
    assert (await sc.get("/api/x", token)).status == 200
    hub = sc.state.channel.hub  # type: ignore[union-attr]
    assert [f.provider.jwks_url for f in hub.fetchers] == [moved["providers"][0]["jwks_url"]]
    assert len(hub.tasks) == 1


async def test_admin_config_shows_the_effective_config_with_the_admin_access_rules(
    make_sidecar: MakeSidecar, fresh_issuer: DevIssuer, upstream: Upstream, tmp_path: Path
) -> None:
    sc = await make_sidecar(fresh_issuer)
    r = await sc.admin.get("/admin/config")
    assert r.status == 200
    body = await r.json()
    assert body["config"]["expired_grace"] == 300 and body["reload"] is True
    assert body["hash"] == config_hash(sc.state.cfg) and body["pending_restart"] == []
    assert (await sc.admin.get("/admin/config", headers={"Host": "evil.example"})).status == 403
    assert (await sc.admin.get("/admin/config", headers={"Origin": "http://evil.example"})).status == 403
    closed = await make_sidecar(fresh_issuer, admin_actions="off")
    r = await closed.admin.get("/admin/config")
    assert r.status == 403 and (await r.json())["reason"] == "admin_actions_disabled"


@pytest.mark.parametrize("trigger", ["file", "hangup"])
async def test_the_watcher_applies_a_changed_file_and_a_hangup(
    make_sidecar: MakeSidecar, fresh_issuer: DevIssuer, upstream: Upstream, tmp_path: Path, trigger: str
) -> None:
    sc = await make_sidecar(fresh_issuer)
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(raw_config(fresh_issuer, upstream)))
    assert await reloader_for(sc, path).reload("test")  # the process now runs what the file says
    reloader = reloader_for(sc, path)
    task = asyncio.create_task(reloader.run())
    try:
        await asyncio.sleep(0.1)  # the watcher's first look: the file holds the running config
        assert sc.metric("sidecar_config_reloads_total", result="ok") == 1
        path.write_text(yaml.safe_dump(raw_config(fresh_issuer, upstream, leeway=7)))
        if trigger == "hangup":
            reloader.hangup()
        for _ in range(60):
            if sc.client.server.app[STATE].cfg.leeway == 7:
                break
            await asyncio.sleep(0.05)
        assert sc.client.server.app[STATE].cfg.leeway == 7
        assert sc.metric("sidecar_config_reloads_total", result="ok") == 2
        assert sc.metric("sidecar_config_info", hash=reloader.loaded.hash) == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_an_edit_made_before_the_watcher_started_is_applied_at_its_first_look(
    make_sidecar: MakeSidecar, fresh_issuer: DevIssuer, upstream: Upstream, tmp_path: Path
) -> None:
    # A worker reads the file at its start and sets up its watcher only once it listens: an edit landing in
    # between used to become the watcher's baseline, and that worker ran the old config until the next edit.
    sc = await make_sidecar(fresh_issuer)
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(raw_config(fresh_issuer, upstream)))
    assert await reloader_for(sc, path).reload("test")
    reloader = reloader_for(sc, path)  # built from the config as it was read...
    path.write_text(yaml.safe_dump(raw_config(fresh_issuer, upstream, leeway=7)))  # ...then the edit lands
    task = asyncio.create_task(reloader.run())
    try:
        for _ in range(20):  # well within one reload_interval (1 s): the first look, not the next poll
            if sc.client.server.app[STATE].cfg.leeway == 7:
                break
            await asyncio.sleep(0.02)
        assert sc.client.server.app[STATE].cfg.leeway == 7
        assert sc.metric("sidecar_config_reloads_total", result="ok") == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_removed_provider_stops_its_refresher_and_the_kept_one_is_not_fetched_again(
    make_sidecar: MakeSidecar, fresh_issuer: DevIssuer, issuer: DevIssuer, upstream: Upstream, tmp_path: Path
) -> None:
    second = {
        "name": "second",
        "issuer": issuer.issuer,
        "audiences": [AUDIENCE],
        "jwks_url": f"{issuer.issuer}/jwks.json",
    }
    both = raw_config(fresh_issuer, upstream)
    both["providers"].append(second)
    sc = await make_sidecar(fresh_issuer, providers=both["providers"])
    hub = sc.state.channel.hub  # type: ignore[union-attr]
    assert len(hub.tasks) == 2
    removed_task = hub.tasks[1]
    fetches = fresh_issuer.jwks_fetches
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(raw_config(fresh_issuer, upstream)))
    assert await reloader_for(sc, path).reload("test")
    assert [f.provider.name for f in hub.fetchers] == ["default"] and len(hub.tasks) == 1
    await asyncio.wait_for(asyncio.gather(removed_task, return_exceptions=True), 2)
    assert removed_task.cancelled()
    assert fresh_issuer.jwks_fetches == fetches
    state = sc.client.server.app[STATE]
    assert [v.provider.name for v in state.keys] == ["default"] and state.ready()
    assert (await sc.get("/api/x", issuer.mint())).status == 401
    assert (await sc.get("/api/x", fresh_issuer.mint())).status == 200
