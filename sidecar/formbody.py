"""Form bodies read in flight: the field names a framework will see, without holding the body.

PHP, Rails, Laravel, Symfony, Django, Spring and Express's body parsers read `application/x-www-form-urlencoded`
and `multipart/form-data` fields. Two kinds of field matter to the gate: a token (`access_token`, RFC 6750 §2.2,
or a configured `query:NAME`, which Laravel-style `input()` also reads from the body), which the sidecar never
verifies there and so refuses; and a method override (`_method`), whose value is judged like an override
header. The body streams to the app as it arrives; the last chunk is held back until the whole body has been
read and judged, so an app never receives a complete request the sidecar would have refused.

Readings are lenient on purpose (any `--boundary`, LF or CRLF, every `name=`/`name*=` parameter), so a field
one parser sees is seen here too. Memory per request is bounded by the part-header and field-name caps.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from urllib.parse import unquote_to_bytes

from multidict import CIMultiDictProxy

from sidecar import errors
from sidecar.override import MethodOverride
from sidecar.scrub import fold_param

MAX_NAME = 1024  # bytes of one urlencoded field name; no real form needs more, and a longer one is refused
MAX_PART_HEADERS = 16384  # bytes of one multipart part's header block
_VALUE = 64  # bytes of an override field's value kept for judging
_SEP = re.compile(rb"[&;]")
_BOUNDARY = re.compile(r"""boundary\s*=\s*(?:"([^"]+)"|([^;,\s]+))""", re.IGNORECASE)
_MEDIA_END = re.compile(r"[;,\s]")
_NAME_PARAM = re.compile(r"""(?:^|[;\s])name\*?\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)""", re.IGNORECASE)

Judge = Callable[[frozenset[str]], Awaitable[None]]


def content_type(headers: CIMultiDictProxy[str]) -> str:
    """The one Content-Type; two would let the sidecar and the app parse the body differently."""
    values = headers.getall("Content-Type", ())
    if len(values) > 1:
        raise errors.BadRequest("more than one Content-Type header")
    return values[0] if values else ""


def form_kind(content_type: str) -> str | None:
    # PHP and Rack end the media type at `;`, `,` or whitespace: `application/x-www-form-urlencoded, x` is a form
    mime = _MEDIA_END.split(content_type.strip(), maxsplit=1)[0].lower()
    return mime if mime in ("application/x-www-form-urlencoded", "multipart/form-data") else None


def check_encoding(headers: CIMultiDictProxy[str]) -> None:
    """A compressed form body would be read by the app (Express's body-parser inflates it) but not here."""
    for value in headers.getall("Content-Encoding", ()):
        if value.strip().lower() not in ("", "identity"):
            raise errors.BadRequest("a form body with a Content-Encoding is not accepted; send it uncompressed")


def _text(raw: bytes) -> str:
    return raw.decode("latin-1")


def _refuse_token(name: str) -> errors.BadRequest:
    return errors.BadRequest(f"a token in a form body ({name!r}) is not accepted; send it in the Authorization header")


