"""Live config reload: watch the config file (and SIGHUP), validate the next config, apply it, say what happened.

Each process of a pod watches on its own: every worker swaps its state, and the keys process (with several
workers) swaps its fetchers. The file is polled by the hash of its content every `reload_interval`, read
through its path, so the kubelet's way of updating a mounted ConfigMap (a new timestamped directory, then
the `..data` symlink replaced atomically) is seen like any other edit, with no inotify and no dependency.

A new config is read exactly as `run` reads it (file < SIDECAR_* environment < flags) and checked by the
model. A bad one is refused: its problems are logged with their key paths and the running config stays.
Keys bound once by the process (listeners, worker count, connection limits, the reload settings) are kept
at their running values; the log names them as needing a restart. Reloads are counted once per pod: by the
only worker, or by the keys process beside several.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.config import Config, ConfigError, load
from sidecar.config.sources import merge
from sidecar.metrics import Metrics

log = logging.getLogger("sidecar.reload")

_SETTLE = 0.1  # seconds between seeing a change and reading the file

# Bound once by the process: sockets, the worker processes, the connection guard and the upstream session
# (`limits`), and the watcher itself. `jwks.max_bytes` also sizes the keys socket's lines (see `pinned`).
RESTART_KEYS = ("listen", "admin_listen", "workers", "decision", "limits", "reload", "reload_interval", "proxy_engine")


class Refused(Exception):
    """A config that cannot be used: one line per problem, with its key path."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


@dataclass(frozen=True)
class ConfigSource:
    """Where `run` read its config from: the same flags and environment, and the file as it is now."""

    args: argparse.Namespace
    environ: Mapping[str, str]

    @property
    def path(self) -> str | None:
        found = getattr(self.args, "config", None) or self.environ.get("SIDECAR_CONFIG")
        return str(found) if found else None

    def read(self) -> Config:
        merged = None
        try:
            merged = merge(self.args, self.environ)
            return load(merged.raw)
        except ConfigError as e:
            raise Refused(merged.explain(e) if merged else e.lines()) from None


@dataclass(frozen=True)
class Loaded:
    """Which config a state was built from: what /admin/config and `sidecar_config_info` show."""

    hash: str
    generation: int = 1
    loaded_at: float = dataclasses.field(default_factory=time.time)
    pending_restart: tuple[str, ...] = ()  # changed keys this process keeps at their running values

    def describe(self) -> dict[str, Any]:
        return {
            "hash": self.hash,
            "generation": self.generation,
            "loaded_at": round(self.loaded_at, 3),
            "pending_restart": list(self.pending_restart),
        }


