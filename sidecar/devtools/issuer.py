"""A dev identity provider: JWKS + OIDC discovery + token minting, with key rotation and outage modes."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

OUTAGE_MODES = ("off", "500", "garbage", "hang", "empty")


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    def public_jwk(self) -> dict[str, Any]:
        pub = self.private.public_key()
        if self.alg.startswith(("RS", "PS")):
            jwk = RSAAlgorithm.to_jwk(pub, as_dict=True)
        elif self.alg.startswith("ES"):
            jwk = ECAlgorithm.to_jwk(pub, as_dict=True)
        else:
            jwk = OKPAlgorithm.to_jwk(pub, as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}


def new_key(alg: str = "RS256", kid: str | None = None, bits: int = 2048) -> SigningKey:
    if alg.startswith(("RS", "PS")):
        private: Any = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    elif alg == "ES384":
        private = ec.generate_private_key(ec.SECP384R1())
    elif alg == "ES512":
        private = ec.generate_private_key(ec.SECP521R1())
    elif alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f"unsupported alg {alg}")
    return SigningKey(kid=kid or f"{alg.lower()}-{uuid.uuid4().hex[:8]}", alg=alg, private=private)


class DevIssuer:
    """State of the dev IdP. `app()` serves it; tests also call its methods directly."""

    def __init__(self, issuer: str = "", audience: str = "demo-api", alg: str = "RS256") -> None:
        self.issuer = issuer
        self.audience = audience
        self.keys: list[SigningKey] = [new_key(alg)]
        self.signing = self.keys[0]
        self.outage = "off"
        self.jwks_fetches = 0
        self.extra_keys: list[dict[str, Any]] = []  # raw JWK entries published as-is (weak, oct, enc...)
        self.cache_control: str | None = None

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk() for k in self.keys] + self.extra_keys}

    def mint(
        self,
        sub: str = "demo-user",
        ttl: float = 300,
        now: float | None = None,
        key: SigningKey | None = None,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        now = time.time() if now is None else now
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": sub,
            "iat": int(now),
            "exp": int(now + ttl),
            "jti": uuid.uuid4().hex,
        }
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        key = key or self.signing
        # The JWS layer signs any JSON, so tests can mint claims PyJWT's encoder would refuse (`iss` as a list).
        body = json.dumps(payload, separators=(",", ":")).encode()
        return jwt.api_jws.encode(body, key.private, algorithm=key.alg, headers={"kid": key.kid, **(headers or {})})

    def rotate(self, keep_old: bool = True, alg: str | None = None) -> SigningKey:
        key = new_key(alg or self.signing.alg)
        self.keys = [*self.keys, key] if keep_old else [key]
        self.signing = key
        return key

    def remove(self, kid: str) -> None:
        self.keys = [k for k in self.keys if k.kid != kid]

    # --- HTTP ----------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks.json", self._jwks)
        app.router.add_route("*", "/token", self._token)
        app.router.add_route("*", "/token.txt", self._token_text)
        app.router.add_post("/rotate", self._rotate)
        app.router.add_post("/outage", self._outage)
        return app

    async def _discovery(self, request: web.Request) -> web.Response:
        return web.json_response({"issuer": self.issuer, "jwks_uri": f"{self.issuer}/jwks.json"})

    async def _jwks(self, request: web.Request) -> web.StreamResponse:
        self.jwks_fetches += 1
        if self.outage == "500":
            return web.Response(status=500, text="upstream IdP error")
        if self.outage == "garbage":
            return web.Response(text="<html>not json", content_type="text/html")
        if self.outage == "empty":
            return web.json_response({"keys": []})
        if self.outage == "hang":
            await asyncio.sleep(3600)
        headers = {"Cache-Control": self.cache_control} if self.cache_control else None
        return web.json_response(self.jwks(), headers=headers)

    async def _minted(self, request: web.Request) -> str:
        q: dict[str, Any] = dict(request.query)
        if request.can_read_body:
            q.update(await request.json())
        ttl = float(q.pop("ttl", 300))
        sub = str(q.pop("sub", "demo-user"))
        return self.mint(sub=sub, ttl=ttl, **q)

    async def _token(self, request: web.Request) -> web.Response:
        return web.json_response({"access_token": await self._minted(request), "kid": self.signing.kid})

    async def _token_text(self, request: web.Request) -> web.Response:
        """The bare token, for `-H "Authorization: Bearer $(curl -s .../token.txt?sub=me)"`."""
        return web.Response(text=await self._minted(request))

    async def _rotate(self, request: web.Request) -> web.Response:
        keep = request.query.get("keep_old", "1") != "0"
        key = self.rotate(keep_old=keep)
        return web.json_response({"kid": key.kid, "published": [k.kid for k in self.keys]})

    async def _outage(self, request: web.Request) -> web.Response:
        mode = request.query.get("mode", "off")
        if mode not in OUTAGE_MODES:
            return web.json_response({"error": f"mode must be one of {OUTAGE_MODES}"}, status=400)
        self.outage = mode
        return web.json_response({"outage": mode})


def main() -> None:  # pragma: no cover - manual use
    import argparse

    p = argparse.ArgumentParser(description="dev issuer: JWKS, discovery, and tokens at /token (JSON) or /token.txt")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--audience", default="demo-api")
    a = p.parse_args()
    issuer = DevIssuer(audience=a.audience)

    async def run() -> None:
        runner = web.AppRunner(issuer.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", a.port)
        await site.start()
        port = runner.addresses[0][1]
        issuer.issuer = f"http://127.0.0.1:{port}"
        print(json.dumps({"issuer": issuer.issuer, "jwks_url": f"{issuer.issuer}/jwks.json"}), flush=True)
        print(f"# a token: curl -s '{issuer.issuer}/token.txt?sub=me'", flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":  # pragma: no cover
    main()
