"""Forwarding: streamed bodies both ways, header hygiene, upstream faults, limits, client disconnects."""

from __future__ import annotations

import asyncio
import hashlib
import json

from sidecar.devtools.issuer import DevIssuer
from tests.conftest import MakeSidecar, Upstream
from tests.support import free_port


def auth(issuer: DevIssuer, now: float) -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.mint(now=now)}"}


async def test_a_large_request_body_is_streamed_to_the_app_intact(
    issuer: DevIssuer, upstream: Upstream, make_sidecar: MakeSidecar
) -> None:
    sc = await make_sidecar(issuer)
    body = bytes(range(256)) * 20000  # 5 MB

    async def chunks():  # type: ignore[no-untyped-def]
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    upstream.clear()
    r = await sc.client.post("/upload", data=chunks(), headers=auth(issuer, sc.clock.now()))
    assert r.status == 200
    assert upstream.record[-1]["body"] == body
    assert (await r.json())["body_sha_prefix"] == hashlib.sha256(body).hexdigest()[:16]


async def test_a_large_chunked_response_is_streamed_back_intact(issuer: DevIssuer, make_sidecar: MakeSidecar) -> None:
    sc = await make_sidecar(issuer)
    r = await sc.client.get("/big?echo_bytes=3000000", headers=auth(issuer, sc.clock.now()))
    assert r.status == 200
    assert len(await r.read()) == 3000000


async def test_hop_by_hop_and_connection_named_headers_never_reach_the_app(
    issuer: DevIssuer, upstream: Upstream, make_sidecar: MakeSidecar
) -> None:
    sc = await make_sidecar(issuer)
    token = issuer.mint(now=sc.clock.now())
    upstream.clear()
    headers = {
        "Authorization": f"Bearer {token}",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Trailer": "X-T",
        "Proxy-Authorization": "Basic eA==",
        "Proxy-Connection": "keep-alive",
        "Connection": "keep-alive, X-Secret, X-Forwarded-For, Authorization, X-Auth-Subject",
        "X-Secret": "1",
        "X-Forwarded-For": "203.0.113.9",
    }
    r = await sc.client.get("/h", headers=headers)
    assert r.status == 200
    seen = dict(upstream.record[-1]["headers"])
    for gone in ("Keep-Alive", "TE", "Trailer", "Proxy-Authorization", "Proxy-Connection", "X-Secret"):
        assert gone not in seen, gone
    assert seen["Authorization"] == f"Bearer {token}"
    assert seen["X-Auth-Subject"] == "demo-user"
    assert seen["X-Forwarded-For"] == "203.0.113.9, 127.0.0.1"
    assert seen["X-Forwarded-Proto"] == "http"


async def test_authorization_can_be_stripped_by_option(
    issuer: DevIssuer, upstream: Upstream, make_sidecar: MakeSidecar
) -> None:
    sc = await make_sidecar(issuer, strip_authorization=True)
    upstream.clear()
    assert (await sc.client.get("/s", headers=auth(issuer, sc.clock.now()))).status == 200
    assert "Authorization" not in dict(upstream.record[-1]["headers"])


async def test_upstream_refusing_connections_is_a_counted_502_with_json(
    issuer: DevIssuer, make_sidecar: MakeSidecar
) -> None:
    sc = await make_sidecar(issuer, upstream=f"http://127.0.0.1:{free_port()}")
    r = await sc.client.get("/x", headers=auth(issuer, sc.clock.now()))
    assert r.status == 502
    assert (await r.json())["reason"] == "upstream_unavailable"
    assert sc.metric("sidecar_upstream_errors_total", kind="upstream_unavailable") == 1


async def test_upstream_too_slow_is_a_counted_504_with_json(issuer: DevIssuer, make_sidecar: MakeSidecar) -> None:
    sc = await make_sidecar(issuer, limits={"upstream_timeout": "0.3s"})
    r = await sc.client.get("/x?echo_sleep=2", headers=auth(issuer, sc.clock.now()))
    assert r.status == 504
    assert (await r.json())["reason"] == "upstream_timeout"
    assert sc.metric("sidecar_upstream_errors_total", kind="upstream_timeout") == 1


async def test_body_over_the_limit_is_413_by_content_length_and_while_streaming(
    issuer: DevIssuer, upstream: Upstream, make_sidecar: MakeSidecar
) -> None:
    sc = await make_sidecar(issuer, limits={"max_body_bytes": 1000})
    upstream.clear()
    r = await sc.client.post("/x", data=b"x" * 2000, headers=auth(issuer, sc.clock.now()))
    assert r.status == 413 and (await r.json())["reason"] == "body_too_large"

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(4):
            yield b"y" * 600

    r = await sc.client.post("/x", data=chunks(), headers=auth(issuer, sc.clock.now()))
    assert r.status == 413
    assert upstream.record == []
    assert sc.metric("sidecar_requests_rejected_total", reason="body_too_large") == 2


async def test_a_client_that_disconnects_mid_request_leaks_nothing(
    issuer: DevIssuer, make_sidecar: MakeSidecar
) -> None:
    sc = await make_sidecar(issuer)
    task = asyncio.create_task(sc.client.get("/slow?echo_sleep=0.5", headers=auth(issuer, sc.clock.now())))
    await asyncio.sleep(0.1)
    assert sc.metric("sidecar_requests_in_flight") == 1
    task.cancel()
    await asyncio.sleep(0.8)
    assert sc.metric("sidecar_requests_in_flight") == 0
    r = await sc.client.get("/after", headers=auth(issuer, sc.clock.now()))
    assert r.status == 200


async def test_the_app_status_headers_and_body_come_back_unchanged(
    issuer: DevIssuer, make_sidecar: MakeSidecar
) -> None:
    sc = await make_sidecar(issuer)
    r = await sc.client.get("/teapot?echo_status=418", headers=auth(issuer, sc.clock.now()))
    assert r.status == 418
    assert json.loads(await r.text())["path"] == "/teapot?echo_status=418"


async def test_cors_headers_are_added_to_the_apps_response_for_an_allowed_origin(
    issuer: DevIssuer, make_sidecar: MakeSidecar
) -> None:
    sc = await make_sidecar(issuer)
    r = await sc.client.get("/c", headers={**auth(issuer, sc.clock.now()), "Origin": "http://localhost:3000"})
    assert r.status == 200
    assert r.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    assert "Origin" in r.headers.getall("Vary")
