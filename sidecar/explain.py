"""`sidecar explain`: what the sidecar decides for one token, check by check, and why.

The decision is the real one: the token goes through `authorize` (route rule, token extraction, the
Verifier's full check and its time check, the route's requirements) exactly as a request does, with a
recording stand-in for the Verifier that calls the real Verifier's own methods and notes each result. The
hot path is untouched: nothing in it knows a trace exists. What this module adds is only the narration:
the decoded token, which provider and key, the signature on its own, each time claim against now with
leeway and grace, the audience and issuer comparisons, and the route rule with its requirements.

Offline (`--config` or the run flags), the keys are fetched once by the same fetcher a pod runs; with
`--admin URL` the running sidecar answers `POST /admin/explain` from its live key state and clock. The
token is never logged, and neither this module nor the admin route writes it anywhere but the answer.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

from sidecar import errors, jose
from sidecar.authorize import authorize
from sidecar.clock import Clock
from sidecar.config import Config
from sidecar.metrics import Metrics
from sidecar.rules import normalise
from sidecar.token_cache import VerifiedToken
from sidecar.verify import Verifier

if TYPE_CHECKING:
    from sidecar.state import Sidecar

SHAPE_VERSION = 1  # bumped only when a documented field changes meaning or goes away (docs/explain.md)
EXIT_ALLOWED, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


async def _token(
    v: Verifier, token: str, now: float
) -> tuple[VerifiedToken | None, float | None, errors.Rejection | None]:
    """The verified token (also when its times refuse it), its grace seconds, and its refusal."""
    try:
        entry = await v._verify_fully(token)
    except errors.Rejection as r:
        return None, None, r
    try:
        return entry, v.times(entry, now), None
    except errors.Rejection as r:
        return entry, None, r


def _same(a: errors.Rejection | None, b: errors.Rejection) -> bool:
    """The request's refusal is the token's own (found twice: once by authorize, once by `_token`)."""
    return a is not None and type(a) is type(b) and a.description == b.description


def _iso(t: float) -> str:
    try:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"{t:.6g} (out of range)"


def _secs(x: float) -> str:
    return f"{x:.0f} s" if abs(x) < 1e12 else f"{x:.3g} s"


def _placed(token: str, source: str) -> tuple[CIMultiDictProxy[str], MultiDictProxy[str]]:
    """A request carrying the token where its provider reads tokens (`token_sources` syntax)."""
    headers: CIMultiDict[str] = CIMultiDict()
    query: MultiDict[str] = MultiDict()
    kind, _, name = source.partition(":")
    if source == "header":
        headers["Authorization"] = f"Bearer {token}"
    elif kind == "header":
        headers[name] = token
    elif kind == "cookie":
        headers["Cookie"] = f"{name}={token}"
    else:
        query[name] = token
    return CIMultiDictProxy(headers), MultiDictProxy(query)


def _numeric(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    try:
        t = float(v)  # an integer like 10**400 is valid JSON and overflows here
    except OverflowError:
        return None
    return t if math.isfinite(t) else None


def _time_claims(
    claims: dict[str, Any], now: float, leeway: float, grace: float, lifetime: float
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name in ("exp", "nbf", "iat"):
        if name not in claims:
            continue
        v = claims[name]
        t = _numeric(v)
        if t is None:
            out.append({"claim": name, "value": v, "ok": False, "text": f"{name} is not a NumericDate in range"})
            continue
        head = f"{name} {_iso(t)}"
        ok = True
        if name == "exp":
            past = now - t
            if past <= 0:
                text = f"{head}: expires in {_secs(-past)}"
            elif past <= leeway:
                text = f"{head}: expired {_secs(past)} ago; leeway {_secs(leeway)} → accepted within leeway"
            elif past <= leeway + grace:
                text = (
                    f"{head}: expired {_secs(past)} ago; leeway {_secs(leeway)}; grace {_secs(grace)}"
                    " → accepted in grace"
                )
            else:
                ok = False
                text = (
                    f"{head}: expired {_secs(past)} ago; leeway {_secs(leeway)}; grace {_secs(grace)}"
                    " → refused (expired)"
                )
            if lifetime and ok:
                iat = claims.get("iat")
                start = float(iat) if isinstance(iat, int | float) else now
                text += f"; lifetime {_secs(t - start)} (max_token_lifetime {_secs(lifetime)})"
        elif name == "nbf":
            ahead = t - now
            if ahead <= 0:
                text = f"{head}: valid since {_secs(-ahead)} ago"
            elif ahead <= leeway:
                text = f"{head}: valid in {_secs(ahead)}; leeway {_secs(leeway)} → accepted within leeway"
            else:
                ok = False
                text = f"{head}: valid in {_secs(ahead)}; leeway {_secs(leeway)} → refused (not_yet_valid)"
        else:
            ahead = t - now
            if ahead <= 0:
                text = f"{head}: issued {_secs(-ahead)} ago"
            elif ahead <= leeway:
                text = f"{head}: {_secs(ahead)} in the future; leeway {_secs(leeway)} → accepted within leeway"
            else:
                ok = False
                text = f"{head}: {_secs(ahead)} in the future; leeway {_secs(leeway)} → refused (issued_in_future)"
        out.append({"claim": name, "value": v, "at": _iso(t), "ok": ok, "text": text})
    return out


def _rule(s: Sidecar, index: int, verdicts: bytes | None) -> dict[str, Any]:
    r = s.rules.rules[index]
    return {
        "name": r.name,
        "path": r.path,
        "kind": r.kind,
        "methods": sorted(r.methods),
        "public": r.public,
        "deny": r.deny,
        "providers": list(r.providers),
        "scopes": list(r.scopes),
        "scopes_any": list(r.scopes_any),
        "claims": [{"claim": c.claim, "equals": list(c.equals)} for c in r.claims],
        "clients": list(r.clients),
        "satisfied": None if verdicts is None else verdicts[index] == 0,
    }


async def explain(
    s: Sidecar, token: str, method: str = "GET", path: str = "/", where: str = "offline"
) -> dict[str, Any]:
    """The explanation as a JSON-ready mapping (the shape in docs/explain.md)."""
    token = token.strip()
    if token[:7].lower() == "bearer ":
        token = token[7:].strip()
    v = s.verifier
    now = s.clock.now()
    mono = s.clock.monotonic()
    checks: list[dict[str, Any]] = []

    def check(name: str, ok: bool | None, text: str) -> None:
        checks.append({"check": name, "ok": ok, "text": text})

    out: dict[str, Any] = {
        "version": SHAPE_VERSION,
        "answered_by": where,
        "now": _iso(now),
        "now_epoch": now,
        "leeway": s.cfg.leeway,
        "grace": s.cfg.expired_grace,
        "request": {"method": method, "path": path},
        "header": None,
        "claims": None,
        "provider": None,
        "key": None,
        "signature": "not checked",
        "times": [],
        "issuer": None,
        "audience": None,
        "route": None,
        "checks": checks,
    }
    jws: jose.Jws | None = None
    try:
        jws = jose.parse(token)
    except errors.Rejection as r:
        check("decode", False, f"not a readable JWS: {r.description}")
    index: int | None = None
    if jws is not None:
        out["header"], out["claims"] = jws.header, jws.claims
        check("decode", True, f"a strict JWS: alg {jws.header.get('alg')!r}, kid {jws.header.get('kid')!r}")
        try:
            index = v._provider_for(jws.claims)
        except errors.Rejection as r:
            check("provider", False, f"{r.description} (configured: {', '.join(p.issuer for p in s.cfg.providers)})")
    if index is not None and jws is not None:
        _provider_and_key(s, v, index, jws, now, mono, out, check)
    canonical = normalise(path.partition("?")[0])
    out["request"]["canonical_path"] = canonical
    source = s.cfg.providers[index if index is not None else 0].token_sources[0]
    out["request"]["token_source"] = source
    headers, query = _placed(token, source)
    # The request's verdict from the real authorize, with a verifier of its own (every step runs, as on a cache
    # miss) and metrics that nobody scrapes: explaining a token is not a request.
    quiet = Metrics(private=True)
    view = dataclasses.replace(s, verifier=v.detached(quiet), metrics=quiet)
    allowed = None
    refusal: errors.Rejection | None = None
    try:
        allowed = await authorize(view, method, canonical, headers, query)
    except errors.Rejection as r:
        refusal = r
    # The token's own verdict, also where the route never read it (a denied route)
    verified, grace, token_failure = await _token(view.verifier, token, s.clock.now())
    route = s.rules.route(method, canonical)
    verdicts = verified.verdicts if verified is not None else None
    out["route"] = {
        "name": route.name,
        "public": route.public,
        "deny": route.deny,
        "rules": [_rule(s, i, verdicts) for i in route.rules],
    }
    if route.rules:
        check("route", None, f"{method} {canonical if canonical is not None else path} → rule {route.name!r}")
    for rule in out["route"]["rules"]:
        needs = [f"scopes {' '.join(rule['scopes'])}"] if rule["scopes"] else []
        needs += [f"any scope of {' '.join(rule['scopes_any'])}"] if rule["scopes_any"] else []
        needs += [f"claim {c['claim']}" + (f" in {c['equals']}" if c["equals"] else "") for c in rule["claims"]]
        needs += [f"client in {rule['clients']}"] if rule["clients"] else []
        needs += [f"provider in {rule['providers']}"] if rule["providers"] else []
        state = {True: "satisfied", False: "NOT satisfied", None: "not evaluated (token not verified)"}[
            rule["satisfied"]
        ]
        check("rule", rule["satisfied"], f"rule {rule['name']!r} needs {'; '.join(needs)}: {state}")
    if not route.rules:
        kind = "denied to everyone" if route.deny else "public (token optional)" if route.public else "any valid token"
        check("route", None, f"{method} {canonical if canonical is not None else path} → rule {route.name!r}: {kind}")
    if token_failure is not None and not _same(refusal, token_failure):
        check("token", False, f"{token_failure.reason}: {token_failure.description}")
    if refusal is not None:
        out.update(verdict="refused", reason=refusal.reason, status=refusal.status, description=refusal.description)
        check("verdict", False, f"refused: {refusal.reason} ({refusal.status}): {refusal.description}")
    elif allowed is not None and allowed.reported is not None:
        # report mode: forwarded without identity, the app told what enforcing would have done
        would = allowed.reported
        out.update(verdict="reported", reason=would.reason, status=would.status, description=would.description)
        check(
            "verdict",
            False,
            f"reported, forwarded ({route.name!r} is in report mode): would be {would.reason} ({would.status}): "
            f"{would.description}; the app gets {s.report_header}: {would.reason}",
        )
        out["identity_headers"] = {}
    else:
        assert allowed is not None
        if allowed.verified is None:
            grace = None  # forwarded without a token (a public path): no grace to speak of
        out.update(verdict="allowed", reason=None, status=200, description=None, grace_seconds=grace)
        how = (
            "in grace"
            if grace is not None
            else "forwarded without identity"
            if allowed.verified is None
            else "forwarded"
        )
        check("verdict", True, f"allowed: {how}" + (f" ({s.grace_header}: {int(grace)})" if grace is not None else ""))
        out["identity_headers"] = dict(allowed.identity)
    out.setdefault("grace_seconds", None)
    return out


def _provider_and_key(
    s: Sidecar, v: Verifier, index: int, jws: jose.Jws, now: float, mono: float, out: dict[str, Any], check: Any
) -> None:
    provider = s.cfg.providers[index]
    pk = s.keys[index]
    st = pk.state
    claims, header = jws.claims, jws.header
    chosen = "the only provider" if len(s.cfg.providers) == 1 else "by iss"
    out["provider"] = {
        "name": provider.name,
        "issuer": provider.issuer,
        "chosen": chosen,
        "key_source": provider.jwks_file or st.jwks_url or provider.jwks_url or "discovery",
        "keys_usable": pk.usable(),
        "keys_age_seconds": None if st.fetched_at is None else round(mono - st.fetched_at, 1),
        "keys_last_error": st.last_error,
        "idp_clock_skew_seconds": st.skew,
    }
    p = out["provider"]
    skew = f"; IdP clock skew {st.skew:+.0f} s (this host minus IdP)" if st.skew is not None else ""
    age = "never fetched" if p["keys_age_seconds"] is None else f"keys {p['keys_age_seconds']:g} s old"
    check(
        "provider",
        True,
        f"{provider.name!r} ({chosen}): {p['key_source']}; {age}{skew}"
        + ("" if pk.usable() else "; NO USABLE KEYS")
        + (f"; last error: {st.last_error}" if st.last_error else ""),
    )
    kid, alg = header.get("kid"), header.get("alg")
    described = {d["thumbprint"]: d for d in pk.keys.describe(mono)}
    key = pk.keys.get(kid, mono) if isinstance(kid, str) else None
    if isinstance(kid, str):
        if key is not None:
            d = described.get(key.thumbprint, {})
            out["key"] = {
                "kid": kid,
                "thumbprint": key.thumbprint,
                "kty": key.kty,
                "state": d.get("state", "current"),
                "retained_for": d.get("retained_for"),
            }
            retained = f", retained for {d['retained_for']:g} s more" if d.get("state") == "retired" else ""
            check("key", True, f"kid {kid!r}: {key.kty} key {key.thumbprint} ({d.get('state', 'current')}{retained})")
        else:
            revoked = kid in st.revoked or kid in provider.revoked_kids
            out["key"] = {
                "kid": kid,
                "thumbprint": None,
                "kty": None,
                "state": "revoked" if revoked else "unknown",
                "retained_for": None,
            }
            check(
                "key",
                False,
                f"kid {kid!r}: "
                + ("revoked" if revoked else "no trusted key has this kid")
                + f" (trusted kids: {', '.join(str(d['kid']) for d in described.values()) or 'none'})",
            )
            check("signature", None, "not checked: no key to check it with")
        if key is not None and isinstance(alg, str) and alg in key.algs and alg in provider.algorithms:
            good = v._verifies(alg, key, jws)
            out["signature"] = "verified" if good else "does not verify"
            check(
                "signature", good, f"{alg} signature " + ("verifies" if good else "does NOT verify") + " with this key"
            )
        elif key is not None:
            check(
                "signature", False, f"alg {alg!r} does not fit this key or provider ({', '.join(provider.algorithms)})"
            )
    elif "kid" in header:
        out["key"] = {"kid": kid, "thumbprint": None, "kty": None, "state": "unknown", "retained_for": None}
        check("key", False, f"kid {json.dumps(kid)} is not a string")
    else:
        n = len(pk.keys.candidates(alg, mono)) if isinstance(alg, str) else 0
        out["key"] = {
            "kid": None,
            "thumbprint": None,
            "kty": None,
            "state": "kid-less",
            "retained_for": None,
            "candidates": n,
        }
        check(
            "key", None, f"no kid: tried against up to {provider.max_kidless_candidates} of {n} keys that fit {alg!r}"
        )
    out["times"] = _time_claims(claims, now, v.leeway, v.grace, provider.max_token_lifetime)
    for t in out["times"]:
        check("time", t["ok"], t["text"])
    iss = claims.get("iss")
    out["issuer"] = {"token": iss, "expected": provider.issuer, "match": iss == provider.issuer}
    check(
        "issuer",
        iss == provider.issuer,
        f"iss {iss!r} " + ("==" if iss == provider.issuer else "!=") + f" {provider.issuer!r}",
    )
    aud = claims.get("aud")
    auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    hit = [a for a in auds if isinstance(a, str) and a in provider.audiences]
    out["audience"] = {"token": aud, "accepted": list(provider.audiences), "match": bool(hit)}
    check(
        "audience",
        bool(hit),
        f"aud {json.dumps(aud)} "
        + (f"names {hit[0]!r}" if hit else "names none")
        + f" of the accepted {', '.join(provider.audiences)}",
    )


# --- the admin route --------------------------------------------------------------------------------------


def _bad(description: str) -> web.Response:
    return web.json_response({"reason": "bad_request", "description": description}, status=400)


async def explain_request(s: Sidecar, request: web.Request) -> web.Response:
    """`POST /admin/explain` {"token", "method"?, "path"?}: the explanation from this worker's live state.

    Called after the admin guard; every worker of a pod holds the same published key state, so any answers."""
    limit = s.cfg.limits.max_token_bytes + 4096
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            return _bad(f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        body = json.loads(raw)
    except ValueError:
        return _bad("the body must be a JSON object")
    if not isinstance(body, dict) or not isinstance(body.get("token"), str):
        return _bad('the body must be a JSON object with a "token" string')
    method, path = body.get("method", "GET"), body.get("path", "/")
    if not isinstance(method, str) or not method.isalpha() or not isinstance(path, str) or not path.startswith("/"):
        return _bad("method must be a word and path must start with /")
    result = await explain(s, body["token"], method.upper(), path, "admin")
    return web.json_response(result)


# --- rendering and the command -------------------------------------------------------------------------


def render_text(e: dict[str, Any]) -> str:
    mark = {True: "ok  ", False: "FAIL", None: "    "}
    lines = [f"explained by: {e['answered_by']} at {e['now']} (leeway {e['leeway']:g} s, grace {e['grace']:g} s)"]
    if e.get("header") is not None:
        lines.append("header: " + json.dumps(e["header"], sort_keys=True))
        lines.append("claims: " + json.dumps(e["claims"], indent=2, sort_keys=True).replace("\n", "\n        "))
    for c in e["checks"]:
        lines.append(f"[{mark[c['ok']]}] {c['check']:<9} {c['text']}")
    reason = e["reason"] or "-"
    lines.append(f"verdict: {e['verdict'].upper()} (status {e['status']}, reason {reason})")
    return "\n".join(lines) + "\n"


def _read_token(arg: str) -> str:
    return sys.stdin.read().strip() if arg == "-" else arg.strip()


def _ask_admin(url: str, token: str, method: str, path: str, timeout: float = 10.0) -> dict[str, Any]:
    body = json.dumps({"token": token, "method": method, "path": path}).encode()
    req = urllib.request.Request(
        url.rstrip("/") + "/admin/explain",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "X-Sidecar-Admin": "explain"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return cast(dict[str, Any], json.loads(resp.read()))
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"the sidecar answered {e.code}: {e.read()[:500].decode(errors='replace')}") from None


async def _offline(cfg: Config, token: str, method: str, path: str, clock: Clock | None = None) -> dict[str, Any]:
    """Build the state a worker builds, fetch every provider's keys once with the pod's fetcher, explain."""
    import aiohttp

    from sidecar.app import build_state
    from sidecar.keys.channel import LocalChannel

    s = build_state(cfg, clock)
    assert isinstance(s.channel, LocalChannel)
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=cfg.jwks.fetch_timeout), headers={"User-Agent": "jwt-sidecar-explain"}
    ) as session:
        for f in s.channel.hub.fetchers:
            f.session = session
            await f.refresh()
        return await explain(s, token, method, path, "offline")


def run(args: argparse.Namespace, clock: Clock | None = None) -> int:
    from sidecar.config import ConfigError, load
    from sidecar.config.sources import merge

    token = _read_token(args.token)
    if not token:
        print("explain: no token given", file=sys.stderr)
        return EXIT_USAGE
    method = args.method.upper()
    if not args.path.startswith("/"):
        print("explain: --path must start with /", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.admin:
            result = _ask_admin(args.admin, token, method, args.path)
        else:
            merged = None
            try:
                merged = merge(args, os.environ)
                cfg = load(merged.raw)
            except ConfigError as e:
                for line in merged.explain(e) if merged else e.lines():
                    print(line, file=sys.stderr)
                return EXIT_USAGE
            result = asyncio.run(_offline(cfg, token, method, args.path, clock))
    except (OSError, RuntimeError, ValueError) as e:
        print(f"explain: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True, ensure_ascii=False))
    else:
        sys.stdout.write(render_text(result))
    return EXIT_ALLOWED if result.get("verdict") == "allowed" else EXIT_REFUSED
