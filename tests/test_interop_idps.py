"""Every identity provider in docs/interop.md, in the shape it publishes, through the real sidecar.

Per IdP (tests/fixtures/idp/<idp>/): a real aiohttp server on 127.0.0.1 serves that IdP's discovery
document and key set (keys generated for this run, with `x5c`/`x5t` where the IdP publishes them); a token
in that IdP's header and claim shape is signed with a generated key; the sidecar, configured with the
provider config the matrix documents, must answer 200 with the documented claim-to-scope mapping, and the
documented refusals with their status and reason.
"""

from __future__ import annotations

import base64
import copy
import datetime
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.conftest import InProc, Upstream
from tests.idp_support import private_ca, serve, start_sidecar, wait_ready

FIXTURES = Path(__file__).parent / "fixtures" / "idp"
IDPS = sorted(p.name for p in FIXTURES.iterdir() if (p / "case.yaml").exists())
X509_IDPS = sorted(n for n in IDPS if (FIXTURES / n / "x509.json").exists())
_WHOLE = re.compile(r"^\{\{([^{}]+)\}\}$")
_PART = re.compile(r"\{\{(base|issuer|ca_file|token_file)\}\}")
SA_TOKEN = "eyJhbGciOiJSUzI1NiJ9.c2lkZWNhci1zYS10b2tlbg.c2lnbmF0dXJl"  # the sidecar's own (fake) SA token


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _int_b64url(n: int) -> str:
    return _b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))


@dataclass
class Material:
    """A generated RSA key, its self-signed certificate, and every value a fixture may ask for."""

    private: rsa.RSAPrivateKey
    values: dict[str, Any]


def material(cn: str) -> Material:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = private.public_key()
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(private, hashes.SHA256())
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    spki = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    numbers = public.public_numbers()
    return Material(
        private,
        {
            "n": _int_b64url(numbers.n),
            "e": _int_b64url(numbers.e),
            "x5c": [base64.b64encode(der).decode()],  # RFC 7517 §4.7: standard base64, not base64url
            "x5t": _b64url(hashlib.sha1(der).digest()),
            "x5t#S256": _b64url(hashlib.sha256(der).digest()),
            "spki#S256": _b64url(hashlib.sha256(spki).digest()),
            "sha1-hex": hashlib.sha1(der).hexdigest().upper(),
            "pem": cert.public_bytes(serialization.Encoding.PEM).decode(),
        },
    )


def fill(obj: Any, values: Mapping[str, Any]) -> Any:
    """Placeholders replaced: a string that is exactly {{name}} becomes the value itself (a list, a number)."""
    if isinstance(obj, dict):
        return {fill(k, values): fill(v, values) for k, v in obj.items()}
    if isinstance(obj, list):
        return [fill(x, values) for x in obj]
    if isinstance(obj, str):
        m = _WHOLE.match(obj)
        if m and m.group(1) in values:
            return values[m.group(1)]
        return _PART.sub(lambda p: str(values[p.group(1)]) if p.group(1) in values else p.group(0), obj)
    return obj


def patched(base: dict[str, Any], patch: Mapping[str, Any] | None) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in (patch or {}).items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def _load(idp: str, name: str) -> Any:
    path = FIXTURES / idp / name
    return yaml.safe_load(path.read_text()) if name.endswith(".yaml") else json.loads(path.read_text())


class FixtureIdP:
    """One IdP's published documents, filled with this run's keys, and a token minter in its shape."""

    def __init__(self, idp: str, base: str, extra: Mapping[str, str]) -> None:
        self.idp = idp
        self.case: dict[str, Any] = _load(idp, "case.yaml")
        template = _load(idp, "jwks.json")
        self.materials = [material(f"{idp}-{i}") for i in range(len(template["keys"]))]
        common = {"base": base, **extra}
        self.jwks = {
            "keys": [fill(fill(k, m.values), common) for k, m in zip(template["keys"], self.materials, strict=True)]
        }
        self.providers: list[dict[str, Any]] = fill(self.case["providers"], common)
        self.issuer = self.providers[0]["issuer"]
        self.common = {**common, "issuer": self.issuer}
        self.docs: dict[str, Any] = {}
        for path, name in self.case["serve"].items():
            if name == "jwks.json":
                self.docs[path] = self.jwks
            elif name == "x509.json":
                self.docs[path] = self._x509(_load(idp, name))
            else:
                self.docs[path] = fill(_load(idp, name), self.common)
        self.token_shape = _load(idp, "token.json")

    def _x509(self, template: dict[str, str]) -> dict[str, str]:
        by_kid = {k["kid"]: m for k, m in zip(self.jwks["keys"], self.materials, strict=True)}
        return {kid: by_kid[kid].values["pem"] for kid in template}

    def mint(self, now: float, claims_patch: Mapping[str, Any] | None = None) -> str:
        signer = self.materials[self.token_shape["sign_with"]]
        header = fill(self.token_shape["header"], signer.values)
        times = {"iat": int(now), "nbf": int(now), "exp": int(now) + 3600, "auth_time": int(now) - 60}
        claims = patched(fill(self.token_shape["claims"], {**self.common, **times}), claims_patch)
        alg = header.pop("alg")
        header.setdefault("typ", "")  # PyJWT adds typ: JWT unless told otherwise; not every IdP sends it
        body = json.dumps(claims, separators=(",", ":")).encode()
        return jwt.api_jws.encode(body, signer.private, algorithm=alg, headers=header)


