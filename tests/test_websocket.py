"""WebSockets through the sidecar: authenticated at the upgrade, echoed both ways, closed when the token ends."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp

from sidecar.devtools.issuer import DevIssuer
from sidecar.websocket import POLICY_VIOLATION
from tests.conftest import MakeSidecar


async def eventually(condition: Callable[[], bool]) -> bool:
    """The server side finishes its close after the client's: wait for it (bounded), not for time to pass."""
    for _ in range(200):
        if condition():
            return True
        await asyncio.sleep(0.01)
    return condition()


async def test_a_websocket_echo_works_through_the_sidecar_with_identity_headers(
    issuer: DevIssuer, make_sidecar: MakeSidecar
) -> None:
    sc = await make_sidecar(issuer)
    token = issuer.mint(sub="wsuser", now=sc.clock.now())
    async with sc.client.ws_connect("/ws", headers={"Authorization": f"Bearer {token}"}, protocols=("echo",)) as ws:
        hello = await ws.receive_json()
        seen = dict(hello["headers"])
        assert seen["X-Auth-Subject"] == "wsuser" and seen["Authorization"] == f"Bearer {token}"
        await ws.send_str("ping")
        assert (await ws.receive_str()) == "ping"
        await ws.send_bytes(b"\x00\x01")
        assert (await ws.receive_bytes()) == b"\x00\x01"
        assert ws.protocol == "echo"
    assert await eventually(lambda: sc.metric("sidecar_websocket_sessions_total", end="client_closed") == 1)


async def test_a_websocket_upgrade_without_a_token_is_refused(issuer: DevIssuer, make_sidecar: MakeSidecar) -> None:
    sc = await make_sidecar(issuer)
    try:
        await sc.client.ws_connect("/ws")
        raise AssertionError("the upgrade should have been refused")
    except aiohttp.WSServerHandshakeError as e:
        assert e.status == 401


async def test_a_websocket_is_closed_when_its_token_expires(issuer: DevIssuer, make_sidecar: MakeSidecar) -> None:
    sc = await make_sidecar(issuer, leeway=0, expired_grace=0)
    token = issuer.mint(now=sc.clock.now(), ttl=120)
    async with sc.client.ws_connect("/ws", headers={"Authorization": f"Bearer {token}"}) as ws:
        await ws.receive_json()
        await ws.send_str("still valid")
        assert (await ws.receive_str()) == "still valid"
        sc.clock.advance(121)  # the token is now past exp; the next message finds out
        await ws.send_str("too late")
        msg = await ws.receive()
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == POLICY_VIOLATION
    assert await eventually(lambda: sc.metric("sidecar_websocket_sessions_total", end="token_expired") == 1)


async def test_closing_on_expiry_can_be_turned_off(issuer: DevIssuer, make_sidecar: MakeSidecar) -> None:
    sc = await make_sidecar(issuer, leeway=0, expired_grace=0, websocket_close_on_expiry=False)
    token = issuer.mint(now=sc.clock.now(), ttl=120)
    async with sc.client.ws_connect("/ws", headers={"Authorization": f"Bearer {token}"}) as ws:
        await ws.receive_json()
        sc.clock.advance(3600)
        await ws.send_str("long lived")
        assert (await ws.receive_str()) == "long lived"
