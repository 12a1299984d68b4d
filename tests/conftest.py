"""Shared fixtures: a dev issuer, a recording echo app, and a real sidecar process in front of them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from sidecar.devtools.echo import echo_app
from sidecar.devtools.issuer import DevIssuer
from tests.support import SidecarProcess, ThreadedServer

AUDIENCE = "demo-api"
ORIGIN = "http://localhost:3000"


@pytest.fixture(scope="module")
def issuer() -> Iterator[DevIssuer]:
    dev = DevIssuer(audience=AUDIENCE)
    server = ThreadedServer(dev.app())
    dev.issuer = server.url
    yield dev
    server.stop()


class Upstream:
    def __init__(self) -> None:
        self.record: list[dict[str, Any]] = []
        self.server = ThreadedServer(echo_app(self.record))
        self.url = self.server.url

    def clear(self) -> None:
        self.record.clear()


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    yield up
    up.server.stop()


def sidecar_args(issuer: DevIssuer, upstream: Upstream, *extra: str) -> list[str]:
    return [
        "--upstream",
        upstream.url,
        "--jwks-url",
        f"{issuer.issuer}/jwks.json",
        "--issuer",
        issuer.issuer,
        "--audience",
        AUDIENCE,
        "--leeway",
        "60",
        "--expired-grace",
        "300",
        "--public-path",
        "/public",
        "--claim-header",
        "X-Auth-Subject=sub",
        "--claim-header",
        "X-Auth-Roles=realm_access.roles",
        "--cors-origin",
        ORIGIN,
        "--log-level",
        "info",
        *extra,
    ]


@pytest.fixture(scope="module")
def sidecar(issuer: DevIssuer, upstream: Upstream) -> Iterator[SidecarProcess]:
    proc = SidecarProcess(sidecar_args(issuer, upstream)).start()
    yield proc
    proc.stop()


# --- in-process sidecar with an injected clock ------------------------------------------------------------

import asyncio  # noqa: E402
import copy  # noqa: E402
import time  # noqa: E402
from collections.abc import Awaitable, Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402

from aiohttp.test_utils import TestClient  # noqa: E402

from sidecar.admin import admin_app  # noqa: E402
from sidecar.app import STATE, Sidecar, build_state, proxy_app  # noqa: E402
from sidecar.clock import FakeClock  # noqa: E402
from sidecar.config import load  # noqa: E402


@dataclass
class InProc:
    client: TestClient  # type: ignore[type-arg]
    admin: TestClient  # type: ignore[type-arg]
    state: Sidecar
    clock: FakeClock

    async def get(self, path: str = "/api", token: str | None = None, **headers: str) -> Any:
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return await self.client.get(path, headers=headers)

    def metric(self, name: str, **labels: str) -> float:
        value = self.state.metrics.registry.get_sample_value(name, labels or None)
        return value or 0.0


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.fixture
def fresh_issuer() -> Iterator[DevIssuer]:
    """An issuer of the test's own, for tests that rotate keys or stage outages."""
    dev = DevIssuer(audience=AUDIENCE)
    server = ThreadedServer(dev.app())
    dev.issuer = server.url
    dev.server = server  # type: ignore[attr-defined]
    yield dev
    server.stop()


MakeSidecar = Callable[..., Awaitable[InProc]]


@pytest.fixture
async def make_sidecar(aiohttp_client: Any, upstream: Upstream) -> MakeSidecar:
    async def make(issuer: DevIssuer, wait: bool = True, **overrides: Any) -> InProc:
        raw = {
            "upstream": upstream.url,
            "providers": [{"issuer": issuer.issuer, "audiences": [AUDIENCE], "jwks_url": f"{issuer.issuer}/jwks.json"}],
            "leeway": 60,
            "expired_grace": 300,
            "public_paths": ["/public"],
            "claim_headers": {"X-Auth-Subject": "sub"},
            "cors": {"origins": [ORIGIN]},
        }
        clock = FakeClock(time.time())
        state = build_state(load(_merge(raw, overrides)), clock)
        client = await aiohttp_client(proxy_app(state))
        admin = await aiohttp_client(admin_app(state, STATE))
        if wait:
            for _ in range(200):
                if state.ready():
                    break
                await asyncio.sleep(0.02)
            assert state.ready(), [pk.last_error for pk in state.keys]
        return InProc(client, admin, state, clock)

    return make


# --- a real `sidecar run` from a config file ---------------------------------------------------------------


def config_process(issuer: DevIssuer, upstream: Upstream, where: Any, **over: Any) -> SidecarProcess:
    """A started `sidecar run --config FILE`: the usual test config (one provider, /public public, claim
    headers, CORS for ORIGIN, one worker) with `over` merged in; `where` is a directory for the file."""
    import yaml

    raw: dict[str, Any] = {
        "upstream": upstream.url,
        "providers": [{"issuer": issuer.issuer, "audiences": [AUDIENCE], "jwks_url": f"{issuer.issuer}/jwks.json"}],
        "leeway": 60,
        "public_paths": ["/public"],
        "claim_headers": {"X-Auth-Subject": "sub"},
        "cors": {"origins": [ORIGIN]},
        "workers": 1,
    }
    path = where / "sidecar.yaml"
    path.write_text(yaml.safe_dump(_merge(raw, over)))
    return SidecarProcess(["--config", str(path)]).start()
