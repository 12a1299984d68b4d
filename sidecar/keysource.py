"""One HTTP GET of a provider's key document (JWKS or discovery): TLS trust, credentials, the whole body.

The fetcher (`fetcher.ProviderKeys`) decides when to fetch; this module decides how. Three promises:
- the body is read to its end, however it arrives (chunked, paused, many socket reads), and never beyond
  `jwks.max_bytes`: refused early by `Content-Length`, and by counting while streaming;
- with `ca_file`, that PEM bundle is the only trust for the provider's endpoints (the system store is not
  consulted), re-read when the file changes;
- with `jwks_auth.bearer_token_file`, the token is re-read on every fetch (projected service-account tokens
  rotate) and sent only over https to the configured key-source origin, never on a redirect (redirects are
  not followed at all) nor to a `jwks_uri` on another origin, and never logged.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from sidecar.config import Provider
from sidecar.extract import is_b64token

_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*(\d+)", re.I)
_TOKEN_FILE_LIMIT = 64 * 1024


class FetchError(Exception):
    def __init__(self, result: str, detail: str) -> None:
        super().__init__(f"{result}: {detail}")
        self.result = result  # a sidecar_jwks_fetches_total result label


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) with the default port filled in: what "the same server" means for credentials."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").lower(), port


def credential_origin(provider: Provider) -> tuple[str, str, int] | None:
    """The one origin the provider's bearer token may be sent to: its jwks_url's, or with discovery its issuer's."""
    if provider.jwks_url:
        return origin(provider.jwks_url)
    if provider.discovery:
        return origin(provider.issuer)
    return None


class _Watched:
    """A value built from a file, rebuilt only when the file changes (inode, size, mtime)."""

    def __init__(self, path: str, build: Callable[[str], Any]) -> None:
        self.path = path
        self._build = build
        self._sig: tuple[int, int, int, int] | None = None
        self._value: Any = None

    def get(self) -> Any:
        st = os.stat(self.path)  # follows the ..data symlink Kubernetes swaps on rotation
        sig = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if sig != self._sig:
            self._value = self._build(self.path)
            self._sig = sig
        return self._value


def _tls_context(path: str) -> ssl.SSLContext:
    # cafile given: create_default_context loads only it, so the system store is not trusted for this provider.
    return ssl.create_default_context(cafile=path)


class KeySource:
    """How one provider's documents are fetched. Built once per provider; holds no connection of its own."""

    def __init__(self, provider: Provider, max_bytes: int, fetch_timeout: float) -> None:
        self.provider = provider
        self.max_bytes = max_bytes
        self.fetch_timeout = fetch_timeout
        self._ca = _Watched(provider.ca_file, _tls_context) if provider.ca_file else None
        auth = provider.jwks_auth
        self._token_file = auth.bearer_token_file if auth is not None else None
        self._credential_origin = credential_origin(provider) if auth is not None else None

    def _tls(self) -> ssl.SSLContext | bool:
        if self._ca is None:
            return True  # default verification against the system store
        try:
            ctx: ssl.SSLContext = self._ca.get()
        except (OSError, ssl.SSLError, ValueError) as e:
            raise FetchError("refused", f"cannot load ca_file {self.provider.ca_file}: {_why(e)}") from None
        return ctx

    def _headers(self, url: str) -> dict[str, str]:
        if self._token_file is None:
            return {}
        if origin(url) != self._credential_origin or origin(url)[0] != "https":
            return {}  # a jwks_uri on another origin (or plain http) never sees the credential
        try:
            with open(self._token_file, "rb") as f:
                raw = f.read(_TOKEN_FILE_LIMIT + 1)
        except OSError as e:
            raise FetchError(
                "refused", f"cannot read jwks_auth.bearer_token_file {self._token_file}: {_why(e)}"
            ) from None
        try:
            token = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            token = ""
        # RFC 6750 §2.1 b64token, what may follow "Bearer " unquoted: anything else (CR, LF, spaces) is refused,
        # so a token file can never inject a header
        if len(raw) > _TOKEN_FILE_LIMIT or not is_b64token(token):
            # The content is never quoted: it is a credential, or garbage that may contain one.
            raise FetchError(
                "refused", f"jwks_auth.bearer_token_file {self._token_file} does not hold one bearer token"
            )
        return {"Authorization": f"Bearer {token}"}

    async def get(
        self, session: aiohttp.ClientSession, url: str, on_date: Callable[[str | None], None]
    ) -> tuple[bytes, int | None]:
        """GET url: the whole body (at most max_bytes) and the Cache-Control max-age, or a FetchError."""
        headers = self._headers(url)
        tls = self._tls()
        timeout = aiohttp.ClientTimeout(total=self.fetch_timeout)
        try:
            async with session.get(url, timeout=timeout, allow_redirects=False, headers=headers, ssl=tls) as resp:
                on_date(resp.headers.get("Date"))
                if resp.status != 200:
                    raise FetchError("http_error", f"GET {url} answered {resp.status}")
                body = await self._body(resp, url)
                max_age = _MAX_AGE.search(resp.headers.get("Cache-Control", ""))
                return body, int(max_age.group(1)) if max_age else None
        except TimeoutError:
            raise FetchError("timeout", f"GET {url} took longer than {self.fetch_timeout:g}s") from None
        except aiohttp.ClientConnectorCertificateError:
            raise FetchError("refused", f"GET {url}: the server's TLS certificate is not trusted") from None
        except aiohttp.ClientConnectionError as e:
            raise FetchError("refused", f"GET {url}: {e.__class__.__name__}") from None
        except aiohttp.ClientError as e:
            raise FetchError("http_error", f"GET {url}: {e.__class__.__name__}") from None

    async def _body(self, resp: aiohttp.ClientResponse, url: str) -> bytes:
        limit = self.max_bytes
        if resp.content_length is not None and resp.content_length > limit:
            raise FetchError("invalid", f"GET {url}: Content-Length {resp.content_length} is over {limit} bytes")
        body = bytearray()
        # iter_any yields whatever each read brings; a body split over many reads is joined here, and the
        # count (of decoded bytes) stops a server that streams more than it announced, or announces nothing.
        async for chunk in resp.content.iter_any():
            body += chunk
            if len(body) > limit:
                raise FetchError("invalid", f"GET {url}: body larger than {limit} bytes")
        return bytes(body)


def _why(e: BaseException) -> str:
    return getattr(e, "strerror", None) or getattr(e, "reason", None) or e.__class__.__name__
