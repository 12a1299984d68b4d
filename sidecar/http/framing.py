"""Message framing: where a body ends, decided once, and refused whenever two readers could disagree.

Request smuggling needs two parsers (ours and the app's, or ours and a proxy's in front) to cut the same
bytes into different messages. llhttp, in its default strict mode, already refuses most ambiguous framings:
Content-Length with Transfer-Encoding, duplicate or non-decimal Content-Length, a Transfer-Encoding list not
ending in `chunked`, obs-fold, bare CR or LF, NUL and other controls in a field, bad chunk sizes and chunk
lines. This module refuses what it still lets through, for requests (400) and for the app's responses (502):

- a Transfer-Encoding other than exactly `chunked`, blanks included (`gzip, chunked` is legal, but no app
  behind us expects it, and a reader that trims or splits differently would re-frame the rest);
- a second instance of a field that may appear once (Content-Length, Transfer-Encoding, Host, Content-Type,
  User-Agent...: aiohttp's list), and an HTTP/1.1 request without Host;
- a request that asks to upgrade and has a body (llhttp would read the body as the next message);
- any Transfer-Encoding in an HTTP/1.0 message (RFC 9112 §6.1: its framing is faulty);
- versions other than HTTP/1.0 and HTTP/1.1 (llhttp reads `GET /` alone as HTTP/0.9).

The forwarded request is framed by the sidecar alone (sidecar/http/upstream.py writes Content-Length or
chunked itself): nothing of the client's framing headers reaches the app.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from sidecar import errors

_CHUNKED = b"chunked"


@dataclass(slots=True)  # not frozen: built for most messages, and a frozen init costs three times as much
class Framing:
    length: int | None  # Content-Length, if the message has one
    chunked: bool

    # Written out: a dataclass's generated __init__ stays Python in the compiled build (~2,000 instructions).
    def __init__(self, length: int | None, chunked: bool) -> None:
        self.length = length
        self.chunked = chunked

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.length)


NO_BODY = Framing(None, False)
CHUNKED = Framing(None, True)


class FramingError(Exception):
    """Ambiguous framing: a request gets 400, a response from the app 502; the connection is closed."""


# Fields a message may carry once. A second one is refused, as aiohttp's parser (the earlier engine, and many
# apps) refuses it: two readers may each take a different one.
_SINGLETONS: Final = frozenset(
    {
        b"content-length",
        b"content-location",
        b"content-range",
        b"content-type",
        b"etag",
        b"host",
        b"max-forwards",
        b"server",
        b"transfer-encoding",
        b"user-agent",
    }
)
_LENGTHS: Final = frozenset(len(n) for n in _SINGLETONS)


def body_framing(lengths: list[bytes], codings: list[bytes], version: str) -> Framing:
    """Where a message's body ends, from its Content-Length and Transfer-Encoding values: the rules every
    message follows, a request's (framing) and the app's answer's (upstream.py collects those values in the
    one pass it makes over the head)."""
    if version not in ("1.1", "1.0"):
        raise FramingError(f"HTTP/{version} is not served")
    if len(lengths) > 1:  # llhttp refuses this too: kept so no reader is trusted alone
        raise FramingError("more than one Content-Length")
    if len(codings) > 1:
        raise FramingError("more than one Transfer-Encoding")
    if lengths and not lengths[0].isdigit():
        raise FramingError("a Content-Length that is not a number")
    if not codings:
        return Framing(int(lengths[0]), False) if lengths else NO_BODY
    # exactly `chunked`: a reader that trims no blanks, or stops at a comma, frames otherwise
    if codings[0].lower() != _CHUNKED:
        raise FramingError("a Transfer-Encoding other than one `chunked`")
    if version == "1.0":
        raise FramingError("Transfer-Encoding in an HTTP/1.0 message")
    if lengths:
        raise FramingError("both Content-Length and Transfer-Encoding")
    return CHUNKED


# Each of those a bit, for a head read field by field (the lean engine): which it holds, which came twice.
# Then the fields llhttp reads for a request's keep-alive and upgrade (Proxy-Connection as Connection).
_ONCE_BITS: Final = {name: 1 << i for i, name in enumerate(sorted(_SINGLETONS))}
_CONNECTION_BITS: Final = {
    name: 1 << (len(_ONCE_BITS) + i) for i, name in enumerate((b"connection", b"proxy-connection", b"upgrade"))
}
_BITS: Final = {**_ONCE_BITS, **_CONNECTION_BITS}
_ONCE: Final = sum(_ONCE_BITS.values())
_HOST: Final = _BITS[b"host"]
_BODY_FIELDS: Final = _BITS[b"content-length"] | _BITS[b"transfer-encoding"]
CONNECTION_FIELDS: Final = sum(_CONNECTION_BITS.values())


def field_bit(name: bytes) -> int:
    """A field name's bit if a message may carry it once (see `plain_head`) or llhttp reads it for keep-alive
    and upgrade (CONNECTION_FIELDS); else 0."""
    return _BITS.get(name.lower(), 0)


def plain_head(seen: int, twice: int, version: str) -> bool:
    """A request head `framing` would frame without a body and refuse nothing in, told from the `field_bit`s
    of its fields (`seen`: all of them or'ed; `twice`: those seen again): each singleton at most once, no
    Content-Length or Transfer-Encoding, and Host in HTTP/1.1. Every other head is read by `framing`. The
    usual GET costs a few bit operations per field instead of that reading."""
    if version == "1.1":
        if not seen & _HOST:
            return False
    elif version != "1.0":
        return False
    return not twice & _ONCE and not seen & _BODY_FIELDS


def framing(headers: list[tuple[bytes, bytes]], version: str, is_request: bool, upgrade: bool = False) -> Framing:
    """The one reading of a message's framing headers (already vetted by llhttp), or FramingError.
    `upgrade`: llhttp stops reading at this request (it asked to switch protocols)."""
    lengths: list[bytes] = []
    codings: list[bytes] = []
    seen: set[bytes] = set()
    for name, value in headers:
        if len(name) not in _LENGTHS:
            continue  # most names: one length test instead of lowering each
        low = name.lower()
        if low == b"content-length":
            lengths.append(value)
        elif low == b"transfer-encoding":
            codings.append(value)
        elif is_request and low in _SINGLETONS:
            # the app's answers: only their framing (a second Server or Content-Type is the app's business)
            if low in seen:
                raise FramingError(f"more than one {name.decode('latin-1')}")
            seen.add(low)
    fr = body_framing(lengths, codings, version)
    if is_request and version == "1.1" and b"host" not in seen:
        raise FramingError("an HTTP/1.1 request without Host")  # RFC 9112 §3.2
    if upgrade and fr.has_body:
        # llhttp reads no body after an upgrade request: the bytes would be read as the next message
        raise FramingError("a request that asks to upgrade with a body")
    return fr


def refusal(e: Exception) -> errors.BadRequest:
    """What the client is told about a request llhttp or this module refused (never the bytes themselves)."""
    text = str(e) if isinstance(e, FramingError) else "the request does not parse as HTTP/1.1"
    return errors.BadRequest(text)