class FormScan:
    """Feed it the body's chunks in order, then `finish`; raises a `Rejection` as soon as it knows."""

    __slots__ = (
        "_boundary",
        "_buf",
        "_field",
        "_judge",
        "_kind",
        "_methods",
        "_override",
        "_state",
        "_tokens",
        "_value",
    )

    def __init__(self, content_type: str, tokens: frozenset[str], override: MethodOverride, judge: Judge) -> None:
        self._kind = form_kind(content_type)
        self._judge = judge  # raises the Rejection for a request that the override methods make unacceptable
        self._tokens = tokens  # folded names (scrub.fold_param)
        self._override = override
        self._methods: set[str] = set()
        self._buf = bytearray()
        found = {a or b for a, b in _BOUNDARY.findall(content_type)}
        if len(found) > 1:  # parsers disagree on which one counts (first or last)
            raise errors.BadRequest("a multipart Content-Type with more than one boundary")
        self._boundary = b"--" + found.pop().encode("latin-1") if found else b""
        # multipart: "content" (looking for a delimiter), "after" (just past one), "headers", "end"
        self._state = "content"
        self._field = False  # the current multipart part is an override field
        self._value = bytearray()

    def _name(self, name: str) -> bool:
        """True for an override field; refuses a token field."""
        if fold_param(name) in self._tokens:
            raise _refuse_token(name)
        return self._override.is_param(name)

    def feed(self, chunk: bytes) -> None:
        if self._kind == "application/x-www-form-urlencoded":
            self._urlencoded(chunk, final=False)
        elif self._kind == "multipart/form-data" and self._boundary:
            self._buf += chunk
            self._multipart()

    async def finish(self) -> None:
        if self._kind == "application/x-www-form-urlencoded":
            self._urlencoded(b"", final=True)
        elif self._kind == "multipart/form-data" and self._boundary:
            self._multipart()
            if self._state == "content" and self._field:
                self._override_value(bytes(self._buf))
        if self._methods:
            await self._judge(frozenset(self._methods))

    def _override_value(self, raw: bytes) -> None:
        value = raw[:_VALUE].strip().decode("latin-1").upper()
        self._methods.update(m for m in (p.strip() for p in value.split(",")) if m)

    # --- application/x-www-form-urlencoded ------------------------------------------------------------

    def _urlencoded(self, chunk: bytes, final: bool) -> None:
        buf = self._buf
        buf += chunk
        fields = _SEP.split(bytes(buf))
        rest = b"" if final else fields.pop()
        for field in fields:
            self._field_done(field)
        # an unfinished field: its name (bounded) and the start of its value are all that is kept
        name, eq, value = rest.partition(b"=")
        if len(name) > MAX_NAME:
            raise errors.BadRequest(f"a form field name is longer than {MAX_NAME} bytes")
        self._buf = bytearray(name + eq + value[:_VALUE] if eq else name)

    def _field_done(self, field: bytes) -> None:
        name, _, value = field.partition(b"=")
        if len(name) > MAX_NAME:
            raise errors.BadRequest(f"a form field name is longer than {MAX_NAME} bytes")
        if name and self._name(_text(name)):
            self._override_value(unquote_to_bytes(value.replace(b"+", b" ")))

    # --- multipart/form-data ----------------------------------------------------------------------------

    def _multipart(self) -> None:
        delim = self._boundary
        while True:
            buf = self._buf
            if self._state == "content":
                i = buf.find(delim)
                if i < 0:
                    keep = len(delim) + 2
                    if self._field and len(self._value) < _VALUE:
                        self._value += buf[: max(0, len(buf) - keep)][: _VALUE - len(self._value)]
                    if len(buf) > keep:
                        del buf[: len(buf) - keep]
                    return
                if self._field:
                    self._override_value(bytes(self._value + buf[:i]).rstrip(b"\r\n"))
                self._field = False
                self._value = bytearray()
                del buf[: i + len(delim)]
                self._state = "after"
            elif self._state == "after":
                if len(buf) < 2:
                    return
                if buf[:2] == b"--":
                    self._state = "end"
                    continue
                nl = buf.find(b"\n")  # the rest of the delimiter line (transport padding)
                if nl < 0:
                    if len(buf) > MAX_PART_HEADERS:
                        raise errors.BadRequest(f"a multipart delimiter line is longer than {MAX_PART_HEADERS} bytes")
                    return
                del buf[: nl + 1]
                self._state = "headers"
            elif self._state == "headers":
                nl = buf.find(b"\n")
                if nl < 0:
                    if len(buf) > MAX_PART_HEADERS:
                        raise errors.BadRequest(f"a multipart part header is longer than {MAX_PART_HEADERS} bytes")
                    return
                line = bytes(buf[:nl]).rstrip(b"\r")
                del buf[: nl + 1]
                if not line.strip():
                    self._state = "content"
                    continue
                header, colon, value = _text(line).partition(":")
                if colon and header.strip().lower() == "content-disposition":
                    self._disposition(value)
            else:  # end: the epilogue is read by no framework
                buf.clear()
                return

    def _disposition(self, value: str) -> None:
        for m in _NAME_PARAM.finditer(value):
            name = m.group(1)
            if name.startswith('"'):
                name = re.sub(r"\\(.)", r"\1", name[1:-1])
            if "''" in name:  # RFC 2231/5987: charset'language'percent-encoded
                name = name.split("''", 1)[1]
            if self._name(name):
                self._field = True
