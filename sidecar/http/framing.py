"""Message framing: where a body ends, decided once, and refused whenever two readers could disagree.

Request smuggling needs two parsers (ours and the app's, or ours and a proxy's in front) to cut the same
bytes into different messages. llhttp, in its default strict mode, already refuses most ambiguous framings:
Content-Length with Transfer-Encoding, duplicate or non-decimal Content-Length, a Transfer-Encoding list not
ending in `chunked`, obs-fold, bare CR or LF, NUL and other controls in a field, bad chunk sizes and chunk
lines. This module refuses what it still lets through, for requests (400) and for the app's responses (502):

- a Transfer-Encoding other than exactly `chunked` (`gzip, chunked` is legal, but no app behind us expects
  it and a decoder that stops early would re-frame the rest);
- any Transfer-Encoding in an HTTP/1.0 message (RFC 9112 §6.1: its framing is faulty);
- versions other than HTTP/1.0 and HTTP/1.1 (llhttp reads `GET /` alone as HTTP/0.9);
- more than one Host (RFC 9112 §3.2), so the app and the sidecar read the same authority.

The forwarded request is framed by the sidecar alone (sidecar/http/upstream.py writes Content-Length or
chunked itself): nothing of the client's framing headers reaches the app.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar import errors

_CHUNKED = b"chunked"


@dataclass(frozen=True, slots=True)
class Framing:
    length: int | None  # Content-Length, if the message has one
    chunked: bool

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.length)


NO_BODY = Framing(None, False)


class FramingError(Exception):
    """Ambiguous framing: a request gets 400, a response from the app 502; the connection is closed."""


def framing(headers: list[tuple[bytes, bytes]], version: str, is_request: bool) -> Framing:
    """The one reading of a message's framing headers (already vetted by llhttp), or FramingError."""
    if version not in ("1.1", "1.0"):
        raise FramingError(f"HTTP/{version} is not served")
    length: int | None = None
    chunked = False
    hosts = 0
    for name, value in headers:
        n = len(name)
        if n == 14 and name.lower() == b"content-length":
            if length is not None:  # llhttp refuses this too: kept so no reader is trusted alone
                raise FramingError("more than one Content-Length")
            length = int(value)  # llhttp admitted only digits
        elif n == 17 and name.lower() == b"transfer-encoding":
            if chunked or value.strip(b" \t").lower() != _CHUNKED:
                raise FramingError("a Transfer-Encoding other than one `chunked`")
            chunked = True
        elif n == 4 and is_request and name.lower() == b"host":
            hosts += 1
    if chunked and version == "1.0":
        raise FramingError("Transfer-Encoding in an HTTP/1.0 message")
    if chunked and length is not None:
        raise FramingError("both Content-Length and Transfer-Encoding")
    if hosts > 1:
        raise FramingError("more than one Host")
    if length is None and not chunked:
        return NO_BODY
    return Framing(length, chunked)


def refusal(e: Exception) -> errors.BadRequest:
    """What the client is told about a request llhttp or this module refused (never the bytes themselves)."""
    text = str(e) if isinstance(e, FramingError) else "the request does not parse as HTTP/1.1"
    return errors.BadRequest(text)
