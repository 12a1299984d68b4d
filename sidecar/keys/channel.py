"""How key states and asks travel between the pod's fetchers (`KeyHub`) and each worker's views.

With one worker the hub runs in the worker and a `LocalChannel` calls it. With several, the hub runs in the
keys process: `HubServer` listens on a Unix socket in the workers' private directory (mode 0700, so only
this user connects) and every worker holds a `SocketChannel` to it. The wire is JSON lines, in order on
each connection: `{"state": ...}` whenever a provider's state changes (and every state on connect), and
`{"reply": id, ...}` answering `{"ask": id, "provider": ..., "op": ..., "kid": ...}`. A state an ask
caused is written before its reply, so a worker that has its answer also has the new keys. Every state is
also written to `StateFile`, so a worker or keys process that starts later has it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

from sidecar.keys.hub import KeyHub
from sidecar.keys.state import KeyState, StateFile
from sidecar.keys.view import KeyView

log = logging.getLogger("sidecar.keys")
RECONNECT_PAUSE = 0.1  # a restarted keys process is back within a second or two


def line_limit(max_bytes: int) -> int:
    """Longest line on the wire: a state holds the current and the retired keys' JWKs."""
    return 4 * max_bytes + (1 << 16)


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def _deliver_to(views: Sequence[KeyView]) -> dict[str, KeyView]:
    return {v.provider.name: v for v in views}


class LocalChannel:
    """One worker: the hub lives in this process and is called directly."""

    def __init__(self, hub: KeyHub, views: Sequence[KeyView]) -> None:
        self.hub = hub
        self._views = _deliver_to(views)
        hub.subscribe(self.install)
        for v in views:
            v.ask = hub.ask

    def install(self, state: KeyState) -> None:
        view = self._views.get(state.provider)
        if view is not None:
            view.install(state)

    def rewire(self, views: Sequence[KeyView]) -> None:
        """A reload's views: states go to them from now on."""
        self._views = _deliver_to(views)
        for v in views:
            v.ask = self.hub.ask

    async def start(self) -> None:
        await self.hub.start()

    async def close(self) -> None:
        await self.hub.close()


class SocketChannel:
    """A worker's connection to the keys process: states in, asks out. Reconnects when it is restarted;
    meanwhile the views keep the last state they had, and asks are answered "unavailable" at once."""

    def __init__(self, path: str, views: Sequence[KeyView], ask_timeout: float, limit: int) -> None:
        self.path = path
        self._views = _deliver_to(views)
        self._timeout = ask_timeout
        self._limit = limit
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        for v in views:
            v.ask = self.ask

    def install(self, state: KeyState) -> None:
        view = self._views.get(state.provider)
        if view is not None:
            view.install(state)

    def rewire(self, views: Sequence[KeyView]) -> None:
        """A reload's views: states go to them from now on, starting with the latest the keys process wrote
        (it may have reloaded first, and published a new provider's keys before these views existed)."""
        self._views = _deliver_to(views)
        for v in views:
            v.ask = self.ask
        for state in StateFile(os.path.dirname(self.path)).read().values():
            self.install(state)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="keys-channel")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(self.path, limit=self._limit)
            except OSError:
                await asyncio.sleep(RECONNECT_PAUSE)
                continue
            self._writer = writer
            try:
                while line := await reader.readline():
                    self._receive(json.loads(line))
                    self.connected.set()
            except (OSError, ValueError, KeyError, TypeError) as e:  # a broken line or socket: start afresh
                log.warning("keys channel broken; reconnecting", extra={"error": str(e)[:200]})
            finally:
                self._writer = None
                self.connected.clear()
                for fut in self._pending.values():
                    if not fut.done():
                        fut.set_result({"error": "the keys process went away"})
                writer.close()
            await asyncio.sleep(RECONNECT_PAUSE)

    def _receive(self, msg: dict[str, Any]) -> None:
        if "state" in msg:
            self.install(KeyState.from_json(msg["state"]))
        elif "reply" in msg:
            fut = self._pending.get(msg["reply"])
            if fut is not None and not fut.done():
                fut.set_result(msg)

    async def ask(self, provider: str, op: str, kid: str | None = None) -> dict[str, Any]:
        writer = self._writer
        if writer is None:
            return {"error": "the keys process is not reachable"}
        ident = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ident] = fut
        try:
            writer.write(_encode({"ask": ident, "provider": provider, "op": op, "kid": kid}))
            return await asyncio.wait_for(fut, self._timeout)
        except TimeoutError:
            return {"error": f"no answer from the keys process within {self._timeout:g}s"}
        finally:
            self._pending.pop(ident, None)


class HubServer:
    """The keys process's side: every worker's connection, and the state file."""

    def __init__(self, hub: KeyHub, path: str, state_file: StateFile, limit: int) -> None:
        self.hub = hub
        self.path = path
        self.file = state_file
        self._limit = limit
        self._clients: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.AbstractServer | None = None
        hub.subscribe(self.broadcast)

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # left by a keys process that died
        self._server = await asyncio.start_unix_server(self._client, self.path, limit=self._limit)
        self.file.write(self.hub.states())

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._clients):
            w.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def broadcast(self, state: KeyState) -> None:
        self.file.write(self.hub.states())
        line = _encode({"state": state.to_json()})
        for w in list(self._clients):
            if w.is_closing():
                self._clients.discard(w)
            else:
                w.write(line)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for state in self.hub.states():
            writer.write(_encode({"state": state.to_json()}))
        self._clients.add(writer)
        try:
            while line := await reader.readline():
                task = asyncio.create_task(self._answer(writer, json.loads(line)))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except (OSError, ValueError) as e:
            log.warning("a worker's keys channel broke", extra={"error": str(e)[:200]})
        finally:
            self._clients.discard(writer)
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, msg: dict[str, Any]) -> None:
        try:
            answer = await self.hub.ask(str(msg["provider"]), str(msg["op"]), msg.get("kid"))
        except (KeyError, TypeError) as e:
            answer = {"error": f"bad ask: {e}"}
        except Exception as e:  # a bug must not leave the asking request waiting for its timeout
            log.exception("answering a worker's ask failed")
            answer = {"error": f"{e.__class__.__name__} in the keys process"}
        if not writer.is_closing():
            writer.write(_encode({"reply": msg.get("ask"), **answer}))
