"""What the fetcher publishes for one provider, and the file that keeps the latest of them for the pod.

A `KeyState` is complete: a worker that has only it answers every token as any other worker does. Times
are monotonic seconds, which are system-wide on Linux, so the workers of a pod compare them with one clock;
the file lives in the workers' private directory and goes with the pod, so they never outlive that clock.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sidecar.jwks import InvalidJwks, Key, KeySet, parse_jwks, to_jwk

Jwk = dict[str, Any]


@dataclass(frozen=True, slots=True)
class KeyState:
    provider: str
    current: tuple[Jwk, ...] = ()  # public JWKs trusted now
    retired: tuple[tuple[Jwk, float], ...] = ()  # removed from the JWKS, trusted until a monotonic time
    revoked: tuple[str, ...] = ()  # never trusted again while the pod lives
    fetched_at: float | None = None  # monotonic time of the last successful fetch (the original one)
    fetched_wall: float | None = None  # the same moment in wall time
    changed_wall: float | None = None  # wall time the set of kids last changed
    fresh_for: float = 0.0  # this set's refresh interval (Cache-Control bounded)
    last_error: str | None = None
    jwks_url: str | None = None  # the URL in use (found by discovery, or configured); None for a file
    skew: float | None = None  # this host's clock minus the IdP's, from the last response's Date
    # The fetcher's own schedule, so a restarted fetcher keeps it instead of fetching at once.
    next_refresh_at: float = 0.0
    last_refetch: float | None = None
    deferred: bool = False

    def keys_equal(self, other: KeyState | None) -> bool:
        return (
            other is not None
            and self.current == other.current
            and self.retired == other.retired
            and self.revoked == other.revoked
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyState:
        known = set(cls.__dataclass_fields__)
        d = {k: v for k, v in data.items() if k in known}
        d["current"] = tuple(d.get("current", ()))
        d["retired"] = tuple((jwk, float(until)) for jwk, until in d.get("retired", ()))
        d["revoked"] = tuple(d.get("revoked", ()))
        return cls(**d)


class StateFile:
    """The latest state of every provider, replaced atomically on each publish."""

    def __init__(self, directory: str) -> None:
        self.path = Path(directory) / "keys-state.json"

    def write(self, states: list[KeyState]) -> None:
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"providers": [s.to_json() for s in states]}), encoding="utf-8")
        os.replace(tmp, self.path)

    def read(self) -> dict[str, KeyState]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return {s.provider: s for s in (KeyState.from_json(p) for p in data["providers"])}
        except (OSError, ValueError, KeyError, TypeError):
            return {}


def key_from(jwk: Jwk, allowed: frozenset[str]) -> Key | None:
    """A key rebuilt from its published JWK, vetted again: the same code accepts the same keys."""
    try:
        keys = parse_jwks({"keys": [jwk]}, allowed)[0]
    except InvalidJwks:
        return None
    return keys[0] if keys else None


def restore(state: KeyState, retention: float, allowed: frozenset[str], revoked: frozenset[str]) -> KeySet:
    """The key set a published state describes, as the fetcher holds it."""
    current = (key_from(jwk, allowed) for jwk in state.current)
    retired = ((key_from(jwk, allowed), until) for jwk, until in state.retired)
    return KeySet.restore(
        retention,
        (k for k in current if k is not None),
        ((k, until) for k, until in retired if k is not None),
        frozenset(state.revoked) | revoked,
    )


def published(keys: KeySet) -> tuple[tuple[Jwk, ...], tuple[tuple[Jwk, float], ...], tuple[str, ...]]:
    """What a state carries of a key set: current and retired keys as public JWKs, and what is revoked."""
    current, retired, revoked = keys.export()
    return (
        tuple(to_jwk(k) for k in current),
        tuple((to_jwk(k), until) for k, until in retired.values()),
        tuple(revoked),
    )
