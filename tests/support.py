"""Test harness: real servers on loopback ports chosen at run time, and a real `sidecar run` process."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on, never one this process was given before: once the probe socket closes, the
    kernel may offer the same port to the next probe, and two listeners of one sidecar would then collide."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


class ThreadedServer:
    """An aiohttp app served from its own thread and loop, so sync tests and subprocesses can call it;
    over https when given a TLS context."""

    def __init__(self, app: web.Application, tls: ssl.SSLContext | None = None) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._runner: web.AppRunner | None = None
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)

            async def start() -> None:
                self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
                await self._runner.setup()
                site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=tls)
                await site.start()
                self.port = self._runner.addresses[0][1]

            self.loop.run_until_complete(start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)
        self.scheme = "http" if tls is None else "https"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def stop(self) -> None:
        async def stop() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    url: str,
    method: str = "GET",
    path: str = "/",
    headers: list[tuple[str, str]] | Mapping[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 10,
) -> Reply:
    """One HTTP/1.1 request via http.client; headers may repeat (a list of pairs)."""
    host = url.split("//", 1)[1]
    conn = http.client.HTTPConnection(host, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])
        for k, v in pairs:
            conn.putheader(k, v)
        if body is not None and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in pairs):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return Reply(resp.status, resp.getheaders(), resp.read())
    finally:
        conn.close()


def raw(port: int, data: bytes, timeout: float = 5) -> bytes:
    """Send raw bytes and read until the server closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)


class SidecarProcess:
    """`python -m sidecar run ...` as a real process on free loopback ports."""

    def __init__(self, args: list[str], env: Mapping[str, str] | None = None) -> None:
        self.port = free_port()
        self.admin_port = free_port()
        self.args = [
            "--listen",
            f"127.0.0.1:{self.port}",
            "--admin-listen",
            f"127.0.0.1:{self.admin_port}",
            *args,
        ]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = ROOT / ".pytest_cache" / f"sidecar-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self, wait: str = "/readyz", timeout: float = 20) -> SidecarProcess:
        self._log.parent.mkdir(exist_ok=True)
        self.log_file = open(self._log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "run", *self.args],
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=ROOT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sidecar exited {self.proc.returncode}:\n{self.logs()}")
            try:
                if request(self.admin, path=wait, timeout=1).status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"sidecar not answering {wait} after {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        return self._log.read_text(errors="replace") if self._log.exists() else ""

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.logs().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def metric(self, name: str, **labels: str) -> float:
        return scrape(self.admin).get(series(name, **labels), 0.0)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()
        return self.proc.returncode


def series(name: str, **labels: str) -> str:
    if not labels:
        return name
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def scrape(admin_url: str) -> dict[str, float]:
    """Exposition text → {series: value}, label order normalised."""
    text = request(admin_url, path="/metrics").body.decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if "{" in key:
            name, _, rest = key.partition("{")
            pairs = sorted(p for p in _split_labels(rest.rstrip("}")))
            key = f"{name}{{{','.join(pairs)}}}"
        out[key] = float(value)
    return out


def _split_labels(s: str) -> list[str]:
    parts, cur, quoted = [], "", False
    for c in s:
        if c == '"':
            quoted = not quoted
        if c == "," and not quoted:
            parts.append(cur)
            cur = ""
        else:
            cur += c
    if cur:
        parts.append(cur)
    return parts


# --- key sets in the shapes IdPs publish, and tokens signed byte for byte (appended for issues 9 and 15) ----

import base64  # noqa: E402
import datetime  # noqa: E402

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ed448, ed25519  # noqa: E402
from cryptography.hazmat.primitives.serialization import Encoding  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402
from jwt.algorithms import get_default_algorithms  # noqa: E402


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def sign_raw(header: bytes, payload: bytes, private: Any, alg: str) -> str:
    """A compact JWS over exactly these header and payload bytes (any encoding a test wants to try)."""
    signing_input = f"{b64url(header)}.{b64url(payload)}"
    signature = get_default_algorithms()[alg].sign(signing_input.encode(), private)
    return f"{signing_input}.{b64url(signature)}"


def certificate(private: Any, name: str = "sidecar-test") -> x509.Certificate:
    """A self-signed certificate around a key, as Google and Entra ID publish theirs (a key container)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=14))
    )
    eddsa = isinstance(private, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
    return builder.sign(private, None if eddsa else hashes.SHA256())


def certificate_pem(private: Any) -> str:
    return certificate(private).public_bytes(Encoding.PEM).decode()


def certificate_x5c(private: Any) -> list[str]:
    return [base64.b64encode(certificate(private).public_bytes(Encoding.DER)).decode()]


class KeySetServer:
    """Serves whatever key-set document a test sets, so it can rotate and revoke keys under a real process."""

    def __init__(self) -> None:
        self.doc: Any = {"keys": []}
        self.fetches = 0
        app = web.Application()
        app.router.add_get("/jwks.json", self._serve)
        self.server = ThreadedServer(app)
        self.url = f"{self.server.url}/jwks.json"

    async def _serve(self, request: web.Request) -> web.Response:
        self.fetches += 1
        return web.json_response(self.doc)

    def stop(self) -> None:
        self.server.stop()


# nginx's main config for tests that put a real nginx in front: the `http` block's own directives follow
_NGINX_MAIN = """user root;
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy; fastcgi_temp_path {tmp}/fcgi;
  uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
"""


@contextlib.contextmanager
def nginx(tmp: Path, http: str, probe: str) -> Iterator[subprocess.Popen[bytes]]:
    """A real nginx (Debian's; .ci/run installs it) with `http` inside its http block, running until the
    block ends; started once `probe` (a URL) answers."""
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(exe).exists(), "Debian's nginx is needed for the gateway tests; .ci/run installs it"
    (tmp / "nginx.conf").write_text(_NGINX_MAIN.format(tmp=tmp) + http + "}\n")
    proc = subprocess.Popen([exe, "-c", str(tmp / "nginx.conf"), "-p", str(tmp)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                request(probe, path="/public/ping", timeout=1)
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)
