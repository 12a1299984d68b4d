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


# --- the in-process proxy listener on either engine (issue 14) ---------------------------------------------
# `make_sidecar` serves the proxy listener through aiohttp's TestServer or through the lean engine
# (sidecar/http/) behind `LeanTestServer`: `--engine lean|aiohttp` on the pytest command line, or
# SIDECAR_TEST_ENGINE. Real processes pick theirs with `--proxy-engine` / SIDECAR_PROXY_ENGINE instead.

import os  # noqa: E402

from aiohttp import web  # noqa: E402
from aiohttp.test_utils import BaseTestServer  # noqa: E402
from yarl import URL  # noqa: E402

from sidecar.connlimits import ConnLimits  # noqa: E402
from sidecar.guard import counting  # noqa: E402

TEST_ENGINE_ENV = "SIDECAR_TEST_ENGINE"
DEFAULT_TEST_ENGINE = "lean"  # the default proxy engine; scripts/test.sh reruns some suites on aiohttp


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--engine",
        choices=("aiohttp", "lean"),
        default=None,
        help=f"the proxy engine in-process tests (make_sidecar) serve through; default ${TEST_ENGINE_ENV} or "
        f"{DEFAULT_TEST_ENGINE}",
    )


def pytest_configure(config: pytest.Config) -> None:
    chosen = config.getoption("--engine", default=None)
    if chosen:
        os.environ[TEST_ENGINE_ENV] = chosen  # one place to read it from, in this process and its children


def inproc_engine() -> str:
    engine = os.environ.get(TEST_ENGINE_ENV, DEFAULT_TEST_ENGINE).strip().lower()
    if engine not in ("aiohttp", "lean"):
        raise pytest.UsageError(f"{TEST_ENGINE_ENV}={engine!r}: expected aiohttp or lean")
    return engine


def lean_available() -> bool:
    try:
        import sidecar.http.server  # noqa: F401
    except ImportError:
        return False
    return True


class LeanTestServer(BaseTestServer):
    """The lean engine's listener for aiohttp's `TestClient(LeanTestServer(state))`, serving what
    `proxy_app(state)` serves. Once started, `app` is the lean server's aiohttp app (never served): it holds
    the state in `app[STATE]`, as reload tests that reach for `client.server.app[STATE]` expect."""

    def __init__(self, state: Sidecar, *, host: str = "127.0.0.1", port: int | None = None, **kwargs: Any) -> None:
        self.state = state
        self.app: web.Application | None = None
        self.lean: Any = None
        super().__init__(scheme="http", host=host, port=port, **kwargs)

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:  # pragma: no cover - start_server has none
        raise NotImplementedError("the lean engine has no aiohttp runner")

    async def start_server(self, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any) -> None:
        if self.lean is not None:
            return
        from sidecar.http.server import LeanServer  # type: ignore[import-not-found,unused-ignore]

        self._loop = loop
        limits = ConnLimits.from_config(self.state.cfg.limits)
        self.lean = await LeanServer.start(self.state, self.host, self.port or 0, limits, counting(self.state.metrics))
        self.app = self.lean.app
        self.port = self.lean.port
        self._root = URL(f"http://{self.host}:{self.port}")

    @property
    def started(self) -> bool:
        return self.lean is not None

    async def close(self) -> None:
        if self.started and not self.closed:
            await self.lean.close()
            self._root = None
            self.port = None
            self._closed = True


def _proxy_for_tests(state: Sidecar) -> web.Application | LeanTestServer:
    """The proxy listener `make_sidecar` hands to `aiohttp_client`: an app for aiohttp's own test server,
    or the lean engine behind a LeanTestServer (aiohttp_client takes either)."""
    if inproc_engine() == "lean":
        if not lean_available():
            raise pytest.UsageError(f"{TEST_ENGINE_ENV}=lean, but sidecar/http/server.py is not there yet")
        return LeanTestServer(state)
    return _aiohttp_proxy_app(state)


# make_sidecar (above) builds its listener with `proxy_app(state)`, looked up here when it runs: rebinding
# the name makes it engine-selectable without a second copy of the fixture. Nothing else imports it from here.
_aiohttp_proxy_app = proxy_app
proxy_app = _proxy_for_tests  # type: ignore[assignment]
