"""The two proxy engines side by side: every raw request case goes over a raw socket to a `sidecar run
--proxy-engine aiohttp` and to a `sidecar run --proxy-engine lean` with the same config, each in front of its
own recording app, and both must answer alike: the same statuses, the same requests reaching the app, and
the app receiving the same method, target, headers and body (minus what legitimately differs between the
two forwarders, see tests/wire.py `received`).

Framings that two parsers can read two ways (MUST_REFUSE: CL with TE, duplicate or malformed Content-Length,
a Transfer-Encoding other than chunked, obs-fold, bare CR or LF, NUL, space before the colon, bad chunks) the
lean engine refuses with a 400 and a close before anything reaches the app. Where the aiohttp engine answers
a case otherwise, the difference is listed in LEAN_DIFFERS with the lean engine's exact outcome and what
aiohttp does instead. Everything else must be identical.

Whatever aiohttp does, the lean engine never answers 5xx here, never forwards a request the aiohttp engine
refused, and never lets a smuggled second request (`/public/smuggled`) reach the app.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from sidecar.devtools.issuer import DevIssuer
from tests.conftest import lean_available
from tests.test_hostile import FOLD_CASES, RAW_TARGETS, SMUGGLE_CASES, SMUGGLED
from tests.test_hostile_decision import RAW_ONLY
from tests.test_hostile_limits import huge_headers
from tests.wire import Answer, Engine, both, engine_pair

# Before sidecar/http/ exists `--proxy-engine lean` still runs aiohttp: nothing to compare or to fuzz.
pytestmark = pytest.mark.skipif(not lean_available(), reason="the lean proxy engine (sidecar/http/) is not there")
TIMEOUT = 1.5  # the sidecars' header, body and idle timeouts: a head or body that never ends is cut soon
TOKEN = b"@TOKEN@"  # replaced by a valid token when the case runs


@dataclass(frozen=True)
class Case:
    id: str
    data: bytes


def _param(p: Any) -> Case:
    return Case(p.id, p.values[0])


def _get(target: bytes, *headers: bytes) -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n"


def _post(head: bytes, body: bytes, target: bytes = b"/public/first", version: bytes = b"1.1") -> bytes:
    return b"POST " + target + b" HTTP/" + version + b"\r\nHost: x\r\n" + head + b"\r\n" + body


# --- the cases already in the hostile suite, imported as they are -------------------------------------------

HOSTILE = [_param(p) for p in SMUGGLE_CASES]
HOSTILE += [Case(f"target-{c.id}", c.data) for c in map(_param, RAW_TARGETS)]
HOSTILE += [
    Case(
        f"fold-{c.id}-{where}",
        b"GET /" + where.encode() + b"/x HTTP/1.1\r\nHost: x\r\n" + auth + c.data + b"Connection: close\r\n\r\n",
    )
    for c in map(_param, FOLD_CASES)
    for where, auth in (("public", b""), ("api", b"Authorization: Bearer " + TOKEN + b"\r\n"))
]
HOSTILE += [
    Case(f"decision-target-{family}-{i}", _get(t.encode(), b"Connection: close"))
    for family, targets in RAW_ONLY.items()
    for i, t in enumerate(targets)
]
HOSTILE += [
    Case(
        f"control-byte-{name.lower()}-{byte.hex()}",
        _get(b"/public/x", b"Connection: close", name + b": a" + byte + b"b"),
    )
    for name in (b"X-Foo", b"Authorization", b"Cookie", b"Origin", b"User-Agent")
    for byte in (b"\x01", b"\x08", b"\x1b", b"\x7f")
]
HOSTILE += [
    Case(
        "chunked-trailer-identity",
        b"POST /api/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN + b"\r\nTransfer-Encoding: chunked\r\n"
        b"Trailer: X-Auth-Subject\r\nConnection: close\r\n\r\n"
        b"5\r\nhello\r\n0\r\nX-Auth-Subject: admin\r\nX-Auth-Roles: admin\r\n\r\n",
    ),
    Case("limits-one-huge-header", b"".join(huge_headers(count=1, size=20_000))),
    Case(
        "limits-pipelined-then-oversized-head", _get(b"/public/ok") * 3 + _get(b"/public/bad", b"X: " + b"a" * 66_000)
    ),
    # whole heads in one read over the field count (100): the lean engine's parser stops at the count, and a
    # head it refuses for another reason gets the count's 431 first, as the guard's count on arrival gives it
    Case("limits-too-many-fields-in-one-read", _get(b"/public/x", *(b"X-%d: v" % i for i in range(150)))),
    Case(
        "limits-too-many-fields-then-a-bad-line",
        _get(b"/public/x", *(b"X-%d: v" % i for i in range(150)), b"no colon here"),
    ),
    Case(
        "limits-a-bad-line-then-too-many-fields",
        _get(b"/public/x", b"no colon here", *(b"X-%d: v" % i for i in range(150))),
    ),
    Case(
        "limits-too-many-bare-lf-lines",
        b"GET /public/x HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\n" % i for i in range(150)) + b"\r\n",
    ),
    Case(
        "limits-empty-lines-then-fields-at-the-count",
        b"\r\n\r\n" + _get(b"/public/x", *(b"X-%d: v" % i for i in range(98)), b"Connection: close"),
    ),
    Case(
        "limits-pipelined-burst",
        b"".join(_get(b"/public/%d" % i) for i in range(40)) + _get(b"/public/last", b"Connection: close"),
    ),
]

# --- request smuggling and desync -------------------------------------------------------------------------

S = SMUGGLED
CLOSE = b"Connection: close\r\n"
DESYNC = [
    # Content-Length with Transfer-Encoding, both orders, each side able to hide the other's request
    Case("cl-te-classic", _post(b"Content-Length: 13\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n" + S)),
    Case(
        "te-cl-classic",
        _post(b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", b"%x\r\n" % len(S) + S + b"\r\n0\r\n\r\n"),
    ),
    Case("cl-te-gzip-chunked", _post(b"Content-Length: 5\r\nTransfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n" + S)),
    # duplicate Content-Length
    Case("cl-duplicate-same", _post(b"Content-Length: 5\r\nContent-Length: 5\r\n" + CLOSE, b"hello")),
    Case("cl-duplicate-different", _post(b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello" + S)),
    Case("cl-duplicate-far-apart", _post(b"Content-Length: 5\r\nX-A: 1\r\nContent-Length: 0\r\n", b"hello" + S)),
    Case("cl-list-same", _post(b"Content-Length: 5, 5\r\n" + CLOSE, b"hello")),
    Case("cl-list-different", _post(b"Content-Length: 5,0\r\n", b"hello" + S)),
    # one Content-Length, oddly spelled
    Case("cl-plus", _post(b"Content-Length: +0\r\n", S)),
    Case("cl-minus-zero", _post(b"Content-Length: -0\r\n", S)),
    Case("cl-inner-space", _post(b"Content-Length: 1 0\r\n", b"hello" + S)),
    Case("cl-hex", _post(b"Content-Length: 0x0\r\n", S)),
    Case("cl-hex-digits", _post(b"Content-Length: a\r\n", b"helloworld" + S)),
    Case("cl-decimal-point", _post(b"Content-Length: 5.0\r\n", b"hello" + S)),
    Case("cl-empty", _post(b"Content-Length: \r\n", S)),
    Case("cl-letters-after", _post(b"Content-Length: 5x\r\n", b"hello" + S)),
    Case("cl-overflow-2-64", _post(b"Content-Length: 18446744073709551616\r\n", b"hello" + S)),
    Case("cl-overflow-2-64-plus-5", _post(b"Content-Length: 18446744073709551621\r\n", b"hello" + S)),
    Case("cl-leading-zeros", _post(b"Content-Length: 005\r\n" + CLOSE, b"hello")),
    Case("cl-surrounding-whitespace", _post(b"Content-Length: \t 5 \t\r\n" + CLOSE, b"hello")),
    Case("cl-huge-valid-short-body", _post(b"Content-Length: 1000000000000\r\n", b"hello")),
    # Transfer-Encoding other than a lone `chunked`
    Case("te-gzip", _post(b"Transfer-Encoding: gzip\r\n", b"0\r\n\r\n" + S)),
    Case("te-chunked-chunked", _post(b"Transfer-Encoding: chunked, chunked\r\n", b"0\r\n\r\n" + S)),
    Case(
        "te-chunked-twice-as-headers",
        _post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n" + S),
    ),
    Case("te-chunked-trailing-space", _post(b"Transfer-Encoding: chunked \r\n", b"0\r\n\r\n" + S)),
    Case("te-chunkedx", _post(b"Transfer-Encoding: chunkedx\r\n", b"0\r\n\r\n" + S)),
    Case("te-quoted-chunked", _post(b'Transfer-Encoding: "chunked"\r\n', b"0\r\n\r\n" + S)),
    Case("te-empty", _post(b"Transfer-Encoding: \r\nContent-Length: 5\r\n", b"hello" + S)),
    Case("te-in-http-1.0", _post(b"Transfer-Encoding: chunked\r\n", b"0\r\n\r\n" + S, version=b"1.0")),
    Case(
        "te-in-http-1.0-with-cl",
        _post(b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n" + S, version=b"1.0"),
    ),
    # obs-fold: a header line that starts with SP or HT continues the previous one for some parsers
    Case("obs-fold-space", _get(b"/public/x", b"X-A: 1", b" X-Auth-Subject: admin", b"Connection: close")),
    Case("obs-fold-tab", _get(b"/public/x", b"X-A: 1", b"\tcontinued", b"Connection: close")),
    Case("obs-fold-content-length", _post(b"Content-Length:\r\n 5\r\n", b"hello" + S)),
    Case("obs-fold-te", _post(b"Transfer-Encoding:\r\n chunked\r\n", b"0\r\n\r\n" + S)),
    Case("obs-fold-first-header", b"GET /public/x HTTP/1.1\r\n Host: x\r\nConnection: close\r\n\r\n"),
    # bare LF and bare CR as line ends
    Case("bare-lf-request-line", b"GET /public/x HTTP/1.1\nHost: x\r\nConnection: close\r\n\r\n"),
    Case("bare-lf-header", b"GET /public/x HTTP/1.1\r\nHost: x\nConnection: close\r\n\r\n"),
    Case("bare-lf-end-of-head", b"GET /public/x HTTP/1.1\r\nHost: x\r\nConnection: close\n\n"),
    Case("bare-lf-hides-cl", _post(b"X-A: 1\nContent-Length: 5\r\n", b"hello" + S)),
    Case("bare-cr-request-line", b"GET /public/x HTTP/1.1\rHost: x\r\nConnection: close\r\n\r\n"),
    Case("bare-cr-header-value", _get(b"/public/x", b"X-A: 1\rX-B: 2", b"Connection: close")),
    Case("bare-cr-hides-cl", _post(b"X-A: 1\rContent-Length: 5\r\n", b"hello" + S)),
    # NUL and other bytes a header may not hold
    Case("nul-header-value", _get(b"/public/x", b"X-A: a\x00b", b"Connection: close")),
    Case("nul-header-name", _get(b"/public/x", b"X-\x00A: b", b"Connection: close")),
    Case("nul-in-content-length", _post(b"Content-Length: 5\x00\r\n", b"hello" + S)),
    # whitespace between the field name and the colon
    Case("space-before-colon", _get(b"/public/x", b"X-A : 1", b"Connection: close")),
    Case("tab-before-colon", _get(b"/public/x", b"X-A\t: 1", b"Connection: close")),
    Case("space-before-colon-content-length", _post(b"Content-Length : 5\r\n", b"hello" + S)),
    Case("space-before-colon-te", _post(b"Transfer-Encoding : chunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n" + S)),
    # chunk sizes and chunk framing
    Case("chunk-size-non-hex", _post(b"Transfer-Encoding: chunked\r\n", b"5g\r\nhello\r\n0\r\n\r\n" + S)),
    Case("chunk-size-minus-one", _post(b"Transfer-Encoding: chunked\r\n", b"-1\r\nh\r\n0\r\n\r\n" + S)),
    Case("chunk-size-plus", _post(b"Transfer-Encoding: chunked\r\n", b"+5\r\nhello\r\n0\r\n\r\n" + S)),
    Case(
        "chunk-size-over-64-bits",
        _post(b"Transfer-Encoding: chunked\r\n", b"10000000000000000\r\nhello\r\n0\r\n\r\n" + S),
    ),
    Case("chunk-size-leading-space", _post(b"Transfer-Encoding: chunked\r\n", b" 5\r\nhello\r\n0\r\n\r\n" + S)),
    Case("chunk-size-trailing-space", _post(b"Transfer-Encoding: chunked\r\n", b"5 \r\nhello\r\n0\r\n\r\n" + S)),
    Case("chunk-size-empty", _post(b"Transfer-Encoding: chunked\r\n", b"\r\nhello\r\n0\r\n\r\n" + S)),
    Case("chunk-data-longer-than-size", _post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhelloX\r\n0\r\n\r\n" + S)),
    Case("chunk-data-no-crlf", _post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello0\r\n\r\n" + S)),
    Case("chunk-data-bare-lf", _post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\n0\r\n\r\n" + S)),
    Case("chunk-size-bare-lf", _post(b"Transfer-Encoding: chunked\r\n", b"5\nhello\r\n0\r\n\r\n" + S)),
    Case("chunk-ext-bare-lf", _post(b"Transfer-Encoding: chunked\r\n", b"5;ext\nhello\r\n0\r\n\r\n" + S)),
    Case("chunk-ext-bare-cr", _post(b"Transfer-Encoding: chunked\r\n", b"5;e\rxt\r\nhello\r\n0\r\n\r\n" + S)),
    Case("last-chunk-bare-lf", _post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\n\n" + S)),
    Case("chunk-ext-valid", _post(b"Transfer-Encoding: chunked\r\n" + CLOSE, b"5;name=value\r\nhello\r\n0\r\n\r\n")),
    # pipelining: after a body, and after a request that asked to close
    Case(
        "pipelined-after-cl-body",
        _post(b"Content-Length: 5\r\n", b"hello") + _get(b"/public/second", b"Connection: close"),
    ),
    Case(
        "pipelined-after-chunked-body",
        _post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n")
        + _get(b"/public/second", b"Connection: close"),
    ),
    Case("pipelined-after-connection-close", _get(b"/public/first", b"Connection: close") + S),
    Case("pipelined-after-http-1.0", b"GET /public/first HTTP/1.0\r\n\r\n" + S),
    Case("pipelined-after-unfinished-body", _post(b"Content-Length: 10\r\n", b"hello") + S),
    # a field the app's parser allows once (aiohttp's singletons), sent twice: whoever refuses, the client
    # gets a 400, not a 502 (the app answers before it closes)
    Case("duplicate-user-agent", _get(b"/public/x", b"User-Agent: a", b"User-Agent: b", b"Connection: close")),
    Case(
        "duplicate-user-agent-chunked-body",
        _post(b"User-Agent: a\r\nUser-Agent: b\r\nTransfer-Encoding: chunked\r\n" + CLOSE, b"1\r\nx\r\n0\r\n\r\n"),
    ),
    Case(
        "duplicate-content-type-cl-body",
        _post(b"Content-Type: text/plain\r\nContent-Type: text/html\r\nContent-Length: 5\r\n" + CLOSE, b"hello"),
    ),
    Case(  # found by tests/test_http_fuzz.py: lean answered 502 "the app closed the connection" once in four runs
        "duplicate-user-agent-pipelined-chunked",
        b"PUT /public/fz-0 HTTP/1.1\r\nHost: x\r\nUser-Agent: fz\r\nX-B: b c\r\nUser-Agent: fz\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n1\r\n\xec\r\n1\r\nw\r\n0\r\n\r\n"
        b"DELETE /public/fz-1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        b"GET /public/fz-2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
    ),
    # targets and protocol versions
    Case("absolute-form-other-host", _get(b"http://other.example/public/x", b"Connection: close")),
    Case("absolute-form-public", b"GET http://x/public/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    Case("http-0.9-bare", b"GET /public/x\r\n"),
    Case("http-1.2", b"GET /public/x HTTP/1.2\r\nHost: x\r\nConnection: close\r\n\r\n"),
    Case("http-2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    Case("http-lowercase-version", b"GET /public/x http/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    Case("http-1.1-without-host", b"GET /public/x HTTP/1.1\r\nConnection: close\r\n\r\n"),
    Case("http-1.1-two-hosts", _get(b"/public/x", b"Host: y", b"Connection: close")),
    Case("http-1.0-without-host", b"GET /public/x HTTP/1.0\r\n\r\n"),
    Case("lowercase-method", b"get /public/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    # sizes
    Case("request-line-over-limit", _get(b"/public/x?q=" + b"a" * 20_000, b"Connection: close")),
    Case("request-line-at-limit", _get(b"/public/x?q=" + b"a" * 16_000, b"Connection: close")),
    Case("headers-at-count-limit", _get(b"/public/x", *[b"X-H-%d: v" % i for i in range(98)], b"Connection: close")),
    Case("headers-over-count-limit", _get(b"/public/x", *[b"X-H-%d: v" % i for i in range(101)], b"Connection: close")),
    Case(
        "headers-far-over-count-limit",
        _get(b"/public/x", *[b"X-H-%d: v" % i for i in range(1000)], b"Connection: close"),
    ),
    # Expect and Upgrade
    Case("expect-100-continue", _post(b"Expect: 100-continue\r\nContent-Length: 5\r\n" + CLOSE, b"hello")),
    Case("expect-100-continue-no-body-yet", _post(b"Expect: 100-continue\r\nContent-Length: 5\r\n", b"")),
    Case("expect-unknown", _post(b"Expect: something-else\r\nContent-Length: 5\r\n" + CLOSE, b"hello")),
    Case(
        "upgrade-h2c",
        _get(
            b"/public/x",
            b"Connection: Upgrade, HTTP2-Settings",
            b"Upgrade: h2c",
            b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
        ),
    ),
    Case(
        "upgrade-h2c-with-body",
        _post(b"Connection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 5\r\n", b"hello")
        + _get(b"/public/second", b"Connection: close"),
    ),
    Case(
        "upgrade-websocket-without-key",
        _get(b"/public/x", b"Connection: Upgrade", b"Upgrade: websocket", b"Connection: close"),
    ),
    # controls: well-formed requests both engines must treat alike
    Case("control-get", _get(b"/public/x", b"Connection: close")),
    Case("control-get-with-token", _get(b"/api/x", b"Authorization: Bearer " + TOKEN, b"Connection: close")),
    Case("control-get-without-token", _get(b"/api/x", b"Connection: close")),
    Case("control-post-cl", _post(b"Content-Length: 5\r\n" + CLOSE, b"hello")),
    Case(
        "control-post-chunked",
        _post(b"Transfer-Encoding: chunked\r\n" + CLOSE, b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
    ),
    Case(
        "control-post-chunked-uppercase-hex",
        _post(b"Transfer-Encoding: chunked\r\n" + CLOSE, b"A\r\n0123456789\r\n0\r\n\r\n"),
    ),
    Case("control-keep-alive-two", _get(b"/public/one") + _get(b"/public/two", b"Connection: close")),
    Case("control-head", b"HEAD /public/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    Case("control-options-preflight-shape", _get(b"/public/x", b"Origin: http://localhost:3000", b"Connection: close")),
]

CASES = HOSTILE + DESYNC
assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"

# Framings two parsers can read two ways. The lean engine answers each with a 400 and closes, before any byte
# reaches the app (issue 14: "Refuse ambiguous framing before forwarding").
MUST_REFUSE = {
    # from the hostile suite (tests/test_hostile.py SMUGGLE_CASES and FOLD_CASES)
    "cl-and-te",
    "te-and-cl",
    "two-content-lengths",
    "two-equal-content-lengths",
    "content-length-list",
    "content-length-plus-sign",
    "content-length-negative",
    "content-length-hex",
    "content-length-two-numbers",
    "content-length-huge",
    "te-xchunked",
    "cl-and-te-with-extra-whitespace",
    "cl-and-te-uppercase",
    "cl-and-te-vertical-tab",
    "te-chunked-identity",
    "te-identity-chunked-with-cl",
    "te-two-headers",
    "chunk-size-not-hex",
    "chunk-size-negative",
    "chunk-size-0x-prefix",
    "chunk-size-overflow",
    "chunk-shorter-than-data",
    "chunk-lf-only",
    "te-space-before-colon",
    "te-tab-and-cl",
    "cl-space-before-colon",
    "obs-fold-hides-te",
    "bare-cr-in-header",
    "nul-in-header-value",
    "lf-only-line-endings",
    *(
        f"fold-{c}-{w}"
        for c in ("obs-fold-space", "obs-fold-tab", "space-before-colon", "tab-before-colon", "lf-only-line")
        for w in ("public", "api")
    ),
    # this file's desync table
    "cl-te-classic",
    "te-cl-classic",
    "cl-te-gzip-chunked",
    "cl-duplicate-same",
    "cl-duplicate-different",
    "cl-duplicate-far-apart",
    "cl-list-same",
    "cl-list-different",
    "cl-plus",
    "cl-minus-zero",
    "cl-inner-space",
    "cl-hex",
    "cl-hex-digits",
    "cl-decimal-point",
    "cl-empty",
    "cl-letters-after",
    "cl-overflow-2-64",
    "cl-overflow-2-64-plus-5",
    "te-gzip",
    "te-chunked-chunked",
    "te-chunked-twice-as-headers",
    "te-chunked-trailing-space",  # the brief lists it; RFC 9110 would strip the OWS and read plain chunked
    "te-chunkedx",
    "te-quoted-chunked",
    "te-empty",
    "te-in-http-1.0",
    "te-in-http-1.0-with-cl",
    "obs-fold-space",
    "obs-fold-tab",
    "obs-fold-content-length",
    "obs-fold-te",
    "obs-fold-first-header",
    "bare-lf-request-line",
    "bare-lf-header",
    "bare-lf-end-of-head",
    "bare-lf-hides-cl",
    "bare-cr-request-line",
    "bare-cr-header-value",
    "bare-cr-hides-cl",
    "nul-header-value",
    "nul-header-name",
    "nul-in-content-length",
    "space-before-colon",
    "tab-before-colon",
    "space-before-colon-content-length",
    "space-before-colon-te",
    "chunk-size-non-hex",
    "chunk-size-minus-one",
    "chunk-size-over-64-bits",
    "chunk-size-plus",
    "chunk-size-leading-space",
    "chunk-size-trailing-space",
    "chunk-size-empty",
    "chunk-data-longer-than-size",
    "chunk-data-no-crlf",
    "chunk-data-bare-lf",
    "chunk-size-bare-lf",
    "chunk-ext-bare-lf",
    "chunk-ext-bare-cr",
    "last-chunk-bare-lf",
    "cl-surrounding-whitespace",  # blanks around the digits (docs/security-framing.md)
    "upgrade-h2c-with-body",  # llhttp reads no body after an upgrade request
    # singleton fields twice (aiohttp's list), refused by both engines
    "duplicate-user-agent",
    "duplicate-user-agent-chunked-body",
    "duplicate-content-type-cl-body",
    "duplicate-user-agent-pipelined-chunked",
    "http-1.1-without-host",
    "http-1.1-two-hosts",
}
assert {c.id for c in CASES} >= MUST_REFUSE, MUST_REFUSE - {c.id for c in CASES}


@dataclass(frozen=True)
class Differs:
    """A sanctioned difference: what the lean engine must answer instead, and what the app gets through it."""

    statuses: list[int]
    paths: list[str]
    why: str  # and what the aiohttp engine does
    # the lean engine forwards a complete request that came before bytes aiohttp refused the whole read for
    forwards_more: bool = False


REFUSED = ([400], [])
# The only differences allowed between the engines, each with the lean engine's exact outcome. An entry whose
# lean outcome is a refusal must still differ from aiohttp's (a stale entry fails), so the list stays true.
LEAN_DIFFERS: dict[str, Differs] = {
    # blanks around a Content-Length: RFC 9110 trims them, the lean engine refuses any length that is not
    # digits alone (as it refuses anything around `chunked`): no reader is trusted to trim alike
    "cl-surrounding-whitespace": Differs(*REFUSED, "aiohttp: 200, reads Content-Length 5"),
    # RFC 9110 strips the trailing OWS, so aiohttp reads plain `chunked`: 200, the app gets an empty body
    "te-chunked-trailing-space": Differs(*REFUSED, "aiohttp: 200, reads plain chunked"),
    # aiohttp ignores an empty Transfer-Encoding and frames by Content-Length: the next request is served
    "te-empty": Differs(*REFUSED, "aiohttp: 200, 200; the app gets /public/first and /public/smuggled"),
    # targets that are not a path: aiohttp's own router answers (no route matches `*` or an authority);
    # the lean engine hands them to the sidecar's decision, which refuses them as not an absolute path
    "target-options-asterisk": Differs(*REFUSED, "aiohttp: 404 from its router, not the sidecar"),
    "target-connect-authority-form": Differs(*REFUSED, "aiohttp: 404 from its router, not the sidecar"),
    # aiohttp's router pattern `{tail:.*}` does not match a decoded newline: 404 from aiohttp itself; the lean
    # engine lets the sidecar judge the path, which needs a token there
    "decision-target-escaped-control-0": Differs([401], [], "aiohttp: 404 from its router, not the sidecar"),
    "decision-target-escaped-control-1": Differs([401], [], "aiohttp: 404 from its router, not the sidecar"),
    # three good pipelined requests, then a head over the limit: lean answers all three and then 431; aiohttp
    # answers the first and closes without a word on the rest
    "limits-pipelined-then-oversized-head": Differs(
        [200, 200, 200, 431], ["/public/ok"] * 3, "aiohttp: 200 for the first only, then a close"
    ),
    # bytes after a request that closes the connection: lean answers that request and never reads the rest
    # (RFC 9112 §9.6); aiohttp refuses the whole read with 400 ("data after Connection: close")
    "pipelined-after-connection-close": Differs([200], ["/public/first"], "aiohttp: 400, nothing forwarded", True),
    "pipelined-after-http-1.0": Differs([200], ["/public/first"], "aiohttp: 400, nothing forwarded", True),
    # a body read by its Content-Length, as the app reads it: the 10 bytes `helloGET /p` are the body, and
    # what follows does not parse (400); aiohttp refuses the whole read
    "pipelined-after-unfinished-body": Differs([200, 400], ["/public/first"], "aiohttp: 400, nothing forwarded", True),
    # llhttp reads no body after an upgrade request: lean refuses an upgrade with a body; aiohttp ignores the
    # upgrade and serves both requests
    "upgrade-h2c-with-body": Differs(*REFUSED, "aiohttp: 200, 200"),
}

# Cases the lean engine fails (none on main 1bc6040). Strict: a fixed case fails until it is taken off this
# list. Each says what lean does; the integrator decides whether lean changes or the expectation moves to
# LEAN_DIFFERS.
KNOWN_LEAN_FAILURES: dict[str, str] = {}
# Failing some of the time (a race), so not strict.
KNOWN_LEAN_RACES: dict[str, str] = {}


# --- fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engines(issuer: DevIssuer) -> Iterator[dict[str, Engine]]:
    with engine_pair(issuer, TIMEOUT) as pair:
        yield pair


@pytest.fixture(scope="module")
def token(issuer: DevIssuer) -> bytes:
    return issuer.mint(ttl=3600).encode()


def reason(answer: Answer) -> list[str | None]:
    """The sidecar's JSON refusal reason of each answer (None for answers that have none)."""
    out: list[str | None] = []
    for r in answer.responses:
        try:
            out.append(json.loads(r.body).get("reason"))
        except (ValueError, AttributeError):
            out.append(None)
    return out


