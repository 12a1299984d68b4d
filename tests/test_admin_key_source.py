"""/admin/keys names each provider's key source by its kind: a file is `jwks_file`, a URL is `jwks_url`."""

from __future__ import annotations

import json
from pathlib import Path

from sidecar.devtools.issuer import DevIssuer
from tests.conftest import AUDIENCE, MakeSidecar


async def test_a_file_source_is_listed_as_jwks_file(
    make_sidecar: MakeSidecar, issuer: DevIssuer, tmp_path: Path
) -> None:
    f = tmp_path / "jwks.json"
    f.write_text(json.dumps(issuer.jwks()))
    sc = await make_sidecar(issuer, providers=[{"issuer": issuer.issuer, "audiences": [AUDIENCE], "jwks_file": str(f)}])
    listing = await (await sc.admin.get("/admin/keys")).json()
    entry = listing[0]
    assert entry["jwks_file"] == str(f) and "jwks_url" not in entry


async def test_a_url_source_is_listed_as_jwks_url(make_sidecar: MakeSidecar, issuer: DevIssuer) -> None:
    sc = await make_sidecar(issuer)
    listing = await (await sc.admin.get("/admin/keys")).json()
    entry = listing[0]
    assert entry["jwks_url"] == f"{issuer.issuer}/jwks.json" and "jwks_file" not in entry
