"""The sidecar's own answers: status, RFC 6750 `WWW-Authenticate`, a small JSON body, and a log line."""

from __future__ import annotations

import hashlib
import json
import logging
import traceback
from collections.abc import Iterable
from typing import TYPE_CHECKING

import jwt
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict

from sidecar.errors import CorsRejected, Rejection

if TYPE_CHECKING:
    from sidecar.gate import Seen
    from sidecar.state import Sidecar

log = logging.getLogger("sidecar.auth")
RETRY_AFTER_SECONDS = 5


def _quoted(text: str) -> str:
    # RFC 6750 §3: error_description is %x20-21 / %x23-5B / %x5D-7E
    return "".join(c if 0x20 <= ord(c) <= 0x7E and c not in '"\\' else "'" if c == '"' else " " for c in text)


def www_authenticate(realm: str, r: Rejection) -> str:
    """RFC 6750 §3: no `error` when no token was sent; `scope` when a route needs scopes the token lacks."""
    if r.error is None:
        return f'Bearer realm="{realm}"'
    value = f'Bearer realm="{realm}", error="{r.error}", error_description="{_quoted(r.description)}"'
    scope = getattr(r, "scope", None)
    if scope:
        value += f', scope="{_quoted(scope)}"'
    return value


def rejection_parts(
    r: Rejection, realm: str, extra: Iterable[tuple[str, str]] = (), status: int | None = None
) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers and JSON body of the sidecar's answer to `r`, for either engine. `status` overrides the
    reason's own where the caller must speak a gateway's narrower language."""
    status = status or r.status
    body = json.dumps({"status": status, "reason": r.reason, "description": r.description}).encode()
    headers = [("Content-Type", "application/json; charset=utf-8")]
    if r.family == "auth" and (r.status in (400, 401) or r.error is not None):
        headers.append(("WWW-Authenticate", www_authenticate(realm, r)))
    if r.status == 503:
        headers.append(("Retry-After", str(RETRY_AFTER_SECONDS)))
    headers.extend(extra)
    return status, headers, body


def rejection(
    r: Rejection, realm: str, extra: Iterable[tuple[str, str]] = (), status: int | None = None
) -> web.Response:
    status, headers, body = rejection_parts(r, realm, extra, status)
    return web.Response(status=status, body=body, headers=CIMultiDict(headers))


def token_context(token: str | None, known: dict[str, object] | None = None) -> dict[str, object]:
    """What may be logged about a token: its kid, alg, iss and a digest prefix. Never the token.

    `known` holds what verification already parsed; the token is decoded again only for what is missing."""
    if not token:
        return {}
    ctx: dict[str, object] = {"fp": hashlib.sha256(token.encode()).digest()[:6].hex(), **(known or {})}
    try:
        if "kid" not in ctx or "alg" not in ctx:
            header = jwt.get_unverified_header(token)
            kid = header.get("kid")
            ctx.setdefault("kid", kid[:64] if isinstance(kid, str) else None)
            ctx.setdefault("alg", str(header.get("alg"))[:16])
        if "iss" not in ctx:
            iss = jwt.decode(token, options={"verify_signature": False}).get("iss")
            ctx["iss"] = iss[:200] if isinstance(iss, str) else None
    except Exception:
        pass
    return ctx


def reject(
    s: Sidecar,
    request: Seen,
    r: Rejection,
    cors_extra: tuple[tuple[str, str], ...],
    status: int | None = None,
) -> web.Response:
    """The sidecar's own answer to a rejected request: counted, logged (never the token), CORS-decorated."""
    return rejection(r, s.cfg.realm, refused(s, request, r, cors_extra, status), status)


def refused(
    s: Sidecar, request: Seen, r: Rejection, cors_extra: tuple[tuple[str, str], ...], status: int | None = None
) -> tuple[tuple[str, str], ...]:
    """Count and log a refusal; the CORS headers its answer carries."""
    m = s.metrics
    if r.family == "auth":
        m.auth_failures.labels(r.reason).inc()
    elif r.family == "request":
        m.requests_rejected.labels(r.reason).inc()
    # CORS headers go on every answer to an allowed origin, except a rejected preflight (that is the point)
    extra = () if isinstance(r, CorsRejected) else cors_extra
    if log.isEnabledFor(logging.INFO):
        _log_line(request, r, status or r.status, {})
    return extra


def report(s: Sidecar, request: Seen, r: Rejection) -> None:
    """A refusal escaped in report mode: counted apart from enforced ones, logged on the same line with
    `reported: true` and the status it would have had. The request itself goes on (app.py, decision.py)."""
    s.metrics.auth_reported.labels(r.reason).inc()
    if s.cfg.route_metrics and r.route:
        s.metrics.route_requests.labels(r.route, REPORTED_PREFIX + r.reason).inc()
    if log.isEnabledFor(logging.INFO):
        _log_line(request, r, r.status, {"reported": True})


REPORTED_PREFIX = "reported:"  # sidecar_route_requests_total's outcome for a reported refusal


def _log_line(request: Seen, r: Rejection, status: int, more: dict[str, object]) -> None:
    log.info(
        "rejected",
        extra={
            "fields": {
                "event": "rejected",
                "reason": r.reason,
                "status": status,
                **more,
                "description": r.description,
                "method": request.method,
                "path": request.path[:512],
                "peer": request.remote,
                **token_context(r.token, r.context),
            }
        },
    )


class JsonFormatter(logging.Formatter):
    _SKIP = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = record.__dict__.get("fields")
        if isinstance(fields, dict):  # the rejection line passes its fields as one dict: no attribute scan
            out.update(fields)
        else:
            out.update({k: v for k, v in record.__dict__.items() if k not in self._SKIP})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class RedactParserErrors(logging.Filter):
    """Exception messages may quote a header (aiohttp's parser quotes the bytes it refused, and that may
    be a token). Log the exception's class and, for anything but a parser refusal, where it was raised:
    enough to find a bug, never the request's bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            where = ""
            if not isinstance(exc, HttpProcessingError):
                frames = traceback.extract_tb(exc.__traceback__)[-4:]
                where = " at " + " <- ".join(
                    f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}" for f in reversed(frames)
                )
            record.msg = (
                f"{record.getMessage()}: {exc.__class__.__name__}{where} (message withheld: may quote a header)"
            )
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


def setup_logging(level: str) -> None:
    # The logging HOWTO's "Optimization" switches: no stack walk for the caller, no thread/process lookups.
    # Every rejection writes a line, so under a flood of bad tokens this is the sidecar's hot path.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactParserErrors())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
