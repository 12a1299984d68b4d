"""The JWS compact serialisation, read strictly: one token has one spelling and one JSON reading.

The app behind the sidecar decodes the same token again with its own JWT library and JSON parser. Wherever
the two could read the bytes differently, the token is refused here, in one place, before any key is
looked at: base64 padding, the standard alphabet or stray characters (Python's decoder skips them), non-
canonical trailing bits, JSON that is not UTF-8 (Python's `json` would detect UTF-16/32 and read it), a
byte order mark, a member named twice (parsers keep the first, the last, or refuse), NaN/Infinity, a
number that overflows to infinity, an escaped lone surrogate, and nesting deeper than `MAX_DEPTH`.
"""

from __future__ import annotations

import binascii
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from sidecar.errors import Malformed

_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# The last character of a part whose length is 2 or 3 (mod 4) carries bits that must be zero; other
# characters there decode to the same bytes, giving one signature several spellings.
_CANONICAL_LAST = {2: frozenset("AQgw"), 3: frozenset("AEIMQUYcgkosw048")}
_URLSAFE = bytes.maketrans(b"-_", b"+/")
MAX_DEPTH = 32  # real tokens nest 3 or 4 deep; .NET's System.Text.Json refuses beyond 64 by default


@dataclass(slots=True)  # not frozen: one per new token, and a frozen init costs three times as much
class Jws:
    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes  # the ASCII `header.payload` the signature covers
    signature: bytes


class _Refused(ValueError):
    """A JSON text that parses, but not the same way in every parser."""


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Refused("names one member twice (RFC 7515 section 4: refused, since parsers differ on which wins)")
    return obj


def _constant(name: str) -> Any:
    raise _Refused(f"uses {name}, which is not JSON (RFC 8259)")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused("has a number too large for a double")
    return value


_DECODER = json.JSONDecoder(object_pairs_hook=_unique, parse_constant=_constant, parse_float=_finite)


def _b64(part: str, what: str) -> bytes:
    rem = len(part) % 4
    if rem == 1 or (rem and part[-1] not in _CANONICAL_LAST[rem]):
        raise Malformed(f"the {what} is not canonical base64url (RFC 7515 appendix C)")
    # the alphabet was checked (parse): binascii alone, without base64's Python wrappers (every new token)
    return binascii.a2b_base64((part + "=" * (-len(part) % 4)).encode("ascii").translate(_URLSAFE))


def _check_tree(value: Any, what: str) -> None:
    """Depth and lone surrogates, iteratively (a recursive walk could itself overflow)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            if depth > MAX_DEPTH:
                break
            for k, v in node.items():
                stack.append((k, depth))
                stack.append((v, depth + 1))
        elif isinstance(node, list):
            if depth > MAX_DEPTH:
                break
            stack.extend((v, depth + 1) for v in node)
        elif isinstance(node, str) and not node.isascii():
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                raise Malformed(f"the {what} JSON escapes a lone UTF-16 surrogate (no Unicode reading)") from None
    else:
        return
    raise Malformed(f"the {what} JSON nests deeper than {MAX_DEPTH} levels")


def _object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Malformed(f"the {what} is not UTF-8 JSON (RFC 7515 section 2, RFC 7519 section 7.2)") from None
    if text.startswith("\ufeff"):
        raise Malformed(f"the {what} JSON starts with a byte order mark (RFC 8259 section 8.1)")
    if "\x00" in text:
        raise Malformed(f"the {what} is not UTF-8 JSON (it looks like UTF-16 or UTF-32; RFC 7519 section 7.2)")
    try:
        value = _DECODER.decode(text)
    except _Refused as e:
        raise Malformed(f"the {what} JSON {e}") from None
    except (ValueError, RecursionError):
        raise Malformed(f"the {what} is not JSON") from None
    if not isinstance(value, dict):
        raise Malformed(f"the {what} is not a JSON object")
    if "\\u" in text or text.count("{") + text.count("[") > MAX_DEPTH:
        _check_tree(value, what)
    return value


def parse(token: str) -> Jws:
    """The token's header, claims and signature, or `Malformed` saying exactly which rule it breaks."""
    if token.count(".") != 2:
        raise Malformed("not three base64url parts (header.payload.signature)")
    if "=" in token:
        raise Malformed(
            "base64 padding '=' is not allowed: JWS compact parts are unpadded base64url (RFC 7515 section 2)"
        )
    if not _COMPACT.fullmatch(token):
        raise Malformed("a character outside the base64url alphabet (A-Z a-z 0-9 - _), or an empty part")
    head, payload, signature = token.split(".")
    header = _object(_b64(head, "header"), "header")
    claims = _object(_b64(payload, "payload"), "payload")
    return Jws(header, claims, f"{head}.{payload}".encode("ascii"), _b64(signature, "signature"))
