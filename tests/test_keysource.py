"""Key documents over HTTP: whole bodies within jwks.max_bytes, a private CA, credentials that never leak.

Every server here is a real aiohttp server on 127.0.0.1 (TLS ones with a CA generated at run time), and the
sidecar is the real app in-process with its refreshers running.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from sidecar.config import ConfigError, load
from sidecar.devtools.issuer import DevIssuer
from tests.conftest import AUDIENCE, Upstream
from tests.idp_support import PrivateCA, private_ca, serve, start_sidecar, wait_fetches, wait_ready
from tests.support import ThreadedServer

LIMIT = 300_000  # jwks.max_bytes in the size tests
Deliver = Callable[[web.Request, bytes], Awaitable[web.StreamResponse]]


# --- how a server may send a body ---------------------------------------------------------------------


async def _chunked(request: web.Request, body: bytes) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    step = max(1, len(body) // 7)
    for i in range(0, len(body), step):
        await resp.write(body[i : i + step])
        await asyncio.sleep(0.01)
    await resp.write_eof()
    return resp


async def _paused(request: web.Request, body: bytes) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.content_length = len(body)
    await resp.prepare(request)
    await resp.write(body[: len(body) // 2])
    await asyncio.sleep(0.3)
    await resp.write(body[len(body) // 2 :])
    await resp.write_eof()
    return resp


async def _whole(request: web.Request, body: bytes) -> web.StreamResponse:
    return web.Response(body=body, content_type="application/json")


def _padded(doc: dict[str, Any], size: int) -> bytes:
    """doc as JSON, padded with trailing whitespace (still JSON) to exactly size bytes."""
    raw = json.dumps(doc).encode()
    assert len(raw) <= size
    return raw + b" " * (size - len(raw))


class OddIdP:
    """Discovery + JWKS, where the document under test is sent in a chosen way and size."""

    def __init__(self, dev: DevIssuer, target: str, deliver: Deliver, size: int | None) -> None:
        self.dev, self.target, self.deliver, self.size = dev, target, deliver, size

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._doc("discovery"))
        app.router.add_get("/jwks.json", self._doc("jwks"))
        return app

    def _doc(self, which: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            doc = (
                self.dev.jwks()
                if which == "jwks"
                else {"issuer": self.dev.issuer, "jwks_uri": f"{self.dev.issuer}/jwks.json"}
            )
            if which != self.target:
                return web.json_response(doc)
            body = _padded(doc, self.size) if self.size else json.dumps(doc).encode()
            return await self.deliver(request, body)

        return handler


CASES = {
    "chunked": (_chunked, None, True),
    "paused": (_paused, None, True),
    "270KB+": (_whole, 270 * 1024 + 17, True),
    "270KB+ chunked": (_chunked, 270 * 1024 + 17, True),
    "exact limit": (_whole, LIMIT, True),
    "exact limit chunked": (_chunked, LIMIT, True),
    "limit+1": (_whole, LIMIT + 1, False),
    "limit+1 chunked": (_chunked, LIMIT + 1, False),
}


@pytest.mark.parametrize("target", ["jwks", "discovery"])
@pytest.mark.parametrize("case", list(CASES))
async def test_a_key_document_is_read_whole_however_it_arrives_and_refused_past_max_bytes(
    target: str, case: str, aiohttp_client: Any, upstream: Upstream
) -> None:
    deliver, size, ok = CASES[case]
    dev = DevIssuer(audience=AUDIENCE)
    idp = OddIdP(dev, target, deliver, size)
    server = ThreadedServer(idp.app())  # its own thread: the body really arrives over several socket reads
    try:
        url = dev.issuer = server.url
        provider: dict[str, Any] = {"issuer": url, "audiences": [AUDIENCE]}
        provider.update({"discovery": True} if target == "discovery" else {"jwks_url": f"{url}/jwks.json"})
        sc = await start_sidecar(aiohttp_client, upstream.url, [provider], jwks={"max_bytes": LIMIT})
        if ok:
            assert await wait_ready(sc), sc.state.keys[0].last_error
            r = await sc.get(token=dev.mint(now=sc.clock.now()))
            assert r.status == 200
            assert sc.metric("sidecar_jwks_fetches_total", provider="default", result="invalid") == 0
        else:
            assert await wait_fetches(sc, "invalid") >= 1
            assert not sc.state.ready()
            error = sc.state.keys[0].last_error or ""
            assert f"{LIMIT} bytes" in error, error
            r = await sc.get(token=dev.mint(now=sc.clock.now()))
            assert r.status == 503
    finally:
        server.stop()


async def test_a_body_longer_than_its_content_length_promised_is_not_read_past_the_limit(
    aiohttp_client: Any, upstream: Upstream
) -> None:
    """No Content-Length, no chunking: the body ends when the server closes; the count still stops it."""
    dev = DevIssuer(audience=AUDIENCE)

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json", "Connection": "close"})
        resp.force_close()
        await resp.prepare(request)
        await resp.write(b'{"keys": [')
        for _ in range(200):  # 200 x 4 KiB, far past the limit; bounded so the test stops by itself
            await resp.write(b" " * 4096)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/jwks.json", endless)
    async with serve(app) as url:
        dev.issuer = url
        provider = {"issuer": url, "audiences": [AUDIENCE], "jwks_url": f"{url}/jwks.json"}
        sc = await start_sidecar(aiohttp_client, upstream.url, [provider], jwks={"max_bytes": 65536})
        assert await wait_fetches(sc, "invalid") >= 1
        assert not sc.state.ready()


async def test_a_content_length_over_the_limit_is_refused_before_the_body_arrives(
    aiohttp_client: Any, upstream: Upstream
) -> None:
    """The server announces 50 MB and then stalls: the refusal comes from the header, not from a timeout."""
    dev = DevIssuer(audience=AUDIENCE)

    async def announce(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = 50 << 20
        await resp.prepare(request)
        await resp.write(b'{"keys": []' + b" " * 1024)
        await asyncio.sleep(3)  # far longer than the test waits; bounded so the server stops by itself
        return resp

    app = web.Application()
    app.router.add_get("/jwks.json", announce)
    async with serve(app) as url:
        dev.issuer = url
        provider = {"issuer": url, "audiences": [AUDIENCE], "jwks_url": f"{url}/jwks.json"}
        sc = await start_sidecar(aiohttp_client, upstream.url, [provider], jwks={"fetch_timeout": "30s"})
        assert await wait_fetches(sc, "invalid", seconds=1.5) >= 1
        assert "Content-Length 52428800 is over 1048576 bytes" in (sc.state.keys[0].last_error or "")


async def test_a_compressed_body_is_counted_as_it_decodes(aiohttp_client: Any, upstream: Upstream) -> None:
    """A 64 KiB gzip body that inflates to 8 MiB: the limit applies to what it becomes."""
    dev = DevIssuer(audience=AUDIENCE)
    bomb = gzip.compress(b'{"keys": [' + b" " * (8 << 20) + b"]}")
    assert len(bomb) < 65536

    async def inflate(request: web.Request) -> web.Response:
        return web.Response(body=bomb, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})

    app = web.Application()
    app.router.add_get("/jwks.json", inflate)
    async with serve(app) as url:
        dev.issuer = url
        provider = {"issuer": url, "audiences": [AUDIENCE], "jwks_url": f"{url}/jwks.json"}
        sc = await start_sidecar(aiohttp_client, upstream.url, [provider])
        assert await wait_fetches(sc, "invalid") >= 1
        assert "body larger than 1048576 bytes" in (sc.state.keys[0].last_error or "")


# --- a private CA -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> PrivateCA:
    return private_ca()


async def test_https_key_source_signed_by_a_private_ca_is_trusted_with_ca_file(
    ca: PrivateCA, tmp_path: Path, aiohttp_client: Any, upstream: Upstream
) -> None:
    dev = DevIssuer(audience=AUDIENCE)
    async with serve(dev.app(), ca.server_context(tmp_path)) as url:
        dev.issuer = url
        for source in ({"jwks_url": f"{url}/jwks.json"}, {"discovery": True}):
            provider = {"issuer": url, "audiences": [AUDIENCE], "ca_file": ca.write_ca(tmp_path / "ca.pem"), **source}
            sc = await start_sidecar(aiohttp_client, upstream.url, [provider])
            assert await wait_ready(sc), sc.state.keys[0].last_error
            assert (await sc.get(token=dev.mint(now=sc.clock.now()))).status == 200


async def test_without_ca_file_or_with_another_ca_the_key_source_is_not_trusted(
    ca: PrivateCA, tmp_path: Path, aiohttp_client: Any, upstream: Upstream
) -> None:
    dev = DevIssuer(audience=AUDIENCE)
    other = private_ca("some other CA")
    async with serve(dev.app(), ca.server_context(tmp_path)) as url:
        dev.issuer = url
        for extra in ({}, {"ca_file": other.write_ca(tmp_path / "other.pem")}):
            provider = {"issuer": url, "audiences": [AUDIENCE], "jwks_url": f"{url}/jwks.json", **extra}
            sc = await start_sidecar(aiohttp_client, upstream.url, [provider])
            assert await wait_fetches(sc, "refused") >= 1
            assert not sc.state.ready()
            assert "TLS certificate is not trusted" in (sc.state.keys[0].last_error or "")
            assert dev.jwks_fetches == 0


async def test_ca_file_is_the_only_trust_and_is_reread_when_it_changes(
    ca: PrivateCA, tmp_path: Path, aiohttp_client: Any, upstream: Upstream
) -> None:
    dev = DevIssuer(audience=AUDIENCE)
    ca_path = tmp_path / "bundle.pem"
    ca_path.write_bytes(private_ca("old CA").ca_pem)
    async with serve(dev.app(), ca.server_context(tmp_path)) as url:
        dev.issuer = url
        provider = {"issuer": url, "audiences": [AUDIENCE], "jwks_url": f"{url}/jwks.json", "ca_file": str(ca_path)}
        sc = await start_sidecar(aiohttp_client, upstream.url, [provider])
        assert await wait_fetches(sc, "refused") >= 1
        ca_path.write_bytes(private_ca("old CA").ca_pem + ca.ca_pem)  # the bundle gains the server's CA
        assert (await sc.state.keys[0].refresh())["ok"]
        assert sc.state.ready()


async def test_an_unreadable_ca_file_is_a_counted_fetch_failure_naming_the_file(
    tmp_path: Path, aiohttp_client: Any, upstream: Upstream
) -> None:
    missing = str(tmp_path / "nope.pem")
    provider = {
        "issuer": "https://127.0.0.1:9",
        "audiences": [AUDIENCE],
        "jwks_url": "https://127.0.0.1:9/k",
        "ca_file": missing,
    }
    sc = await start_sidecar(aiohttp_client, upstream.url, [provider])
    assert await wait_fetches(sc, "refused") >= 1
    assert missing in (sc.state.keys[0].last_error or "")


# --- credentials ----------------------------------------------------------------------------------------


class GuardedIdP:
    """A JWKS/discovery server that answers only a caller with the current bearer token; records what it saw."""

    def __init__(self, dev: DevIssuer, jwks_base: str | None = None) -> None:
        self.dev = dev
        self.token = ""
        self.seen: list[str | None] = []
        self.jwks_base = jwks_base

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/openid/v1/jwks", self._jwks)
        app.router.add_get("/moved", self._moved)
        return app

    def _allowed(self, request: web.Request) -> bool:
        got = request.headers.get("Authorization")
        self.seen.append(got)
        return got == f"Bearer {self.token}"

    async def _discovery(self, request: web.Request) -> web.Response:
        if not self._allowed(request):
            return web.Response(status=401)
        base = self.jwks_base or self.dev.issuer
        return web.json_response({"issuer": self.dev.issuer, "jwks_uri": f"{base}/openid/v1/jwks"})

    async def _jwks(self, request: web.Request) -> web.Response:
        if not self._allowed(request):
            return web.Response(status=401)
        return web.json_response(self.dev.jwks())

    async def _moved(self, request: web.Request) -> web.Response:
        self.seen.append(request.headers.get("Authorization"))
        raise web.HTTPFound(str(request.query["to"]))


async def test_jwks_auth_sends_the_current_token_and_follows_its_rotation(
    ca: PrivateCA, tmp_path: Path, aiohttp_client: Any, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    dev = DevIssuer(audience=AUDIENCE)
    idp = GuardedIdP(dev)
    token_file = tmp_path / "token"
    first, second = "eyJhbGciOi.first-sa-token.sig1", "eyJhbGciOi.second-sa-token.sig2"
    async with serve(idp.app(), ca.server_context(tmp_path)) as url:
        dev.issuer = url
        idp.token = first
        token_file.write_text(first + "\n")
        provider = {
            "issuer": url,
            "audiences": [AUDIENCE],
            "jwks_url": f"{url}/openid/v1/jwks",
            "ca_file": ca.write_ca(tmp_path / "ca.pem"),
            "jwks_auth": {"bearer_token_file": str(token_file)},
        }
        sc = await start_sidecar(aiohttp_client, upstream.url, [provider])
        assert await wait_ready(sc), sc.state.keys[0].last_error
        assert (await sc.get(token=dev.mint(now=sc.clock.now()))).status == 200
        # The kubelet rotates the projected token; the IdP stops accepting the old one.
        idp.token = second
        token_file.write_text(second + "\n")
        assert (await sc.state.keys[0].refresh())["ok"]
        assert idp.seen[-1] == f"Bearer {second}"
        # A token file that suddenly holds something else than one token: refused, never sent, never logged.
        token_file.write_text("third\r\nX-Injected: 1\n")
        assert not (await sc.state.keys[0].refresh())["ok"]
        assert "does not hold one bearer token" in (sc.state.keys[0].last_error or "")
        assert idp.seen[-1] == f"Bearer {second}"
        # Without a token the API server answers 401: counted, the last good keys stay.
        token_file.unlink()
        assert not (await sc.state.keys[0].refresh())["ok"]
        assert sc.state.ready()
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    for secret in (first, second, "third", "X-Injected"):
        assert secret not in logged
    assert any("jwks fetch failed" in r.getMessage() for r in caplog.records)


async def test_jwks_auth_is_sent_with_discovery_only_to_the_issuer_origin(
    ca: PrivateCA, tmp_path: Path, aiohttp_client: Any, upstream: Upstream
) -> None:
    """Kubernetes' discovery names a jwks_uri on the API server's external address: another origin gets no token."""
    tls = ca.server_context(tmp_path)
    dev = DevIssuer(audience=AUDIENCE)
    elsewhere = GuardedIdP(dev)
    token_file = tmp_path / "token"
    token_file.write_text("sa-token")
    async with serve(elsewhere.app(), tls) as other_url:
        idp = GuardedIdP(dev, jwks_base=other_url)
        idp.token = elsewhere.token = "sa-token"
        async with serve(idp.app(), tls) as url:
            dev.issuer = url
            provider = {
                "issuer": url,
                "audiences": [AUDIENCE],
                "discovery": True,
                "ca_file": ca.write_ca(tmp_path / "ca.pem"),
                "jwks_auth": {"bearer_token_file": str(token_file)},
            }
            sc = await start_sidecar(aiohttp_client, upstream.url, [provider])
            assert await wait_fetches(sc, "http_error") >= 1
            assert idp.seen and set(idp.seen) == {"Bearer sa-token"}
            assert elsewhere.seen and set(elsewhere.seen) == {None}
            assert not sc.state.ready()


async def test_a_redirect_is_never_followed_so_the_token_cannot_be_led_away(
    ca: PrivateCA, tmp_path: Path, aiohttp_client: Any, upstream: Upstream
) -> None:
    tls = ca.server_context(tmp_path)
    dev = DevIssuer(audience=AUDIENCE)
    thief = GuardedIdP(dev)
    token_file = tmp_path / "token"
    token_file.write_text("sa-token")
    async with serve(thief.app(), tls) as thief_url, serve(GuardedIdP(dev).app(), tls) as url:
        for target in (f"{thief_url}/openid/v1/jwks", f"{url}/openid/v1/jwks"):
            provider = {
                "issuer": url,
                "audiences": [AUDIENCE],
                "jwks_url": f"{url}/moved?to={target}",
                "ca_file": ca.write_ca(tmp_path / "ca.pem"),
                "jwks_auth": {"bearer_token_file": str(token_file)},
            }
            sc = await start_sidecar(aiohttp_client, upstream.url, [provider])
            assert await wait_fetches(sc, "http_error") >= 1
            assert "answered 302" in (sc.state.keys[0].last_error or "")
    assert thief.seen == []


@pytest.mark.parametrize(
    ("provider", "where"),
    [
        ({"jwks_url": "http://idp.internal/jwks", "jwks_auth": {"bearer_token_file": "/t"}}, "providers[0].jwks_auth"),
        ({"jwks_url": "http://idp.internal/jwks", "ca_file": "/ca.pem"}, "providers[0].ca_file"),
        ({"jwks_file": "/keys.json", "ca_file": "/ca.pem"}, "providers[0].ca_file"),
        ({"jwks_url": "https://idp.internal/jwks", "jwks_auth": {}}, "providers[0].jwks_auth.bearer_token_file"),
        ({"jwks_url": "https://idp.internal/jwks", "jwks_auth": {"token": "x"}}, "providers[0].jwks_auth.token"),
        ({"jwks_url": "https://idp.internal/jwks", "ca_file": 3}, "providers[0].ca_file"),
    ],
)
def test_key_source_options_are_checked_at_start_naming_the_key(provider: dict[str, Any], where: str) -> None:
    raw = {"providers": [{"issuer": "https://idp.internal/", "audiences": ["api"], **provider}]}
    with pytest.raises(ConfigError) as e:
        load(raw)
    assert where in [path for path, _ in e.value.problems]


def test_key_source_options_appear_in_the_effective_config() -> None:
    cfg = load(
        {
            "providers": [
                {
                    "issuer": "https://kubernetes.default.svc.cluster.local",
                    "audiences": ["api"],
                    "jwks_url": "https://kubernetes.default.svc/openid/v1/jwks",
                    "ca_file": "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
                    "jwks_auth": {"bearer_token_file": "/var/run/secrets/kubernetes.io/serviceaccount/token"},
                }
            ]
        }
    )
    p = cfg.effective()["providers"][0]
    assert p["ca_file"].endswith("ca.crt")
    assert p["jwks_auth"] == {"bearer_token_file": "/var/run/secrets/kubernetes.io/serviceaccount/token"}