def config_hash(cfg: Config) -> str:
    """A short digest of the effective config: equal configs, equal hashes, in every process."""
    text = json.dumps(cfg.effective(), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def restart_needed(running: Config, new: Config) -> list[str]:
    changed = [k for k in RESTART_KEYS if getattr(running, k) != getattr(new, k)]
    if running.jwks.max_bytes != new.jwks.max_bytes:
        changed.append("jwks.max_bytes")
    return changed


def pinned(running: Config, new: Config) -> Config:
    """`new` with the restart-only keys at their running values: the config this process actually runs."""
    kept = {k: getattr(running, k) for k in RESTART_KEYS}
    jwks = dataclasses.replace(new.jwks, max_bytes=running.jwks.max_bytes)
    return dataclasses.replace(new, **kept, jwks=jwks)


def current(started_with: Config, source: ConfigSource | None) -> Config:
    """The config a child the supervisor (re)starts runs: the file as it is now, so a worker restarted after
    a reload serves what the others serve. A file that is broken now leaves it the config the pod started with."""
    if source is None or not started_with.reload:
        return started_with
    try:
        new = source.read()
    except Refused as e:
        log.warning(
            "config file refused at a child's start; using the pod's start-up config", extra={"problems": e.lines}
        )
        return started_with
    return pinned(started_with, new) if restart_needed(started_with, new) else new


def changed_keys(old: Config, new: Config) -> list[str]:
    a, b = old.effective(), new.effective()
    return [k for k in b if a.get(k) != b[k]]


def fingerprint(path: str) -> str:
    """The file's content hash, read through every symlink on the way (the kubelet's `..data` swap)."""
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError as e:
        return f"unreadable: {e.strerror}"


Apply = Callable[[Config, Loaded], Awaitable[None]]


class Reloader:
    """One process's watcher. Reloads run one at a time, in the order they were asked for."""

    def __init__(
        self, source: ConfigSource, running: Config, apply: Apply, metrics: Metrics, counts: bool, gauge: bool = True
    ) -> None:
        self.source = source
        self.started_with = running
        self.current = running
        self.loaded = Loaded(config_hash(running))
        self._apply = apply
        self._metrics = metrics
        self._counts = counts
        self._gauge = gauge  # the keys process exports no gauges (sidecar.keys.process._no_gauges)
        self._hup = asyncio.Event()
        # The file is looked at when the watcher starts (first_look), not here: it may have changed since
        # `running` was read from it (a worker still starting when an edit lands), and that edit must not be
        # missed.
        self._seen: str | None = None
        if gauge:
            metrics.config_info.labels(self.loaded.hash).set(1)

    def hangup(self) -> None:
        """SIGHUP: reload now, whether or not the file changed."""
        self._hup.set()

    async def first_look(self) -> None:
        """The file as it is now: remembered, and applied at once if it holds another config than the one this
        process started with (an edit that landed while it was starting). Once; `run` starts with it."""
        path = self.source.path
        if path is None or self._seen is not None:
            return
        self._seen = fingerprint(path)
        try:
            if self._differs():
                await self.reload("file changed")
        except Exception:  # the watcher outlives any one reload
            log.exception("config reload failed", extra={"trigger": "file changed"})

    async def run(self) -> None:
        await self.first_look()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hup.wait(), self.started_with.reload_interval)
            trigger = "SIGHUP" if self._hup.is_set() else None
            self._hup.clear()
            path = self.source.path
            if path is not None and fingerprint(path) != self._seen:
                # An editor that rewrites the file in place is seen mid-write at times: let it settle.
                await asyncio.sleep(_SETTLE)
                self._seen = fingerprint(path)
                trigger = trigger or "file changed"
            if trigger is not None:
                try:
                    await self.reload(trigger)
                except Exception:  # the watcher outlives any one reload
                    log.exception("config reload failed", extra={"trigger": trigger})

    def _differs(self) -> bool:
        """Does the file, as it is now, hold another config than the one this process runs?"""
        try:
            new = self.source.read()
        except Refused:
            return False  # broken now: the edit that mends it is seen as a change like any other
        _, pending, digest = self._applied(new)
        return not self._holds(digest, pending)

    def _applied(self, new: Config) -> tuple[Config, tuple[str, ...], str]:
        """What this process runs of `new`: restart-only keys kept (named in `pending`), and its hash."""
        pending = tuple(restart_needed(self.started_with, new))
        applied = pinned(self.started_with, new) if pending else new
        return applied, pending, config_hash(applied)

    def _holds(self, digest: str, pending: tuple[str, ...]) -> bool:
        return digest == self.loaded.hash and pending == self.loaded.pending_restart

    async def reload(self, trigger: str) -> bool:
        try:
            new = self.source.read()
        except Refused as e:
            log.error(
                "config reload refused; the running config stays",
                extra={"trigger": trigger, "problems": e.lines, "hash": self.loaded.hash},
            )
            self._count("error")
            return False
        applied, pending, digest = self._applied(new)
        if pending:
            log.warning("config change needs a restart; applying the rest", extra={"keys": list(pending)})
        if self._holds(digest, pending):
            log.info("config reloaded: unchanged", extra={"trigger": trigger, "hash": digest})
            self._count("ok")
            return True
        loaded = Loaded(digest, self.loaded.generation + 1, time.time(), pending)
        try:
            await self._apply(applied, loaded)
        except Exception:  # a bug while building the next state must not take the running one down
            log.exception("config reload failed while applying; the running config stays")
            self._count("error")
            return False
        if self._gauge and digest != self.loaded.hash:
            self._metrics.config_info.labels(self.loaded.hash).set(0)
            self._metrics.config_info.labels(digest).set(1)
        changed = changed_keys(self.current, applied)
        self.current, self.loaded = applied, loaded
        log.info(
            "config reloaded",
            extra={"trigger": trigger, "hash": digest, "generation": loaded.generation, "changed": changed},
        )
        self._count("ok")
        return True

    def _count(self, result: str) -> None:
        if self._counts:
            self._metrics.config_reloads.labels(result).inc()