# --- the test ----------------------------------------------------------------------------------------------


def params() -> list[Any]:
    out = []
    for c in CASES:
        marks = []
        if c.id in KNOWN_LEAN_FAILURES:
            marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_LEAN_FAILURES[c.id]))
        if c.id in KNOWN_LEAN_RACES:
            marks.append(pytest.mark.xfail(strict=False, reason=KNOWN_LEAN_RACES[c.id]))
        out.append(pytest.param(c, id=c.id, marks=marks))
    return out


@pytest.mark.parametrize("case", params())
def test_both_engines_answer_alike_and_the_lean_one_refuses_ambiguous_framing(
    case: Case, engines: dict[str, Engine], token: bytes
) -> None:
    data = case.data.replace(TOKEN, token)
    got = both(engines, data)
    old, lean = got["aiohttp"], got["lean"]
    detail = f"\n  sent:    {data[:300]!r}\n  aiohttp: {old.show()}\n  lean:    {lean.show()}"

    # what holds for the lean engine whatever the aiohttp one does
    assert lean.answer.well_formed(), "lean answer is not well-formed HTTP" + detail
    assert all(s < 500 for s in lean.answer.statuses), "lean answered 5xx" + detail
    assert "/public/smuggled" not in lean.paths, "a smuggled request reached the app through lean" + detail
    forwarded = {(r[0], r[1]) for r in old.reached}
    differs = LEAN_DIFFERS.get(case.id)
    if differs is None or not differs.forwards_more:
        assert {(r[0], r[1]) for r in lean.reached} <= forwarded, "lean forwarded what aiohttp refused" + detail

    if case.id in MUST_REFUSE:
        assert lean.answer.statuses == [400], "lean must refuse ambiguous framing with one 400" + detail
        assert lean.reached == [], "ambiguous framing reached the app through lean" + detail
        assert lean.answer.closed, "lean must close the connection after refusing a framing" + detail
    if differs is not None:
        assert (lean.answer.statuses, lean.paths) == (differs.statuses, differs.paths), differs.why + detail
        if (differs.statuses, differs.paths) == REFUSED:
            assert (old.answer.statuses, old.paths) != REFUSED, f"stale LEAN_DIFFERS entry {case.id}" + detail
        return

    assert lean.answer.statuses == old.answer.statuses, "statuses differ" + detail
    assert lean.reached == old.reached, "the app received different requests" + detail
    # the sidecar's own refusals say why in JSON; aiohttp's parser says it in text, which lean need not copy
    for mine, theirs in zip(reason(lean.answer), reason(old.answer), strict=True):
        assert theirs is None or mine == theirs, "refusal reasons differ" + detail
