"""Test helpers for key sources: a private CA made at run time, servers on loopback, an in-process sidecar."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sidecar.admin import admin_app
from sidecar.app import STATE, build_state, proxy_app
from sidecar.clock import FakeClock
from sidecar.config import load
from tests.conftest import InProc


@dataclass
class PrivateCA:
    """A CA and a server certificate for 127.0.0.1 / localhost, both generated now."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    def write_ca(self, path: Path) -> str:
        path.write_bytes(self.ca_pem)
        return str(path)

    def server_context(self, tmp: Path) -> ssl.SSLContext:
        cert, key = tmp / "server.pem", tmp / "server.key"
        cert.write_bytes(self.cert_pem)
        key.write_bytes(self.key_pem)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        return ctx


def private_ca(name: str = "jwt-sidecar test CA") -> PrivateCA:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return PrivateCA(
        ca_pem=ca.public_bytes(serialization.Encoding.PEM),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )


@asynccontextmanager
async def serve(app: web.Application, tls: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    """Serve app on 127.0.0.1 (a port picked now) in the test's own loop; yields its base URL."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def start_sidecar(aiohttp_client: Any, upstream_url: str, providers: list[dict[str, Any]], **top: Any) -> InProc:
    """An in-process sidecar (proxy + admin apps, refreshers running) for the given providers; does not wait."""
    raw = {"upstream": upstream_url, "providers": providers, "leeway": 60, **top}
    clock = FakeClock(time.time())
    state = build_state(load(raw), clock)
    client = await aiohttp_client(proxy_app(state))
    admin = await aiohttp_client(admin_app(state, STATE))
    return InProc(client, admin, state, clock)


async def wait_ready(sc: InProc, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if sc.state.ready():
            return True
        await asyncio.sleep(0.02)
    return sc.state.ready()


async def wait_fetches(sc: InProc, result: str, provider: str = "default", seconds: float = 5.0) -> float:
    """Wait until at least one fetch with this result is counted; returns the count."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        n = sc.metric("sidecar_jwks_fetches_total", provider=provider, result=result)
        if n:
            return n
        await asyncio.sleep(0.02)
    return sc.metric("sidecar_jwks_fetches_total", provider=provider, result=result)
