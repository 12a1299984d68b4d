"""The state every request reads: the config in force and what was built from it, swapped whole on a reload.

Its own module so that the compiled build (build_support/backend.py) makes it a native class: a request
reads about twenty of its attributes, each a plain field read compiled, a dictionary lookup otherwise.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import aiohttp

from sidecar.clock import Clock
from sidecar.config import Config
from sidecar.cors import CorsPolicy
from sidecar.headers import HeaderPolicy
from sidecar.keys.channel import LocalChannel, SocketChannel
from sidecar.keys.view import KeyView
from sidecar.metrics import Metrics
from sidecar.override import MethodOverride
from sidecar.reload import Loaded
from sidecar.rules import RuleSet
from sidecar.scrub import TokenForms
from sidecar.verify import Verifier


@dataclass
class Sidecar:
    """Everything a request or the admin port needs, built once from config."""

    cfg: Config
    clock: Clock
    metrics: Metrics
    keys: list[KeyView]  # the pod's key state, as this worker sees it
    channel: LocalChannel | SocketChannel  # to the pod's fetchers: in this process, or the keys process
    verifier: Verifier
    cors: CorsPolicy
    headers: HeaderPolicy
    forms: TokenForms
    overrides: MethodOverride
    rules: RuleSet
    token_sources: tuple[str, ...]  # every provider's sources, each once
    grace_header: str
    loaded: Loaded  # which config this is: hash, generation (see sidecar.reload)
    report_header: str = "X-Auth-Report"  # identity_header_prefix + REPORT_SUFFIX (build_state)
    claim_headers: tuple[tuple[str, str], ...] = ()  # cfg.all_claim_headers, computed once
    draining: bool = False
    upstream: aiohttp.ClientSession | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def ready(self) -> bool:
        # all routes in report mode: no usable keys is reported per request, never an outage by readiness
        return not self.draining and (not self.rules.enforces or all(pk.usable() for pk in self.keys))

    def refresh_gauges(self) -> None:
        """Gauges computed from state (key-set age, staleness, readiness, cache size); expires retired keys."""
        for pk in self.keys:
            pk.update_gauges()
        self.metrics.ready.set(1 if self.ready() else 0)
        self.metrics.token_cache_entries.set(len(self.verifier.cache))