async def _outcome(sc: InProc, token: str, path: str, method: str = "GET") -> tuple[int, str | None]:
    r = await sc.client.request(method, path, headers={"Authorization": f"Bearer {token}"})
    body = await r.json() if r.content_type == "application/json" else {}
    return r.status, None if r.status == 200 else body.get("reason")


class Published:
    """The IdP's HTTP side. Its documents name its own URL, so they are filled in once it listens."""

    def __init__(self, paths: list[str], bearer: str | None) -> None:
        self.docs: dict[str, Any] = {}
        self.bearer = bearer
        self.app = web.Application()
        for path in paths:
            self.app.router.add_get(path, self._answer)

    async def _answer(self, request: web.Request) -> web.Response:
        if self.bearer is not None and request.headers.get("Authorization") != f"Bearer {self.bearer}":
            return web.json_response({"kind": "Status", "code": 401, "reason": "Unauthorized"}, status=401)
        return web.json_response(self.docs[request.path])


async def _run(idp: str, aiohttp_client: Any, upstream: Upstream, tmp_path: Path, x509_variant: bool = False) -> None:
    case = _load(idp, "case.yaml")
    extra: dict[str, str] = {}
    tls = None
    if case.get("tls"):
        ca = private_ca(f"{idp} cluster CA")
        extra["ca_file"] = ca.write_ca(tmp_path / "ca.crt")
        tls = ca.server_context(tmp_path)
    if case.get("require_bearer"):
        (tmp_path / "token").write_text(SA_TOKEN)
        extra["token_file"] = str(tmp_path / "token")
    published = Published(list(case["serve"]), SA_TOKEN if case.get("require_bearer") else None)
    async with serve(published.app, tls) as base:
        fx = FixtureIdP(idp, base, extra)
        published.docs = fx.docs
        providers = fx.providers
        if x509_variant:  # the same keys, published as {kid: PEM certificate}, for every provider of the row
            x509_url = fill(case["x509_jwks_url"], {"base": base})
            providers = [
                {**{k: v for k, v in p.items() if k not in ("jwks_url", "discovery")}, "jwks_url": x509_url}
                for p in providers
            ]
        sc = await start_sidecar(aiohttp_client, upstream.url, providers, rules=case.get("rules", []))
        assert await wait_ready(sc), [pk.last_error for pk in sc.state.keys]
        for reason, n in (case.get("expect_ignored") or {}).items():
            assert sc.metric("sidecar_jwks_keys_ignored_total", provider=providers[0]["name"], reason=reason) == n
        now = sc.clock.now()
        for ok in case["accept"]:
            token = fx.mint(now, ok.get("claims"))
            assert await _outcome(sc, token, ok["path"], ok.get("method", "GET")) == (200, None), ok
        for no in case["refuse"]:
            token = fx.mint(now, no.get("claims"))
            got = await _outcome(sc, token, no["path"], no.get("method", "GET"))
            assert got == (no["status"], no["reason"]), no["why"]


@pytest.mark.parametrize("idp", IDPS)
async def test_idp_tokens_pass_with_the_documented_config_and_map_to_scopes(
    idp: str, aiohttp_client: Any, upstream: Upstream, tmp_path: Path
) -> None:
    await _run(idp, aiohttp_client, upstream, tmp_path)


@pytest.mark.parametrize("idp", X509_IDPS)
async def test_idp_x509_certificate_map_key_set_works_too(
    idp: str, aiohttp_client: Any, upstream: Upstream, tmp_path: Path
) -> None:
    await _run(idp, aiohttp_client, upstream, tmp_path, x509_variant=True)


def test_every_idp_of_the_matrix_has_a_fixture_and_a_row() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "interop.md").read_text()
    for idp in IDPS:
        case = _load(idp, "case.yaml")
        assert f"tests/fixtures/idp/{idp}/" in doc, idp
        assert case["name"].split(" (")[0] in doc, case["name"]
    assert len(IDPS) >= 13
