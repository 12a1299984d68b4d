"""Reference: the least a Python JWT proxy can do per request. Not a product: the floor the lean engine's cost
is measured against, and what every feature on top of it costs.

uvloop, llhttp (httptools) both ways, a dict of tokens already verified (PyJWT on a miss, keys from a JWKS
file or URL), one upstream connection per client connection, the app's response relayed as it arrives. No policy,
no limits, no header hygiene, no metrics, no timeouts, no request bodies: never put it in front of anything.

    python loadtest/bench/floor.py --listen 127.0.0.1:P --upstream http://127.0.0.1:U --jwks JWKS_FILE_OR_URL \
        --iss ISSUER --aud AUDIENCE
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import urllib.request
from typing import Any

import httptools
import jwt
import uvloop

HOP = {b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade", b"proxy-authorization"}
UNAUTHORIZED = (
    b'HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Bearer error="invalid_token"\r\ncontent-length: 0\r\n\r\n'
)


class Tokens:
    def __init__(self, jwks: str, iss: str, aud: str) -> None:
        if jwks.startswith("http://"):  # read once at start
            with urllib.request.urlopen(jwks, timeout=10) as f:
                doc = json.load(f)
        else:
            with open(jwks) as f:
                doc = json.load(f)
        jwks_set = jwt.PyJWKSet.from_dict(doc)
        self.keys: dict[str | None, tuple[Any, str]] = {k.key_id: (k.key, k.algorithm_name) for k in jwks_set.keys}
        self.iss, self.aud = iss, aud
        self.seen: dict[bytes, float] = {}

    def valid(self, token: bytes) -> bool:
        exp = self.seen.get(token)
        if exp is not None and exp > time.time():
            return True
        try:
            text = token.decode("ascii")
            key, alg = self.keys[jwt.get_unverified_header(text).get("kid")]
            claims = jwt.decode(
                text,
                key,
                algorithms=[alg],
                audience=self.aud,
                issuer=self.iss,
                options={"require": ["exp", "iss", "aud"]},
            )
        except (jwt.InvalidTokenError, KeyError, UnicodeDecodeError):
            return False
        if len(self.seen) > 100_000:
            self.seen.clear()
        self.seen[token] = float(claims["exp"])
        return True


class App(asyncio.Protocol):
    def __init__(self, client: Client) -> None:
        self.client = client
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.client.write(data)
        self.parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class Client(asyncio.Protocol):
    def __init__(self, tokens: Tokens, upstream: tuple[str, int]) -> None:
        self.tokens, self.upstream = tokens, upstream
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.app: App | None = None
        self.waiting: list[bytes] = []
        self.url = b""
        self.lines: list[bytes] = []
        self.auth: bytes | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            self.close()

    def on_message_begin(self) -> None:
        self.url, self.lines, self.auth = b"", [], None

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        low = name.lower()
        if low == b"authorization":
            self.auth = value
        if low not in HOP:
            self.lines.append(name + b": " + value)

    def on_message_complete(self) -> None:
        auth = self.auth
        if auth is None or not auth.startswith(b"Bearer ") or not self.tokens.valid(auth[7:]):
            self.write(UNAUTHORIZED)
            return
        head = b"%s %s HTTP/1.1\r\n%s\r\nx-forwarded-for: 127.0.0.1\r\n\r\n" % (
            self.parser.get_method(),
            self.url,
            b"\r\n".join(self.lines),
        )
        if self.app is not None and self.app.transport is not None:
            self.app.transport.write(head)
            return
        self.waiting.append(head)
        if len(self.waiting) == 1:
            asyncio.get_running_loop().create_task(self.connect())

    async def connect(self) -> None:
        _, self.app = await asyncio.get_running_loop().create_connection(lambda: App(self), *self.upstream)
        assert self.app.transport is not None
        self.app.transport.writelines(self.waiting)
        self.waiting = []

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.app is not None and self.app.transport is not None:
            self.app.transport.close()


async def serve(args: argparse.Namespace) -> None:
    tokens = Tokens(args.jwks, args.iss, args.aud)
    host, _, port = args.upstream.split("//", 1)[1].rstrip("/").rpartition(":")
    upstream = (host, int(port))
    listen_host, _, listen_port = args.listen.rpartition(":")
    loop = asyncio.get_running_loop()
    await loop.create_server(lambda: Client(tokens, upstream), listen_host, int(listen_port), backlog=4096)
    await asyncio.Event().wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name in ("listen", "upstream", "jwks", "iss", "aud"):
        ap.add_argument("--" + name, required=True)
    uvloop.run(serve(ap.parse_args()))


if __name__ == "__main__":
    main()
