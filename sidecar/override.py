"""Method overrides: every method a framework could act on instead of the request's own.

Rack, Laravel, Symfony, Spring's HiddenHttpMethodFilter, ASP.NET Core and Express's method-override turn a
POST into a PUT, PATCH or DELETE when a header (`X-HTTP-Method-Override`, `X-HTTP-Method`,
`X-Method-Override`) or a `_method` parameter says so. The sidecar does not remove them (HTML forms and
clients behind restrictive proxies rely on them); it judges the request under its own method and under every
method they name, so a rule that refuses DELETE refuses an overridden DELETE too.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import unquote_plus

from multidict import CIMultiDictProxy

from sidecar import errors
from sidecar.headers import NameList
from sidecar.scrub import fold_param, folds

MAX_METHODS = 8  # distinct overrides judged per request; more is refused rather than judged rule by rule
_NONE: Final[frozenset[str]] = frozenset()


def _methods(value: str) -> list[str]:
    # Express's method-override reads the first of a list, other readers the whole value: judge every piece
    return [m for m in (p.strip().upper() for p in value.split(",")) if m]


class MethodOverride:
    """Reads override headers (any case, `_` for `-`) and parameters (every reading `scrub.fold_param` knows)."""

    __slots__ = ("_folds", "_headers", "_named", "_params")

    def __init__(self, headers: tuple[str, ...], params: tuple[str, ...]) -> None:
        self._headers = NameList(headers)
        self._named = self._headers.judged  # name -> an override header? (remembered per name)
        self._params = frozenset(fold_param(p) for p in params)
        self._folds = folds()

    def is_param(self, name: str) -> bool:
        return self._folds[name] in self._params

    def methods(self, headers: CIMultiDictProxy[str], query: str, fields: tuple[str, ...] = ()) -> frozenset[str]:
        """Methods named by override headers, query parameters and (already read) form field values."""
        found: set[str] = set()
        # the override names among the request's, one memo lookup each (a loop, not `filter`: compiled, the
        # builtin's lookup costs more than the loop): a name seen twice gives its values twice, which the set
        # absorbs
        named = self._named
        for name in headers:
            if named[name]:
                for value in headers.getall(name):
                    found.update(_methods(value))
        if query and self._params:
            # `;` too: Rack 2 and old Go and Python split on it
            for piece in query.replace(";", "&").split("&"):
                name, _, value = piece.partition("=")
                if self._folds[name] in self._params:
                    found.update(_methods(unquote_plus(value)))
        for value in fields:
            found.update(_methods(value))
        if not found:
            return _NONE  # the usual request: no override, and no new frozenset
        if len(found) > MAX_METHODS:
            raise errors.BadRequest(f"{len(found)} method overrides in one request; at most {MAX_METHODS}")
        return frozenset(found)
